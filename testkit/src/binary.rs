//! Finding the `nats-server` binary, once per process.
//!
//! In order: the path in `MESH_NATS_SERVER`; else `<workspace>/.nats/<version>/bin/nats-server`
//! where version is `MESH_NATS_VERSION` or [`DEFAULT_NATS_VERSION`]; else whatever
//! `<workspace>/scripts/install-nats <version>` prints after installing it. The answer is kept
//! in a [`OnceLock`], so parallel tests share one lookup and at most one install; the script
//! itself takes a file lock, so parallel test binaries share one install too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use crate::HarnessError;

/// The nats-server release used when `MESH_NATS_VERSION` is not set: the newest we test against.
pub const DEFAULT_NATS_VERSION: &str = "2.15.1";

/// The `nats-server` binary the harness runs (see the module docs for the lookup order).
///
/// The first call may install the binary with `scripts/install-nats`, which takes a few seconds.
pub fn nats_server_binary() -> Result<PathBuf, HarnessError> {
    static BINARY: OnceLock<Result<PathBuf, HarnessError>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let found = locate(
                std::env::var_os("MESH_NATS_SERVER"),
                &requested_version(),
                &workspace_root(),
                install,
            );
            if let Ok(path) = &found {
                tracing::info!(binary = %path.display(), "mesh-testkit uses this nats-server");
            }
            found
        })
        .clone()
}

/// The version of the binary from [`nats_server_binary`], as it reports it: `"2.15.1"`.
///
/// Useful to skip a test that needs a newer server than the one under test.
pub fn nats_server_version() -> Result<String, HarnessError> {
    static VERSION: OnceLock<Result<String, HarnessError>> = OnceLock::new();
    VERSION
        .get_or_init(|| binary_version(&nats_server_binary()?))
        .clone()
}

/// `MESH_NATS_VERSION`, or the default.
fn requested_version() -> String {
    std::env::var("MESH_NATS_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| DEFAULT_NATS_VERSION.to_owned())
}

/// The workspace root: this crate lives in `<root>/testkit`.
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// The lookup itself, with its inputs passed in so it can be tested without touching the
/// process environment.
fn locate(
    env_binary: Option<OsString>,
    version: &str,
    root: &Path,
    install: impl FnOnce(&Path, &str) -> Result<PathBuf, HarnessError>,
) -> Result<PathBuf, HarnessError> {
    if let Some(path) = env_binary.filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::EnvBinaryMissing { path })
        };
    }
    let installed = root
        .join(".nats")
        .join(version)
        .join("bin")
        .join("nats-server");
    if installed.is_file() {
        return Ok(installed);
    }
    install(&root.join("scripts").join("install-nats"), version)
}

/// Runs `scripts/install-nats <version>` and takes the path it prints.
fn install(script: &Path, version: &str) -> Result<PathBuf, HarnessError> {
    tracing::info!(script = %script.display(), version, "installing nats-server");
    let output =
        Command::new(script)
            .arg(version)
            .output()
            .map_err(|e| HarnessError::InstallSpawn {
                script: script.to_owned(),
                source: Arc::new(e),
            })?;
    let failed = |status: String| HarnessError::InstallFailed {
        script: script.to_owned(),
        version: version.to_owned(),
        status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    };
    if !output.status.success() {
        return Err(failed(output.status.to_string()));
    }
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let path = PathBuf::from(&printed);
    if printed.is_empty() || !path.is_file() {
        return Err(failed(format!("printed {printed:?}, which is not a file")));
    }
    Ok(path)
}

/// Asks a binary for its version: `nats-server: v2.15.1` becomes `2.15.1`.
fn binary_version(binary: &Path) -> Result<String, HarnessError> {
    let unknown = |output: String| HarnessError::VersionUnknown {
        binary: binary.to_owned(),
        output,
    };
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| unknown(e.to_string()))?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    parse_version(&text).ok_or_else(|| unknown(text.clone()))
}

fn parse_version(text: &str) -> Option<String> {
    let version = text.strip_prefix("nats-server: v")?.trim();
    (!version.is_empty()).then(|| version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_install(_: &Path, _: &str) -> Result<PathBuf, HarnessError> {
        Err(HarnessError::InstallFailed {
            script: PathBuf::new(),
            version: String::new(),
            status: "not called in this test".into(),
            stderr: String::new(),
        })
    }

    #[test]
    fn env_path_wins_and_must_exist() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("nats-server");
        std::fs::write(&file, b"").expect("write");
        let found = locate(Some(file.clone().into()), "2.15.1", dir.path(), no_install);
        assert_eq!(found.ok(), Some(file));

        let missing = dir.path().join("nope");
        let found = locate(Some(missing.into()), "2.15.1", dir.path(), no_install);
        assert!(matches!(found, Err(HarnessError::EnvBinaryMissing { .. })));
    }

    #[test]
    fn installed_version_is_used_before_installing() {
        let root = tempfile::tempdir().expect("temp dir");
        let bin = root.path().join(".nats/2.11.11/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::write(bin.join("nats-server"), b"").expect("write");
        let found = locate(None, "2.11.11", root.path(), no_install);
        assert_eq!(found.ok(), Some(bin.join("nats-server")));
    }

    #[test]
    fn falls_back_to_the_install_script() {
        let root = tempfile::tempdir().expect("temp dir");
        let mut asked = None;
        let found = locate(
            Some(OsString::new()),
            "2.15.1",
            root.path(),
            |script, version| {
                asked = Some((script.to_owned(), version.to_owned()));
                no_install(script, version)
            },
        );
        assert!(matches!(found, Err(HarnessError::InstallFailed { .. })));
        let (script, version) = asked.expect("install was called");
        assert!(script.ends_with("scripts/install-nats"));
        assert_eq!(version, "2.15.1");
    }

    #[test]
    fn parses_the_version_line() {
        assert_eq!(
            parse_version("nats-server: v2.15.1").as_deref(),
            Some("2.15.1")
        );
        assert_eq!(parse_version("something else"), None);
    }
}
