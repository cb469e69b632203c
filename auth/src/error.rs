//! What can go wrong with keys, credentials and account updates.

use std::path::PathBuf;

/// An identity operation that failed; each variant says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("{0}")]
    BadId(String),
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not an Agent Mesh auth directory ({why}); create one with `mesh-cli auth init --dir DIR`, \
         or point --auth-dir / MESH_AUTH_DIR at the one `mesh-cli up` printed"
    )]
    NotAnAuthDir { path: PathBuf, why: String },
    #[error("{path} already holds an Agent Mesh auth directory; use it as it is, or choose an empty directory")]
    AlreadyInitialised { path: PathBuf },
    #[error("bad key material: {0}")]
    Key(String),
    #[error("bad JWT: {0}")]
    BadJwt(String),
    #[error("could not encode: {0}")]
    Encode(String),
    #[error("no credentials were issued to agent {0}; `mesh-cli agent list` shows who holds some")]
    UnknownAgent(String),
    #[error(
        "agent {agent} holds no credential with key {key}; `mesh-cli agent list` shows its keys"
    )]
    UnknownKey { agent: String, key: String },
    #[error("could not push the account update to NATS: {0}; the change is saved in the auth directory, run the command again once NATS answers")]
    Push(String),
}

impl AuthError {
    pub(crate) fn encode(e: impl std::fmt::Display) -> Self {
        AuthError::Encode(e.to_string())
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AuthError::Io {
            action,
            path,
            source,
        }
    }
}
