//! [`Secret`]: a password or token that serde reads and writes as a plain string but `Debug`
//! never shows, so a configuration can be logged with `{:?}` without leaking it.

use serde::{Deserialize, Serialize};

/// A password or token. `Debug` prints `***`; [`Secret::expose`] gives the value to the one
/// place that needs it (the NATS CONNECT).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value_and_serde_keeps_it() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(json, "\"hunter2\"");
        let back: Secret = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, s);
    }
}
