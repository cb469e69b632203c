//! Who may call the console: bearer tokens from `console_token` (config file,
//! `MESH_CONSOLE_TOKEN` or `--token`), as `name:secret` pairs, comma separated. The name of the
//! token's holder becomes the `by` of every kill, resume and policy change made with it
//! (`<name>@console`), so the audit trail says who acted.
//!
//! [`Writer`] needs a valid token; [`Reader`] needs one too unless `console_open_reads` is set.
//! Secrets are compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::{ApiError, AppState};

/// Shortest secret accepted: a token is the only thing between the network and the kill switch.
pub const MIN_SECRET: usize = 16;

/// The console's tokens.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// (operator name, secret) pairs.
    holders: Vec<(String, String)>,
}

/// A `console_token` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("console_token is not set: the console refuses to start without a bearer token (set console_token in the configuration file, MESH_CONSOLE_TOKEN, or --token, as name:secret)")]
    Missing,
    #[error("console_token: the secret of {name:?} is shorter than {MIN_SECRET} characters")]
    Short { name: String },
    #[error("console_token: {name:?} is not an operator name (1 to 64 of A-Z a-z 0-9 . _ -)")]
    BadName { name: String },
    #[error("console_token: two tokens have the same secret")]
    Duplicate,
}

impl Tokens {
    /// Parses `name:secret[,name:secret…]`; a bare `secret` is the operator `operator`.
    pub fn parse(value: Option<&str>) -> Result<Tokens, TokenError> {
        let value = value.map(str::trim).filter(|v| !v.is_empty());
        let Some(value) = value else {
            return Err(TokenError::Missing);
        };
        let mut holders: Vec<(String, String)> = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, secret) = match item.split_once(':') {
                Some((name, secret)) => (name.trim(), secret.trim()),
                None => ("operator", item),
            };
            let name_ok = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !name_ok {
                return Err(TokenError::BadName {
                    name: name.to_string(),
                });
            }
            if secret.chars().count() < MIN_SECRET {
                return Err(TokenError::Short {
                    name: name.to_string(),
                });
            }
            if holders.iter().any(|(_, s)| s == secret) {
                return Err(TokenError::Duplicate);
            }
            holders.push((name.to_string(), secret.to_string()));
        }
        if holders.is_empty() {
            return Err(TokenError::Missing);
        }
        Ok(Tokens { holders })
    }

    /// The operator holding the bearer token of `header`, as recorded in the audit trail.
    pub fn operator(&self, header: Option<&str>) -> Result<String, ApiError> {
        let Some(header) = header else {
            return Err(ApiError::NoToken);
        };
        let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Err(ApiError::NoToken);
        };
        let token = token.trim().as_bytes();
        // Every secret is compared, each in constant time, so the time says nothing.
        let mut found = None;
        for (name, secret) in &self.holders {
            if same(secret.as_bytes(), token) {
                found = Some(name);
            }
        }
        found
            .map(|name| format!("{name}@console"))
            .ok_or(ApiError::BadToken)
    }
}

/// Constant-time equality (for equal lengths; the length itself is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// A caller allowed to change the mesh: the operator's name as the audit trail records it.
pub struct Writer(pub String);

impl FromRequestParts<AppState> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.tokens.operator(header(parts)).map(Writer)
    }
}

/// A caller allowed to read: any valid token, or anyone with `console_open_reads`.
pub struct Reader;

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.open_reads {
            return Ok(Reader);
        }
        state.tokens.operator(header(parts)).map(|_| Reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_operator() {
        let t = Tokens::parse(Some("alice:0123456789abcdef, bob:fedcba9876543210")).expect("ok");
        assert_eq!(
            t.operator(Some("Bearer fedcba9876543210")).expect("bob"),
            "bob@console"
        );
        assert!(matches!(
            t.operator(Some("Bearer 0123456789abcdeX")),
            Err(ApiError::BadToken)
        ));
        assert!(matches!(t.operator(None), Err(ApiError::NoToken)));
        assert!(matches!(
            t.operator(Some("Basic 0123456789abcdef")),
            Err(ApiError::NoToken)
        ));
        let bare = Tokens::parse(Some("0123456789abcdef")).expect("ok");
        assert_eq!(
            bare.operator(Some("Bearer 0123456789abcdef")).expect("ok"),
            "operator@console"
        );
    }

    #[test]
    fn weak_or_missing_tokens_are_refused() {
        assert_eq!(Tokens::parse(None).err(), Some(TokenError::Missing));
        assert_eq!(Tokens::parse(Some(" ")).err(), Some(TokenError::Missing));
        assert!(matches!(
            Tokens::parse(Some("alice:short")),
            Err(TokenError::Short { .. })
        ));
        assert!(matches!(
            Tokens::parse(Some("a b:0123456789abcdef")),
            Err(TokenError::BadName { .. })
        ));
        assert_eq!(
            Tokens::parse(Some("a:0123456789abcdef,b:0123456789abcdef")).err(),
            Some(TokenError::Duplicate)
        );
    }
}
