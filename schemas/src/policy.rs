//! Policies: per-agent limits and rules, stored in KV bucket `mesh-policy` under the agent's id
//! or `_default`. Every field is optional; an agent's own policy overrides the default field by
//! field ([`Policy::merged_over`]). Validation names the field that is wrong.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The key of the mesh-wide default policy.
pub const DEFAULT_POLICY_KEY: &str = "_default";

/// What happens when a cap or ceiling is crossed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBreach {
    /// Kill the agent (the default): a kill record by `policy:<field>`, an `autokill` event.
    #[default]
    Kill,
    /// Reject the agent's intents with 429 until the window rolls.
    Block,
    /// Deliver, and record what would have happened.
    Observe,
}

/// What happens when an agent goes unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUnreachable {
    /// Publish an alert event (the default).
    #[default]
    Alert,
    /// Alert and kill the agent.
    Kill,
}

/// One agent's policy (or the default). `None` means "not set here".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Sustained rate of the agent's outbound intents, e.g. `10/s` or `600/m`. Over it,
    /// deliveries from the agent wait; nothing is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Intents the agent may send at once above `rate` (default: the per-second rate, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Outbound intents per clock hour (UTC), counted mesh-wide before delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_intents_per_hour: Option<u64>,
    /// Outbound intents per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_intents_per_day: Option<u64>,
    /// Cost (USD) per UTC day: `Mesh-Cost` of its intents plus heartbeat-reported cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd_per_day: Option<f64>,
    /// Cost (USD) in total since the counters were last reset (by `mesh-cli resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// What a breach of a cap or ceiling does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_breach: Option<OnBreach>,
    /// Actions the agent may send (globs over dot-separated tokens: `*` one token, `>` the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_send: Option<Vec<String>>,
    /// Actions the agent may not send; wins over `allow_send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_send: Option<Vec<String>>,
    /// Actions the agent may receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_receive: Option<Vec<String>>,
    /// Actions the agent may not receive; wins over `allow_receive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_receive: Option<Vec<String>>,
    /// Heartbeat silence after which the agent is `degraded`, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_after: Option<String>,
    /// Heartbeat silence after which the agent is `unreachable`, e.g. `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_after: Option<String>,
    /// What going unreachable does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unreachable: Option<OnUnreachable>,
}

/// A policy field with a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy field `{field}`: {problem}")]
pub struct PolicyError {
    pub field: &'static str,
    pub problem: String,
}

fn err(field: &'static str, problem: impl Into<String>) -> PolicyError {
    PolicyError {
        field,
        problem: problem.into(),
    }
}

/// A validated rate: `count` intents per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// Parses `10/s`, `600/m`, `5000/h`.
    pub fn parse(s: &str) -> Result<Rate, PolicyError> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| err("rate", format!("{s:?} is not <count>/<s|m|h>, e.g. 10/s")))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| err("rate", format!("{n:?} is not a whole number")))?;
        if count == 0 {
            return Err(err("rate", "must be at least 1 per unit"));
        }
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            u => return Err(err("rate", format!("unit {u:?} is not s, m or h"))),
        };
        Ok(Rate { count, per })
    }
}

/// Parses a duration field such as `30s`, `2m`, `500ms`.
pub fn parse_duration(field: &'static str, s: &str) -> Result<Duration, PolicyError> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| err(field, format!("{s:?} has no unit (ms, s, m, h)")))?;
    let n: u64 = num
        .parse()
        .map_err(|_| err(field, format!("{s:?} is not <number><ms|s|m|h>")))?;
    let secs = |per: u64| {
        // A record's number can be anything; overflow is an error, not a panic or a wrap.
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| err(field, format!("{s:?} is too long")))
    };
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => secs(60)?,
        "h" => secs(3600)?,
        _ => return Err(err(field, format!("unit {unit:?} is not ms, s, m or h"))),
    };
    if d.is_zero() {
        return Err(err(field, "must be longer than zero"));
    }
    Ok(d)
}

