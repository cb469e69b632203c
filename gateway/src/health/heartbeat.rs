//! Reading one heartbeat: `<prefix>.hb.<agent>` with headers `Mesh-Instance` (required) and
//! `Mesh-Cost-Total` (optional, cumulative USD). The payload is ignored. A heartbeat that does
//! not follow these rules is refused with a reason; the caller logs it, rate-limited.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use mesh_schemas::headers::{parse_cost, MESH_COST_TOTAL, MESH_INSTANCE};
use mesh_schemas::{AgentId, InvalidAgentId};

/// Longest accepted `Mesh-Instance`, in bytes.
pub const MAX_INSTANCE_LEN: usize = 128;

/// A heartbeat worth recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub agent: AgentId,
    pub instance: String,
    /// Cumulative cost reported by the instance, if it reports one.
    pub cost_total: Option<f64>,
}

/// Why a heartbeat was ignored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadHeartbeat {
    #[error("subject {0:?} is not <prefix>.hb.<agent id>")]
    Subject(String),
    #[error("bad agent id in heartbeat subject: {0}")]
    Agent(#[from] InvalidAgentId),
    #[error("heartbeat has no Mesh-Instance header")]
    NoInstance,
    #[error("Mesh-Instance {0:?} is not 1 to 128 bytes without control characters")]
    BadInstance(String),
    #[error("Mesh-Cost-Total {0:?} is not a non-negative decimal number of USD (e.g. 1.25)")]
    BadCost(String),
}

/// Parses a heartbeat received on `subject` under `prefix`.
pub fn parse(
    prefix: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
) -> Result<Heartbeat, BadHeartbeat> {
    let token = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(".hb."))
        .ok_or_else(|| BadHeartbeat::Subject(subject.to_string()))?;
    let agent = AgentId::new(token)?;
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let instance = header(MESH_INSTANCE).ok_or(BadHeartbeat::NoInstance)?;
    let instance = instance.trim();
    if instance.is_empty()
        || instance.len() > MAX_INSTANCE_LEN
        || instance.chars().any(char::is_control)
    {
        return Err(BadHeartbeat::BadInstance(
            instance.chars().take(MAX_INSTANCE_LEN).collect(),
        ));
    }
    let cost_total = header(MESH_COST_TOTAL)
        .map(|v| parse_cost(v).map_err(|_| BadHeartbeat::BadCost(v.to_string())))
        .transpose()?;
    Ok(Heartbeat {
        agent,
        instance: instance.to_string(),
        cost_total,
    })
}

/// Lets one log line through per interval and counts the ones it held back, so that a flood of
/// bad heartbeats cannot flood the log.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged at `now`, `n` being the lines held back since the
    /// last one; `None` when this one is held back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.every);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    #[test]
    fn reads_instance_and_cost() {
        let h = headers(&[(MESH_INSTANCE, "i-1"), (MESH_COST_TOTAL, "2.50")]);
        let hb = parse("mesh", "mesh.hb.deployer", Some(&h)).expect("valid");
        assert_eq!(hb.agent.as_str(), "deployer");
        assert_eq!(hb.instance, "i-1");
        assert_eq!(hb.cost_total, Some(2.5));
        let h = headers(&[(MESH_INSTANCE, "i-1")]);
        let hb = parse("team.mesh", "team.mesh.hb.A", Some(&h)).expect("valid");
        assert_eq!(hb.cost_total, None);
    }

    #[test]
    fn refuses_what_breaks_the_rules() {
        let ok = headers(&[(MESH_INSTANCE, "i-1")]);
        assert!(matches!(
            parse("mesh", "other.hb.A", Some(&ok)),
            Err(BadHeartbeat::Subject(_))
        ));
        assert!(matches!(
            parse("mesh", "mesh.hb.a$b", Some(&ok)),
            Err(BadHeartbeat::Agent(_))
        ));
        assert!(matches!(
            parse("mesh", &format!("mesh.hb.{}", "x".repeat(65)), Some(&ok)),
            Err(BadHeartbeat::Agent(_))
        ));
        assert_eq!(
            parse("mesh", "mesh.hb.A", None),
            Err(BadHeartbeat::NoInstance)
        );
        assert_eq!(
            parse("mesh", "mesh.hb.A", Some(&headers(&[]))),
            Err(BadHeartbeat::NoInstance)
        );
        for bad in ["", "  ", &"i".repeat(MAX_INSTANCE_LEN + 1)] {
            assert!(
                matches!(
                    parse("mesh", "mesh.hb.A", Some(&headers(&[(MESH_INSTANCE, bad)]))),
                    Err(BadHeartbeat::BadInstance(_))
                ),
                "{bad:?}"
            );
        }
        for bad in ["ten", "-1", "NaN", ""] {
            let h = headers(&[(MESH_INSTANCE, "i"), (MESH_COST_TOTAL, bad)]);
            assert_eq!(
                parse("mesh", "mesh.hb.A", Some(&h)),
                Err(BadHeartbeat::BadCost(bad.to_string())),
            );
        }
    }

    #[test]
    fn throttle_lets_one_line_through_per_interval() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), None);
    }
}

