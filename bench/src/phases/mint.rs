//! The cost of issuing agents' credentials (identity issue): [`mesh_auth::AuthDir::add_agent`]
//! `mint_credentials` times into a fresh auth directory, one call per agent as `mesh-cli agent
//! add` makes it, measured as it is.
//!
//! Each call signs a user JWT with the agents' scoped signing key, then reads, changes and
//! rewrites the whole registry (`agents.json`, synced to disk) under a file lock; so a call costs
//! more the more agents the registry holds. The figures split that: the mean, the first and the
//! last tenth of the calls, and the signing alone (a new user key, the JWT, the `.creds` text),
//! which is what a batch that writes the registry once per batch would approach.

use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_auth::AuthDir;

use crate::report::Report;
use crate::{progress, Params};

/// What minting measured.
#[derive(Debug, Default)]
struct Minted {
    /// Each `add_agent` call, in order.
    calls: Vec<Duration>,
    /// Size of `agents.json` at the end, bytes.
    registry_bytes: u64,
    /// Signing alone, for as many credentials.
    sign_only: Duration,
}

pub fn run(params: &Params, report: &mut Report) -> anyhow::Result<()> {
    let n = params.mint_credentials;
    progress(format!("secured: minting {n} agents' credentials"));
    // On this thread, blocking the runtime: minting runs before the phase starts any server or
    // agent, so nothing waits; and no pooled thread that used seconds of CPU exits during a later
    // window (the benchmark's CPU time is the sum over its live threads).
    let minted = mint(n)?;
    let total: Duration = minted.calls.iter().sum();
    let tenth = (n / 10).max(1);
    let mean_us = |calls: &[Duration]| -> Option<f64> {
        (!calls.is_empty())
            .then(|| calls.iter().sum::<Duration>().as_secs_f64() * 1e6 / calls.len() as f64)
    };
    report.set("mint_credentials", Some(n as f64));
    report.set("mint_total_s", Some(total.as_secs_f64()));
    report.set("mint_us_per_credential", mean_us(&minted.calls));
    report.set(
        "mint_us_per_credential_first_tenth",
        mean_us(&minted.calls[..tenth.min(minted.calls.len())]),
    );
    report.set(
        "mint_us_per_credential_last_tenth",
        mean_us(&minted.calls[minted.calls.len().saturating_sub(tenth)..]),
    );
    report.set(
        "mint_us_per_credential_sign_only",
        (n > 0).then(|| minted.sign_only.as_secs_f64() * 1e6 / n as f64),
    );
    report.set(
        "mint_registry_kb",
        Some(minted.registry_bytes as f64 / 1024.0),
    );
    progress(format!(
        "secured: {n} credentials minted in {:.1} s ({:?} µs each; signing alone {:?} µs)",
        total.as_secs_f64(),
        report.get("mint_us_per_credential"),
        report.get("mint_us_per_credential_sign_only"),
    ));
    Ok(())
}

/// Mints `n` credentials (`m0`, `m1`, …) into a fresh auth directory, then signs as many
/// again without the registry.
fn mint(n: usize) -> anyhow::Result<Minted> {
    let dir = tempfile::tempdir().context("cannot create the auth directory")?;
    let auth = AuthDir::init(&dir.path().join("auth"), crate::access::PREFIX)
        .context("cannot initialise the auth directory")?;
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("m{i}");
        let started = Instant::now();
        let new = auth
            .add_agent(&id, None)
            .with_context(|| format!("cannot issue credentials to {id}"))?;
        calls.push(started.elapsed());
        std::hint::black_box(new);
    }
    let registry = auth.root().join("agents.json");
    let registry_bytes = std::fs::metadata(&registry)
        .with_context(|| format!("cannot read {}", registry.display()))?
        .len();
    Ok(Minted {
        calls,
        registry_bytes,
        sign_only: sign_only(&auth, n)?,
    })
}

/// Signs `n` agents' credentials the way `add_agent` does, without touching the registry: a
/// signer of the same kind (an account key), the same scoped user JWT, the same `.creds` text.
fn sign_only(auth: &AuthDir, n: usize) -> anyhow::Result<Duration> {
    let signer = nkeys::KeyPair::new_account();
    let account = &auth.info().mesh_account;
    let started = Instant::now();
    for i in 0..n {
        let user = nkeys::KeyPair::new_user();
        let token = mesh_auth::jwt::scoped_user(
            &signer,
            account,
            &user.public_key(),
            &format!("m{i}"),
            mesh_auth::authdir::now(),
            None,
        )
        .context("cannot sign a user JWT")?;
        let seed = user.seed().context("cannot encode a user seed")?;
        std::hint::black_box(mesh_auth::creds::format(&token, &seed));
    }
    Ok(started.elapsed())
}
