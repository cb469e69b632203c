//! Property tests of everything in this crate that parses outside input: agent ids, intent and
//! inbox subjects, the `Mesh-Cost` and `Nats-Msg-Id` headers, kill and policy records. Each
//! parser must round-trip what it accepts, never panic on arbitrary input, accept only values
//! that keep the rules (one subject token, no wildcards), and refuse near-valid input.

use mesh_schemas::headers::{intent_id, parse_cost, HeaderError, MAX_MSG_ID_LEN};
use mesh_schemas::id::MAX_AGENT_ID_LEN;
use mesh_schemas::policy::{action_matches, parse_duration};
use mesh_schemas::{
    decode, encode, AgentId, InvalidAgentId, KillRecord, KillState, OnBreach, Policy, PolicyRecord,
    Rate, SubjectError, Subjects,
};
use proptest::prelude::*;

const ID: &str = "[A-Za-z0-9_-]{1,64}";
const TOKEN: &str = "[A-Za-z0-9_-]{1,12}";

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).expect("strategy makes valid ids")
}

/// A character that is not allowed in an id: NATS specials, whitespace, unicode, controls.
fn bad_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '.', '*', '>', ' ', '\t', '\r', '\n', '\0', '$', '/', 'é'
        ]),
        any::<char>().prop_filter("not an id char", |c| !is_id_char(*c)),
    ]
}

/// Dot-separated action tokens, e.g. `deploy.service`.
fn action() -> impl Strategy<Value = String> {
    prop::collection::vec(TOKEN, 1..4).prop_map(|t| t.join("."))
}

/// A subject prefix of one to three tokens.
fn prefix() -> impl Strategy<Value = String> {
    prop::collection::vec(TOKEN, 1..3).prop_map(|t| t.join("."))
}

/// Puts `ch` at `at` (modulo the length) of `s`, replacing the character there.
fn spoil(s: &str, at: usize, ch: char) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let i = at % chars.len();
    chars[i] = ch;
    chars.into_iter().collect()
}

