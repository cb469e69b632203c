//! Runs the chaos soak ([`mesh_tests::chaos`]) for a number of minutes and prints its figures:
//! intents sent, acked, delivered, pending and rejected, faults injected by kind, kills and
//! resumes by exit code, and violations by kind. Exits 1 on any violation.
//!
//! `cargo run -p mesh-tests --bin chaos-soak -- --minutes 10 [--seed S]` (needs
//! `MESH_NATS_SERVER` or a `nats-server` on `PATH`, like the tests).

use std::process::ExitCode;
use std::time::Duration;

use mesh_tests::chaos;
use mesh_tests::init_tracing;

const USAGE: &str =
    "usage: chaos-soak [--minutes N] [--seed S]   (default 10 minutes, a seed from the clock)";

fn args() -> Result<(Duration, u64), String> {
    let mut args = std::env::args().skip(1);
    let mut minutes = 10.0_f64;
    let mut seed = chaos::fresh_seed();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--minutes" => {
                minutes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|m: &f64| *m > 0.0)
                    .ok_or("--minutes takes a positive number")?;
            }
            "--seed" => {
                seed = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--seed takes a number")?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    Ok((Duration::from_secs_f64(minutes * 60.0), seed))
}

fn main() -> ExitCode {
    let (duration, seed) = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    println!(
        "chaos soak: seed {seed}, {:.0} s of faults",
        duration.as_secs_f64()
    );
    let rt = match mesh_tests::scenario_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let report = rt.block_on(chaos::run(duration, seed));
    print!("{}", report.summary());
    if report.violation_count() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