/// Whether `action` (dot-separated tokens) matches `glob` (`*` one token, `>` one or more).
pub fn action_matches(glob: &str, action: &str) -> bool {
    let mut g = glob.split('.');
    let mut a = action.split('.');
    loop {
        match (g.next(), a.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn check_globs(field: &'static str, globs: &Option<Vec<String>>) -> Result<(), PolicyError> {
    for g in globs.iter().flatten() {
        let tokens: Vec<&str> = g.split('.').collect();
        let bad = g.is_empty()
            || tokens
                .iter()
                .any(|t| t.is_empty() || t.contains(char::is_whitespace))
            || tokens[..tokens.len() - 1].contains(&">")
            || tokens
                .iter()
                .any(|t| t.len() > 1 && (t.contains('*') || t.contains('>')));
        if bad {
            return Err(err(
                field,
                format!("{g:?} is not a glob over actions (tokens separated by dots; * one token, > the rest)"),
            ));
        }
    }
    Ok(())
}

impl Policy {
    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(r) = &self.rate {
            Rate::parse(r)?;
        }
        if self.burst == Some(0) {
            return Err(err("burst", "must be at least 1"));
        }
        if self.burst.is_some() && self.rate.is_none() {
            return Err(err("burst", "needs a rate"));
        }
        if self.max_intents_per_hour == Some(0) {
            return Err(err("max_intents_per_hour", "must be at least 1"));
        }
        if self.max_intents_per_day == Some(0) {
            return Err(err("max_intents_per_day", "must be at least 1"));
        }
        for (field, v) in [
            ("max_cost_usd_per_day", self.max_cost_usd_per_day),
            ("max_cost_usd", self.max_cost_usd),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v <= 0.0 {
                    return Err(err(field, format!("{v} is not a positive amount of USD")));
                }
            }
        }
        check_globs("allow_send", &self.allow_send)?;
        check_globs("deny_send", &self.deny_send)?;
        check_globs("allow_receive", &self.allow_receive)?;
        check_globs("deny_receive", &self.deny_receive)?;
        let degraded = self
            .degraded_after
            .as_deref()
            .map(|s| parse_duration("degraded_after", s))
            .transpose()?;
        let unreachable = self
            .unreachable_after
            .as_deref()
            .map(|s| parse_duration("unreachable_after", s))
            .transpose()?;
        if let (Some(d), Some(u)) = (degraded, unreachable) {
            if u <= d {
                return Err(err(
                    "unreachable_after",
                    "must be longer than degraded_after",
                ));
            }
        }
        Ok(())
    }

    /// This policy's fields over `base`'s: a field set here wins.
    pub fn merged_over(&self, base: &Policy) -> Policy {
        macro_rules! pick {
            ($($f:ident),*) => { Policy { $($f: self.$f.clone().or_else(|| base.$f.clone()),)* } };
        }
        pick!(
            rate,
            burst,
            max_intents_per_hour,
            max_intents_per_day,
            max_cost_usd_per_day,
            max_cost_usd,
            on_breach,
            allow_send,
            deny_send,
            allow_receive,
            deny_receive,
            degraded_after,
            unreachable_after,
            on_unreachable
        )
    }

    /// Whether the agent may send `action`.
    pub fn may_send(&self, action: &str) -> Result<(), String> {
        allowed("send", &self.allow_send, &self.deny_send, action)
    }

    /// Whether the agent may receive `action`.
    pub fn may_receive(&self, action: &str) -> Result<(), String> {
        allowed("receive", &self.allow_receive, &self.deny_receive, action)
    }
}

fn allowed(
    what: &str,
    allow: &Option<Vec<String>>,
    deny: &Option<Vec<String>>,
    action: &str,
) -> Result<(), String> {
    if let Some(g) = deny.iter().flatten().find(|g| action_matches(g, action)) {
        return Err(format!("action {action:?} matches deny_{what} {g:?}"));
    }
    if let Some(allow) = allow {
        if !allow.iter().any(|g| action_matches(g, action)) {
            return Err(format!(
                "action {action:?} is not in allow_{what} {allow:?}"
            ));
        }
    }
    Ok(())
}

/// The value of `mesh-policy[<id>]`: the policy plus who set it, for the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[non_exhaustive]
pub struct PolicyRecord {
    pub policy: Policy,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at_unix_ms: u64,
}

impl PolicyRecord {
    pub fn new(policy: Policy, by: impl Into<String>) -> Self {
        PolicyRecord {
            policy,
            by: by.into(),
            at_unix_ms: crate::now_unix_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_tokens() {
        assert!(action_matches("deploy.*", "deploy.service"));
        assert!(!action_matches("deploy.*", "deploy.service.eu"));
        assert!(action_matches("deploy.>", "deploy.service.eu"));
        assert!(!action_matches("deploy.>", "deploy"));
        assert!(action_matches("read", "read"));
        assert!(!action_matches("read", "write"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = Policy {
            allow_send: Some(vec!["deploy.*".into()]),
            deny_send: Some(vec!["deploy.prod".into()]),
            ..Default::default()
        };
        assert!(p.may_send("deploy.staging").is_ok());
        assert!(p.may_send("deploy.prod").is_err());
        assert!(p.may_send("delete.db").is_err());
        assert!(p.may_receive("anything").is_ok());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |p: Policy| p.validate().expect_err("invalid").field;
        assert_eq!(
            bad(Policy {
                rate: Some("ten".into()),
                ..Default::default()
            }),
            "rate"
        );
        assert_eq!(
            bad(Policy {
                rate: Some("10/d".into()),
                ..Default::default()
            }),
            "rate"
        );
        assert_eq!(
            bad(Policy {
                burst: Some(5),
                ..Default::default()
            }),
            "burst"
        );
        assert_eq!(
            bad(Policy {
                max_cost_usd: Some(-1.0),
                ..Default::default()
            }),
            "max_cost_usd"
        );
        assert_eq!(
            bad(Policy {
                allow_send: Some(vec!["a.>.b".into()]),
                ..Default::default()
            }),
            "allow_send"
        );
        assert_eq!(
            bad(Policy {
                degraded_after: Some("30s".into()),
                unreachable_after: Some("10s".into()),
                ..Default::default()
            }),
            "unreachable_after"
        );
        let ok = Policy {
            rate: Some("10/s".into()),
            burst: Some(20),
            max_intents_per_hour: Some(500),
            max_cost_usd: Some(50.0),
            allow_send: Some(vec!["deploy.*".into()]),
            degraded_after: Some("30s".into()),
            unreachable_after: Some("2m".into()),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(Rate::parse("600/m").map(|r| r.count), Ok(600));
        assert_eq!(
            parse_duration("degraded_after", "5200000000000000h").map_err(|e| e.field),
            Err("degraded_after")
        );
    }

    #[test]
    fn an_agent_policy_overrides_the_default_field_by_field() {
        let default = Policy {
            max_intents_per_hour: Some(500),
            on_breach: Some(OnBreach::Block),
            ..Default::default()
        };
        let own = Policy {
            max_intents_per_hour: Some(50),
            ..Default::default()
        };
        let eff = own.merged_over(&default);
        assert_eq!(eff.max_intents_per_hour, Some(50));
        assert_eq!(eff.on_breach, Some(OnBreach::Block));
    }
}