proptest! {
    #[test]
    fn valid_ids_round_trip(s in ID) {
        let a = AgentId::new(s.clone()).expect("valid");
        prop_assert_eq!(a.as_str(), s.as_str());
        prop_assert_eq!(a.to_string().parse::<AgentId>(), Ok(a.clone()));
        let back: AgentId = decode(&encode(&a).expect("encodes")).expect("decodes");
        prop_assert_eq!(back, a);
    }

    #[test]
    fn an_accepted_id_is_one_plain_subject_token(s in any::<String>()) {
        match AgentId::new(s.clone()) {
            Ok(a) => {
                prop_assert!((1..=MAX_AGENT_ID_LEN).contains(&a.as_str().len()));
                prop_assert!(a.as_str().chars().all(is_id_char));
                prop_assert_eq!(Subjects::default().inbox(&a).split('.').count(), 4);
            }
            Err(InvalidAgentId::Empty) => prop_assert!(s.is_empty()),
            Err(InvalidAgentId::TooLong { len, .. }) => prop_assert!(len > MAX_AGENT_ID_LEN),
            Err(InvalidAgentId::BadChar { ch, .. }) => prop_assert!(!is_id_char(ch)),
        }
    }

    #[test]
    fn one_bad_character_spoils_an_id(s in ID, at in any::<usize>(), ch in bad_char()) {
        let bad = spoil(&s, at, ch);
        prop_assume!(bad.len() <= MAX_AGENT_ID_LEN);
        prop_assert!(
            matches!(AgentId::new(bad.clone()), Err(InvalidAgentId::BadChar { ch: c, .. }) if c == ch),
            "{:?} accepted or refused for another reason", bad
        );
        // Deserializing validates too.
        prop_assert!(serde_json::from_value::<AgentId>(serde_json::Value::String(bad)).is_err());
    }

    #[test]
    fn ids_past_the_limit_are_refused(s in "[A-Za-z0-9_-]{65,200}") {
        prop_assert!(
            matches!(AgentId::new(s.clone()), Err(InvalidAgentId::TooLong { len, .. }) if len == s.len()),
            "too long but not TooLong"
        );
    }

    #[test]
    fn intent_subjects_round_trip(p in prefix(), from in ID, to in ID, act in action()) {
        let s = Subjects::new(p).expect("valid prefix");
        let subject = s.intent(&id(&from), &id(&to), &act);
        let parsed = s.parse_intent(&subject).expect("parses");
        prop_assert_eq!(parsed.from.as_str(), from.as_str());
        prop_assert_eq!(parsed.to.as_str(), to.as_str());
        prop_assert_eq!(&parsed.action, &act);
        prop_assert_eq!(s.raw_recipient(&subject), Some(to.as_str()));
        prop_assert_eq!(s.parse_unpark_marker(&subject), None);
        // The recipient's own consumer filter sees it at the recipient's token.
        prop_assert_eq!(subject.split('.').nth(s.prefix().split('.').count() + 2), Some(to.as_str()));
    }

    #[test]
    fn what_parses_as_an_intent_subject_is_rebuilt_exactly(
        subject in prop_oneof![
            any::<String>(),
            "mesh\\.intent\\.[A-Za-z0-9_.*> $-]{0,40}",
        ]
    ) {
        let s = Subjects::default();
        if let Ok(p) = s.parse_intent(&subject) {
            prop_assert_eq!(s.intent(&p.from, &p.to, &p.action), subject.clone());
            prop_assert!(p.action.split('.').all(|t| !t.is_empty()));
            prop_assert_eq!(s.raw_recipient(&subject), Some(p.to.as_str()));
        }
        if let Some(to) = s.parse_unpark_marker(&subject) {
            prop_assert_eq!(s.unpark_marker(&id_or_skip(to)?), subject);
        }
    }

    #[test]
    fn one_bad_character_in_a_sender_or_recipient_is_refused(
        from in ID, to in ID, act in action(), at in any::<usize>(), ch in bad_char(), which in any::<bool>()
    ) {
        // A dot makes another token layout, which is refused differently; see below.
        prop_assume!(ch != '.');
        let s = Subjects::default();
        let (f, t) = if which { (spoil(&from, at, ch), to) } else { (from, spoil(&to, at, ch)) };
        let subject = format!("mesh.intent.{f}.{t}.{act}");
        let r = s.parse_intent(&subject);
        if which {
            prop_assert!(matches!(r, Err(SubjectError::BadSender { .. })), "{:?}", r);
        } else {
            prop_assert!(matches!(r, Err(SubjectError::BadRecipient { .. })), "{:?}", r);
        }
    }

    #[test]
    fn empty_tokens_and_missing_actions_are_refused(from in ID, to in ID, act in action(), cut in any::<usize>()) {
        let s = Subjects::default();
        let r = s.parse_intent(&format!("mesh.intent.{from}.{to}"));
        prop_assert!(matches!(r, Err(SubjectError::MissingAction { .. })), "{:?}", r);
        // An empty token anywhere in the action.
        let tokens: Vec<&str> = act.split('.').collect();
        let i = cut % (tokens.len() + 1);
        let mut spoiled = tokens.clone();
        spoiled.insert(i, "");
        let r = s.parse_intent(&format!("mesh.intent.{from}.{to}.{}", spoiled.join(".")));
        prop_assert!(matches!(r, Err(SubjectError::EmptyToken { .. })), "{:?}", r);
    }

    /// The agent libraries refuse a delivery whose action has a wildcard character, a space or
    /// a control character (and then never answer it), so the gateway must refuse such an
    /// intent up front instead of delivering it.
    #[test]
    fn an_accepted_action_has_no_wildcard_space_or_control_character(
        from in ID, to in ID, act in "[a-z*>]{1,4}(\\.[a-z*> \t\u{7f}]{1,4}){0,2}"
    ) {
        let subject = format!("mesh.intent.{from}.{to}.{act}");
        match Subjects::default().parse_intent(&subject) {
            Ok(p) => prop_assert!(
                !p.action.contains(|c: char| matches!(c, '*' | '>') || c.is_whitespace() || c.is_control()),
                "{:?} accepted", p.action
            ),
            Err(e) => prop_assert!(matches!(e, SubjectError::BadAction { .. }), "{}", e),
        }
    }

    #[test]
    fn inbox_and_notice_subjects_put_the_id_in_one_token(p in prefix(), a in ID) {
        let s = Subjects::new(p).expect("valid prefix");
        let a = id(&a);
        let n = s.prefix().split('.').count();
        for (subject, last) in [(s.inbox(&a), "inbox"), (s.rejected(&a), "rejected"), (s.control(&a), "control")] {
            let tokens: Vec<&str> = subject.split('.').collect();
            prop_assert_eq!(tokens.len(), n + 3);
            prop_assert_eq!(tokens[n + 1], a.as_str());
            prop_assert_eq!(tokens[n + 2], last);
        }
    }

    #[test]
    fn prefixes_are_dot_separated_id_tokens(p in any::<String>()) {
        if let Ok(s) = Subjects::new(p) {
            prop_assert!(s.prefix().split('.').all(|t| AgentId::new(t).is_ok()));
        }
    }

    #[test]
    fn costs_round_trip(v in 0.0f64..1e12) {
        prop_assert_eq!(parse_cost(&v.to_string()), Ok(v));
        prop_assert_eq!(parse_cost(&format!(" {v}\t")), Ok(v));
    }

    #[test]
    fn an_accepted_cost_is_finite_and_not_negative(s in any::<String>()) {
        if let Ok(v) = parse_cost(&s) {
            prop_assert!(v.is_finite() && v >= 0.0, "{:?} gave {}", s, v);
        }
    }

    #[test]
    fn negative_and_spoiled_costs_are_refused(v in 0.001f64..1e12, ch in "[a-zA-Z,;$ ]") {
        let negative = format!("-{v}");
        prop_assert!(matches!(parse_cost(&negative), Err(HeaderError::BadCost(_))));
        prop_assume!(!matches!(ch.as_str(), "e" | "E" | " "));
        let spoiled = format!("{v}{ch}");
        prop_assert!(parse_cost(&spoiled).is_err(), "{:?} accepted", spoiled);
    }

    #[test]
    fn intent_ids_are_the_msg_id_within_limits(msg_id in prop::option::of(".{0,300}"), seq in any::<u64>()) {
        match (intent_id(msg_id.as_deref(), "S", seq), msg_id.as_deref()) {
            (Ok(id), Some(m)) if !m.is_empty() => prop_assert_eq!(id, m),
            (Ok(id), _) => prop_assert_eq!(id, format!("S-{seq}")),
            (Err(HeaderError::MsgIdTooLong(n)), Some(m)) => {
                prop_assert_eq!(n, m.len());
                prop_assert!(n > MAX_MSG_ID_LEN);
            }
            (Err(e), m) => prop_assert!(false, "{:?} refused: {}", m, e),
        }
    }
}

