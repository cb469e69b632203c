//! The workspace's own binaries (`mesh-gateway`, `mesh-cli`) for tests that run them as
//! processes, built on first use.

use std::path::PathBuf;
use std::process::Command;

/// Builds the binary `name` of package `name` (a no-op when fresh) and returns its path, next
/// to the running test executable's profile directory: `cargo test -p <one package>` does not
/// build other packages' binaries, and a stale one would test old code.
///
/// # Panics
///
/// When cargo cannot be run, the build fails, or the binary is not where cargo puts it.
pub fn workspace_binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("target dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    let mut cmd = Command::new(env!("CARGO"));
    // The variables cargo sets for the running test binary (its package's name, manifest dir,
    // ...) would reach the crates this build compiles and make their fingerprints differ from
    // an ordinary build's: each would then rebuild what the other built, a minute or more of
    // both cores in the middle of a test run (CI saw JetStream requests time out meanwhile).
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    let status = cmd
        .args(["build", "-q", "-p", name, "--bin", name])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p {name} failed");
    assert!(bin.exists(), "{name} not found at {}", bin.display());
    bin
}
