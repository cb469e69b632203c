//! Subject names, built and parsed in one place so that the prefix stays configurable.
//!
//! Every subject starts with a prefix (`mesh` by default) so that teams can run several meshes on
//! one NATS account and so the mesh never touches the `agents.>` namespace.

use crate::id::{AgentId, InvalidAgentId};

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "mesh";

/// Builds and parses the mesh's subjects for one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

/// A parsed intent subject: `<prefix>.intent.<from>.<to>.<action>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentSubject {
    pub from: AgentId,
    pub to: AgentId,
    /// One or more tokens, e.g. `deploy.service`.
    pub action: String,
}

/// Why a subject is not a valid intent subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject {subject:?} is not under {expected:?}")]
    WrongPrefix { subject: String, expected: String },
    #[error("subject {subject:?} has no action; send to <prefix>.intent.<from>.<to>.<action>")]
    MissingAction { subject: String },
    #[error("subject {subject:?} has an empty token")]
    EmptyToken { subject: String },
    #[error("action in {subject:?} contains {ch:?}; wildcards, spaces and control characters are not allowed")]
    BadAction { subject: String, ch: char },
    #[error("bad sender in {subject:?}: {source}")]
    BadSender {
        subject: String,
        source: InvalidAgentId,
    },
    #[error("bad recipient in {subject:?}: {source}")]
    BadRecipient {
        subject: String,
        source: InvalidAgentId,
    },
    #[error(
        "prefix {0:?} is not a valid subject prefix (tokens of A-Z a-z 0-9 _ -, separated by dots)"
    )]
    BadPrefix(String),
}