fn id_or_skip(s: &str) -> Result<AgentId, TestCaseError> {
    AgentId::new(s).map_err(|_| TestCaseError::reject("not an id"))
}

fn kill_record() -> impl Strategy<Value = KillRecord> {
    (any::<bool>(), ".{0,40}", ".{0,20}", any::<u64>()).prop_map(|(killed, reason, by, at)| {
        let mut r = if killed {
            KillRecord::killed(reason, by)
        } else {
            KillRecord::active(reason, by)
        };
        r.at_unix_ms = at;
        r
    })
}

proptest! {
    #[test]
    fn kill_records_round_trip(rec in kill_record()) {
        let back: KillRecord = decode(&encode(&rec).expect("encodes")).expect("decodes");
        prop_assert_eq!(&back, &rec);
        let json = serde_json::to_vec(&rec).expect("json");
        let back: KillRecord = decode(&json).expect("json decodes");
        prop_assert_eq!(back, rec);
    }

    #[test]
    fn garbage_never_panics_a_record_reader(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode::<KillRecord>(&bytes);
        let _ = decode::<PolicyRecord>(&bytes);
        let _ = decode::<mesh_schemas::GatewayPresence>(&bytes);
        let _ = decode::<mesh_schemas::HealthRecord>(&bytes);
    }

    /// The gateway treats an unreadable kill record as a kill, so a damaged record must not read
    /// as a valid one: cut short or followed by anything, it is an error.
    #[test]
    fn a_damaged_kill_record_is_unreadable(
        rec in kill_record(),
        json in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 1..20),
        cut in any::<usize>(),
    ) {
        let bytes = if json { serde_json::to_vec(&rec).expect("json") } else { encode(&rec).expect("encodes") };
        let mut longer = bytes.clone();
        longer.extend_from_slice(&tail);
        // JSON allows trailing whitespace, which is no damage.
        prop_assume!(!(json && tail.iter().all(u8::is_ascii_whitespace)));
        prop_assert!(decode::<KillRecord>(&longer).is_err(), "{:?} + {:?} read as a record", rec, tail);
        let shorter = &bytes[..cut % bytes.len()];
        prop_assert!(decode::<KillRecord>(shorter).is_err(), "{:?} cut at {} read as a record", rec, shorter.len());
    }

    /// A flipped byte may give another readable record, but it never turns a kill into "active".
    #[test]
    fn a_flipped_byte_never_resumes_a_killed_agent(
        reason in ".{0,40}", at in any::<usize>(), flip in 1u8..=255
    ) {
        let mut bytes = encode(&KillRecord::killed(reason, "ops")).expect("encodes");
        let i = at % bytes.len();
        bytes[i] ^= flip;
        if let Ok(r) = decode::<KillRecord>(&bytes) {
            prop_assert_eq!(r.state, KillState::Killed);
        }
    }
}

