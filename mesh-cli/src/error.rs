//! What can go wrong in a command, the exit code each failure maps to, and how an error is
//! printed: once, as one line with its causes.

use std::fmt;

use crate::config::ConfigError;
use crate::connect::ConnectError;
use crate::local::LocalError;

/// Exit codes of mesh-cli.
pub mod exit {
    /// The command did what it says.
    pub const OK: i32 = 0;
    /// The command failed (NATS unreachable, an object missing, a write refused, ...).
    pub const FAILURE: i32 = 1;
    /// Bad usage: unknown command, bad flag or argument, bad configuration.
    pub const USAGE: i32 = 2;
    /// A kill, resume or policy change is written and in force, but not every live gateway
    /// replica confirmed it in time, or (kill, resume) a step after the flag could not be done
    /// in time: the message says which.
    pub const UNCONFIRMED: i32 = 3;
    /// Stopped by Ctrl-C or SIGTERM before it finished (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: i32 = 130;
}

/// A boxed error from the NATS client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Arguments that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Auth(#[from] mesh_auth::AuthError),
    #[error("could not create or check the mesh's streams and buckets")]
    Setup(#[from] mesh_gateway::SetupError),
    /// A NATS operation failed; `what` says which, in words.
    #[error("{what}")]
    Nats {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "{action} of {agent} is written and in force in NATS, but {missing} of {live} live \
         gateway replicas did not confirm within {timeout}: {names}; check those replicas \
         (`mesh-cli status`) and run the command again to confirm",
        missing = missing.len(),
        names = missing.join(", "),
        timeout = humantime::format_duration(*timeout)
    )]
    Unconfirmed {
        action: &'static str,
        agent: String,
        live: usize,
        missing: Vec<String>,
        timeout: std::time::Duration,
    },
    /// The kill flag could not be written before the timeout: nothing changed.
    #[error(
        "{action} of {agent} NOT done: the kill flag could not be written within {timeout} \
         ({attempts} attempts); nothing changed. NATS JetStream did not accept the write: check \
         that most nodes of the cluster are up (`nats server report jetstream`), then run the \
         command again",
        timeout = humantime::format_duration(*timeout)
    )]
    NotWritten {
        action: &'static str,
        agent: String,
        timeout: std::time::Duration,
        attempts: u32,
        #[source]
        source: Box<CliError>,
    },
    /// The flag is written and in force, but some step after it could not be done in time.
    #[error(
        "{action} of {agent} is written and in force in NATS, but not everything after it was \
         done: {steps}; run the command again to finish (it is safe to repeat)",
        steps = undone.join("; ")
    )]
    Incomplete {
        action: &'static str,
        agent: String,
        undone: Vec<String>,
    },
    /// A policy that `Policy::validate` refuses; nothing was written.
    #[error(
        "invalid policy for {key}: {source} (flag --{flag}); nothing was written",
        flag = source.field.replace('_', "-")
    )]
    InvalidPolicy {
        key: String,
        #[source]
        source: mesh_schemas::PolicyError,
    },
    #[error(
        "the policy of {key} is written, but {missing} of {live} live gateway replicas did not \
         confirm applying it within {timeout}: {names}; they apply it from their watch when \
         they can (check them with `mesh-cli status`)",
        missing = missing.len(),
        names = missing.join(", "),
        timeout = humantime::format_duration(*timeout)
    )]
    PolicyUnconfirmed {
        key: String,
        live: usize,
        missing: Vec<String>,
        timeout: std::time::Duration,
    },
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("could not write the output")]
    Output(#[from] std::io::Error),
    #[error(
        "`mesh-cli {0}` was interrupted before it finished; what it wrote so far stays written \
         (see `mesh-cli status` and `mesh-cli audit`)"
    )]
    Interrupted(&'static str),
    #[error("`mesh-cli {0}` is not yet implemented")]
    NotImplemented(&'static str),
    /// The demo saw the mesh break one of its promises.
    #[error("demo invariant failed: {0}")]
    DemoInvariant(String),
}

impl CliError {
    /// A failed NATS operation.
    pub fn nats(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        CliError::Nats {
            what: what.into(),
            source: source.into(),
        }
    }

    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_)
            | CliError::Config(_)
            | CliError::InvalidPolicy { .. }
            | CliError::Auth(mesh_auth::AuthError::BadId(_))
            | CliError::Connect(ConnectError::Settings(_)) => exit::USAGE,
            CliError::Unconfirmed { .. }
            | CliError::Incomplete { .. }
            | CliError::PolicyUnconfirmed { .. } => exit::UNCONFIRMED,
            CliError::Interrupted(_) => exit::INTERRUPTED,
            _ if self.is_broken_pipe() => exit::OK,
            _ => exit::FAILURE,
        }
    }

    /// Whether the output went to a pipe that was closed (`mesh-cli audit | head`): not an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Formats an error with its causes on one line. With `{:#}` the causes are joined with `: `,
/// skipping a cause whose text the message before it already includes.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let top = self.0.to_string();
        f.write_str(&top)?;
        if !f.alternate() {
            return Ok(());
        }
        let mut shown = top;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown.push_str(&text);
            }
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[test]
    fn report_joins_causes_without_repeating_them() {
        let err = CliError::nats(
            "could not read stream X",
            std::io::Error::other("timed out"),
        );
        assert_eq!(
            format!("{:#}", Report(&err)),
            "could not read stream X: timed out"
        );
        let err = Repeats {
            source: std::io::Error::other("timed out"),
        };
        assert_eq!(format!("{:#}", Report(&err)), "outer: timed out");
        assert_eq!(format!("{}", Report(&err)), "outer: timed out");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), exit::USAGE);
        assert_eq!(
            CliError::Output(std::io::ErrorKind::BrokenPipe.into()).exit_code(),
            exit::OK
        );
        let unconfirmed = CliError::Unconfirmed {
            action: "kill",
            agent: "a".into(),
            live: 2,
            missing: vec!["gw-2".into()],
            timeout: std::time::Duration::from_secs(5),
        };
        assert_eq!(unconfirmed.exit_code(), exit::UNCONFIRMED);
        assert!(unconfirmed.to_string().contains("gw-2"));
        assert_eq!(CliError::NotImplemented("demo").exit_code(), exit::FAILURE);
    }
}