/// The first character an action may not contain: `*`, `>`, whitespace or a control character.
/// The gateway and the agent libraries apply the same rule.
pub fn bad_action_char(action: &str) -> Option<char> {
    action
        .chars()
        .find(|c| matches!(c, '*' | '>') || c.is_whitespace() || c.is_control())
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix`, which must be dot-separated valid tokens without wildcards.
    pub fn new(prefix: impl Into<String>) -> Result<Self, SubjectError> {
        let prefix = prefix.into();
        let ok = !prefix.is_empty() && prefix.split('.').all(|t| AgentId::new(t).is_ok());
        if !ok {
            return Err(SubjectError::BadPrefix(prefix));
        }
        Ok(Subjects { prefix })
    }

    /// The prefix, e.g. `mesh`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<p>.intent.<from>.<to>.<action>`.
    pub fn intent(&self, from: &AgentId, to: &AgentId, action: &str) -> String {
        format!("{}.intent.{from}.{to}.{action}", self.prefix)
    }

    /// What the intents stream captures: `<p>.intent.*.*.>` (an action is required).
    pub fn intent_stream_filter(&self) -> String {
        format!("{}.intent.*.*.>", self.prefix)
    }

    /// Every intent to `to`: the filter of that recipient's consumer.
    pub fn intents_to(&self, to: &AgentId) -> String {
        format!("{}.intent.*.{to}.>", self.prefix)
    }

    /// Parses an intent subject.
    pub fn parse_intent(&self, subject: &str) -> Result<IntentSubject, SubjectError> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".intent."))
            .ok_or_else(|| SubjectError::WrongPrefix {
                subject: subject.to_string(),
                expected: format!("{}.intent.", self.prefix),
            })?;
        let mut parts = rest.splitn(3, '.');
        let (Some(from), Some(to), Some(action)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SubjectError::MissingAction {
                subject: subject.to_string(),
            });
        };
        if action.split('.').any(str::is_empty) {
            return Err(SubjectError::EmptyToken {
                subject: subject.to_string(),
            });
        }
        // What the agent libraries accept (mesh-agent's `validate_action`): a delivery they
        // refuse would never be answered and would block its sender's queue.
        if let Some(ch) = bad_action_char(action) {
            return Err(SubjectError::BadAction {
                subject: subject.to_string(),
                ch,
            });
        }
        let from = AgentId::new(from).map_err(|source| SubjectError::BadSender {
            subject: subject.to_string(),
            source,
        })?;
        let to = AgentId::new(to).map_err(|source| SubjectError::BadRecipient {
            subject: subject.to_string(),
            source,
        })?;
        Ok(IntentSubject {
            from,
            to,
            action: action.to_string(),
        })
    }

    /// Extracts the raw recipient token of an intent subject without validating it.
    pub fn raw_recipient<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".intent.")?;
        rest.split('.').nth(1)
    }

    /// `<p>.agent.<id>.inbox`: where the gateway delivers; instances use queue group `<id>`.
    pub fn inbox(&self, id: &AgentId) -> String {
        format!("{}.agent.{id}.inbox", self.prefix)
    }

    /// `<p>.agent.<id>.rejected`: rejection notices for a sender.
    pub fn rejected(&self, id: &AgentId) -> String {
        format!("{}.agent.{id}.rejected", self.prefix)
    }

    /// `<p>.agent.<id>.control`: kill and resume notices for a cooperative agent.
    pub fn control(&self, id: &AgentId) -> String {
        format!("{}.agent.{id}.control", self.prefix)
    }

    /// `<p>.hb.<id>`: heartbeats.
    pub fn heartbeat(&self, id: &AgentId) -> String {
        format!("{}.hb.{id}", self.prefix)
    }

    /// `<p>.audit.<kind>.<id>`: one audit record.
    pub fn audit(&self, kind: &str, id: &str) -> String {
        format!("{}.audit.{kind}.{id}", self.prefix)
    }

    /// What the audit stream captures: `<p>.audit.>`.
    pub fn audit_filter(&self) -> String {
        format!("{}.audit.>", self.prefix)
    }

    /// `<p>.gw.policy.<key>`: a replica's confirmation (a [`crate::FenceAck`] with the policy
    /// revision) that it applied a change of `mesh-policy[<key>]`.
    pub fn policy_applied(&self, key: &str) -> String {
        format!("{}.gw.policy.{key}", self.prefix)
    }

    /// `<p>.gw.fenced.<id>`: fence acknowledgements for a change of `<id>`'s kill flag.
    pub fn fenced(&self, id: &AgentId) -> String {
        format!("{}.gw.fenced.{id}", self.prefix)
    }

    /// `<p>.gw.parked.<id>`: a gateway parked `<id>`'s inbound work on its own consumer; every
    /// replica starts a drain for it.
    pub fn parked(&self, id: &AgentId) -> String {
        format!("{}.gw.parked.{id}", self.prefix)
    }

    /// `<p>.gw.parked.*`: every parking notice.
    pub fn parked_filter(&self) -> String {
        format!("{}.gw.parked.*", self.prefix)
    }

    /// `<p>.intent._mesh._unpark.<id>`: an unpark marker. It lives in the intents stream so that
    /// the shared delivery lane meets it in stream order; its fourth token is not `<id>`, so the
    /// recipient's own consumer does not see it.
    pub fn unpark_marker(&self, id: &AgentId) -> String {
        format!("{}.intent._mesh._unpark.{id}", self.prefix)
    }

    /// The recipient of an unpark marker subject, if `subject` is one.
    pub fn parse_unpark_marker<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".intent._mesh._unpark.")
            .filter(|rest| !rest.contains('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::new(s).expect("valid id")
    }

    #[test]
    fn round_trips_an_intent_subject() {
        let s = Subjects::default();
        let subject = s.intent(&id("A"), &id("B"), "deploy.service");
        assert_eq!(subject, "mesh.intent.A.B.deploy.service");
        let parsed = s.parse_intent(&subject).expect("parses");
        assert_eq!(parsed.from, id("A"));
        assert_eq!(parsed.to, id("B"));
        assert_eq!(parsed.action, "deploy.service");
    }

    #[test]
    fn unpark_markers_round_trip_and_miss_the_recipient_filter() {
        let s = Subjects::default();
        let marker = s.unpark_marker(&id("B"));
        assert_eq!(s.parse_unpark_marker(&marker), Some("B"));
        assert_eq!(s.parse_unpark_marker("mesh.intent.A.B.work"), None);
        assert_eq!(s.parse_unpark_marker("mesh.intent._mesh._unpark.B.x"), None);
        // `<p>.intent.*.B.>` needs B as the fourth token.
        assert_ne!(marker.split('.').nth(3), Some("B"));
    }

    #[test]
    fn rejects_malformed_intent_subjects() {
        let s = Subjects::default();
        assert!(matches!(
            s.parse_intent("other.intent.A.B.x"),
            Err(SubjectError::WrongPrefix { .. })
        ));
        assert!(matches!(
            s.parse_intent("mesh.intent.A.B"),
            Err(SubjectError::MissingAction { .. })
        ));
        assert!(matches!(
            s.parse_intent("mesh.intent.A.B.x..y"),
            Err(SubjectError::EmptyToken { .. })
        ));
        assert!(matches!(
            s.parse_intent("mesh.intent.A.B.de*ploy"),
            Err(SubjectError::BadAction { ch: '*', .. })
        ));
        assert!(matches!(
            s.parse_intent("mesh.intent.a$b.B.x"),
            Err(SubjectError::BadSender { .. })
        ));
        assert!(matches!(
            s.parse_intent(&format!("mesh.intent.A.{}.x", "y".repeat(65))),
            Err(SubjectError::BadRecipient { .. })
        ));
    }

    #[test]
    fn custom_prefix_is_validated_and_used() {
        assert!(Subjects::new("team.mesh").is_ok());
        assert!(matches!(
            Subjects::new("a.*"),
            Err(SubjectError::BadPrefix(_))
        ));
        assert!(matches!(Subjects::new(""), Err(SubjectError::BadPrefix(_))));
        let s = Subjects::new("team.mesh").expect("valid prefix");
        assert_eq!(s.inbox(&id("B")), "team.mesh.agent.B.inbox");
        assert_eq!(s.intents_to(&id("B")), "team.mesh.intent.*.B.>");
        assert_eq!(s.raw_recipient("team.mesh.intent.A.b$d.x"), Some("b$d"));
    }
}
