//! Agent ids: one NATS subject token of `[A-Za-z0-9_-]{1,64}`.
//!
//! Validating ids at every edge (subjects, CLI arguments, KV keys) is what keeps an id from
//! smuggling a wildcard or a dot into a subject and so reaching agents it should not.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted agent id, in bytes.
pub const MAX_AGENT_ID_LEN: usize = 64;

/// A validated agent id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

/// Why a string is not an agent id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAgentId {
    #[error("agent id is empty; use 1 to 64 characters of A-Z a-z 0-9 _ -")]
    Empty,
    #[error("agent id {id:?} is {len} bytes long; the limit is 64")]
    TooLong { id: String, len: usize },
    #[error("agent id {id:?} contains {ch:?}; only A-Z a-z 0-9 _ - are allowed")]
    BadChar { id: String, ch: char },
}

impl AgentId {
    /// Validates `s` as an agent id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidAgentId> {
        let s = s.into();
        if s.is_empty() {
            return Err(InvalidAgentId::Empty);
        }
        if s.len() > MAX_AGENT_ID_LEN {
            let len = s.len();
            return Err(InvalidAgentId::TooLong { id: s, len });
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(InvalidAgentId::BadChar { id: s, ch });
        }
        Ok(AgentId(s))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AgentId {
    type Err = InvalidAgentId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentId::new(s)
    }
}

impl TryFrom<String> for AgentId {
    type Error = InvalidAgentId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AgentId::new(s)
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> String {
        id.0
    }
}

impl AsRef<str> for AgentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl schemars::JsonSchema for AgentId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AgentId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "description": "An agent id: one NATS subject token."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["a", "deployer", "Agent_7-x", &"x".repeat(64)] {
            assert_eq!(AgentId::new(ok).map(|a| a.to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn rejects_wildcards_dots_spaces_and_length() {
        assert_eq!(AgentId::new(""), Err(InvalidAgentId::Empty));
        assert!(matches!(
            AgentId::new("x".repeat(65)),
            Err(InvalidAgentId::TooLong { len: 65, .. })
        ));
        for (bad, ch) in [
            ("a.b", '.'),
            ("a*", '*'),
            ("a>", '>'),
            ("a b", ' '),
            ("é", 'é'),
        ] {
            assert!(
                matches!(AgentId::new(bad), Err(InvalidAgentId::BadChar { ch: c, .. }) if c == ch),
                "{bad}"
            );
        }
    }

    #[test]
    fn deserializing_validates() {
        let err = serde_json::from_str::<AgentId>("\"a.b\"");
        assert!(err.is_err());
        let ok: AgentId = serde_json::from_str("\"ab\"").expect("valid id");
        assert_eq!(ok.as_str(), "ab");
    }
}