/// Policies that validate: every field set to something sensible, or left out.
fn valid_policy() -> impl Strategy<Value = Policy> {
    let glob = prop::collection::vec(prop_oneof![TOKEN, Just("*".to_string())], 1..3)
        .prop_flat_map(|t| {
            (Just(t.join(".")), any::<bool>())
                .prop_map(|(g, more)| if more { format!("{g}.>") } else { g })
        });
    let globs = prop::option::of(prop::collection::vec(glob, 0..3));
    (
        prop::option::of((1u32..10_000, prop::sample::select(vec!["s", "m", "h"]))),
        prop::option::of(1u32..1000),
        prop::option::of(1u64..1_000_000),
        prop::option::of(1u64..1_000_000),
        prop::option::of(0.01f64..1e6),
        prop::option::of(0.01f64..1e6),
        prop::option::of(prop::sample::select(vec![
            OnBreach::Kill,
            OnBreach::Block,
            OnBreach::Observe,
        ])),
        (globs.clone(), globs.clone(), globs.clone(), globs),
        prop::option::of((1u64..1000, 1u64..1000)),
    )
        .prop_map(
            |(rate, burst, hour, day, cost_day, cost, on_breach, (a_s, d_s, a_r, d_r), health)| {
                Policy {
                    rate: rate.map(|(n, u)| format!("{n}/{u}")),
                    burst: rate.and(burst),
                    max_intents_per_hour: hour,
                    max_intents_per_day: day,
                    max_cost_usd_per_day: cost_day,
                    max_cost_usd: cost,
                    on_breach,
                    allow_send: a_s,
                    deny_send: d_s,
                    allow_receive: a_r,
                    deny_receive: d_r,
                    degraded_after: health.map(|(d, _)| format!("{d}s")),
                    unreachable_after: health.map(|(d, extra)| format!("{}s", d + extra)),
                    on_unreachable: None,
                }
            },
        )
}

proptest! {
    #[test]
    fn valid_policies_validate_and_round_trip(p in valid_policy(), by in ".{0,20}") {
        prop_assert_eq!(p.validate(), Ok(()));
        let rec = PolicyRecord::new(p, by);
        let back: PolicyRecord = decode(&encode(&rec).expect("encodes")).expect("decodes");
        prop_assert_eq!(back, rec);
    }

    #[test]
    fn policy_fields_never_panic_and_accepted_values_work(
        rate in ".{0,12}|[0-9]{1,25}/[smh]",
        dur in ".{0,12}|[0-9]{1,25}(ms|s|m|h)",
        glob in ".{0,12}",
        act in ".{0,12}",
    ) {
        if let Ok(r) = Rate::parse(&rate) {
            prop_assert!(r.count >= 1 && !r.per.is_zero());
        }
        if let Ok(d) = parse_duration("degraded_after", &dur) {
            prop_assert!(!d.is_zero());
        }
        let _ = action_matches(&glob, &act);
        let p = Policy {
            rate: Some(rate),
            degraded_after: Some(dur),
            allow_send: Some(vec![glob]),
            ..Default::default()
        };
        let _ = p.validate();
    }

    /// A policy written as JSON by hand with an unknown or misspelt field is refused, not
    /// silently read without it.
    #[test]
    fn unknown_policy_fields_are_refused(field in "[a-z_]{1,20}") {
        prop_assume!(serde_json::from_str::<Policy>(&format!(r#"{{"{field}": null}}"#)).is_err());
        let json = format!(r#"{{"policy": {{"{field}": 1}}, "by": "x"}}"#);
        prop_assert!(decode::<PolicyRecord>(json.as_bytes()).is_err());
    }
}