#[cfg(test)]
mod props {
    //! Property tests: a heartbeat the agent library would send reads back as sent; anything
    //! else never panics, and what is accepted keeps the rules.
    use super::*;
    use proptest::prelude::*;

    fn headers(instance: Option<&str>, cost: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(i) = instance {
            h.insert(MESH_INSTANCE, i);
        }
        if let Some(c) = cost {
            h.insert(MESH_COST_TOTAL, c);
        }
        h
    }

    proptest! {
        #[test]
        fn valid_heartbeats_round_trip(
            agent in "[A-Za-z0-9_-]{1,64}",
            instance in "[!-~]{1,128}",
            cost in prop::option::of(0.0f64..1e9),
        ) {
            let cost_text = cost.map(|c| c.to_string());
            let h = headers(Some(&instance), cost_text.as_deref());
            let hb = parse("mesh", &format!("mesh.hb.{agent}"), Some(&h)).expect("valid");
            prop_assert_eq!(hb.agent.as_str(), agent.as_str());
            prop_assert_eq!(hb.instance, instance);
            prop_assert_eq!(hb.cost_total, cost);
        }

        #[test]
        fn what_is_accepted_keeps_the_rules(
            subject in "mesh\\.hb\\.[A-Za-z0-9_.*> -]{0,70}|.{0,20}",
            instance in prop::option::of("[ -~\t]{0,140}"),
            cost in prop::option::of("[ -~]{0,12}"),
        ) {
            let h = headers(instance.as_deref(), cost.as_deref());
            if let Ok(hb) = parse("mesh", &subject, Some(&h)) {
                prop_assert_eq!(format!("mesh.hb.{}", hb.agent), subject);
                prop_assert!(!hb.instance.is_empty() && hb.instance.len() <= MAX_INSTANCE_LEN);
                prop_assert!(!hb.instance.chars().any(char::is_control));
                prop_assert!(hb.cost_total.is_none_or(|c| c.is_finite() && c >= 0.0));
            }
        }

        #[test]
        fn one_bad_character_in_the_agent_is_refused(
            agent in "[A-Za-z0-9_-]{1,64}",
            at in any::<usize>(),
            bad in prop::sample::select(vec!['.', '*', '>', '$', 'é', '/']),
        ) {
            let mut chars: Vec<char> = agent.chars().collect();
            let i = at % chars.len();
            chars[i] = bad;
            let spoiled: String = chars.into_iter().collect();
            let h = headers(Some("i-1"), None);
            let subject = format!("mesh.hb.{spoiled}");
            prop_assert!(matches!(
                parse("mesh", &subject, Some(&h)),
                Err(BadHeartbeat::Agent(_))
            ));
        }
    }
}
