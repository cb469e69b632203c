//! What each role may do on NATS: the permission sets the mesh issues, and the inbox prefixes
//! that keep one identity's replies out of another's reach.
//!
//! | role | publish | subscribe |
//! |---|---|---|
//! | agent `<id>` | `<p>.intent.<id>.>`, `<p>.hb.<id>`, `_INBOX_<id>.>`; one reply to each request it receives | `<p>.agent.<id>.>`, `_INBOX_<id>.>` |
//! | gateway | `$JS.API.>`, `$JS.ACK.>`, `$JS.FC.>`, `$KV.>`, `<p>.>`, `_GW_INBOX.>` | `<p>.>`, `_GW_INBOX.>` |
//! | operator | `$JS.API.>`, `$JS.ACK.>`, `$JS.FC.>`, `$KV.>`, `$JS.*.API.>` (through a domain), `<p>.>`, `_CLI_INBOX.>` | `<p>.>`, `_CLI_INBOX.>` |
//! | leaf link (a region's server) | `>` in the mesh account | `>` in the mesh account |
//! | system (revocation only) | `$SYS.REQ.CLAIMS.UPDATE`, `$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE`, `$SYS.REQ.SERVER.PING.>` | `_CLI_INBOX.>` |
//!
//! The system user lives in the system account, which no agent can reach; mesh-cli uses the
//! same inbox prefix for it as for the operator.
//!
//! An agent's permissions come from the template of the account's scoped signing key, expanded
//! by the server with the user's name (`{{name()}}`), so issuing an agent needs no server
//! change. That is also why an id must be a plain subject token that cannot start with `_`:
//! a name of `*` or `>` would expand into a wildcard, and `_mesh` into the gateway's own
//! marker subjects (see [`crate::mintable`]).
//!
//! No identity may subscribe to `_INBOX.>` (it would see every reply in the account), and the
//! gateway's and operator's prefixes do not start with `_INBOX_`, so no agent id can name them.

use serde_json::{json, Value};

/// The gateway's inbox prefix.
pub const GATEWAY_INBOX: &str = "_GW_INBOX";
/// mesh-cli's (the operator's) inbox prefix.
pub const OPERATOR_INBOX: &str = "_CLI_INBOX";

/// The inbox prefix of agent `id`: its PubAcks and request replies come back there.
pub fn agent_inbox(id: &str) -> String {
    format!("_INBOX_{id}")
}

/// Allow lists and the response permission of one identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// How many replies it may send to each request it receives (`None`: no reply rights
    /// beyond `publish`).
    pub responses: Option<u32>,
}

impl Permissions {
    /// The `pub`/`sub`/`resp` part of a NATS user JWT or template.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "pub": {"allow": self.publish},
            "sub": {"allow": self.subscribe},
        });
        if let Some(max) = self.responses {
            // ttl 0: the server's default expiry for a response permission.
            v["resp"] = json!({"max": max, "ttl": 0});
        }
        v
    }
}

/// The template of the agents' scoped signing key: `{{name()}}` is the agent's id.
pub fn agent_template(prefix: &str) -> Permissions {
    Permissions {
        publish: vec![
            format!("{prefix}.intent.{{{{name()}}}}.>"),
            format!("{prefix}.hb.{{{{name()}}}}"),
            // Its own inbox only: a client that sends itself a message there and receives it
            // back knows the server has registered its earlier subscriptions.
            "_INBOX_{{name()}}.>".to_string(),
        ],
        subscribe: vec![
            format!("{prefix}.agent.{{{{name()}}}}.>"),
            "_INBOX_{{name()}}.>".to_string(),
        ],
        // One reply to each delivery. An agent must not hold two subscriptions that both
        // receive one request: the second delivery uses up the single reply.
        responses: Some(1),
    }
}

/// What an agent's template expands to for `id` (for documentation and tests).
pub fn agent_permissions(prefix: &str, id: &str) -> Permissions {
    let t = agent_template(prefix);
    let expand = |v: Vec<String>| v.into_iter().map(|s| s.replace("{{name()}}", id)).collect();
    Permissions {
        publish: expand(t.publish),
        subscribe: expand(t.subscribe),
        responses: t.responses,
    }
}

/// JetStream and KV subjects a trusted mesh role needs: the API, acks, flow control of
/// ordered consumers (KV watches), KV puts.
fn jetstream_subjects() -> Vec<String> {
    ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>"]
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// The gateway: the mesh's streams, buckets and consumers; delivery to agents; `<p>.gw.>`.
pub fn gateway(prefix: &str) -> Permissions {
    let mut publish = jetstream_subjects();
    publish.push(format!("{prefix}.>"));
    // Answers to unpark markers go to another replica's inbox.
    publish.push(format!("{GATEWAY_INBOX}.>"));
    Permissions {
        publish,
        subscribe: vec![format!("{prefix}.>"), format!("{GATEWAY_INBOX}.>")],
        responses: None,
    }
}

/// The operator (mesh-cli, console): kill flags, policies, audit, status, control notices.
pub fn operator(prefix: &str) -> Permissions {
    let mut publish = jetstream_subjects();
    // The JetStream API (buckets included) through a domain: how an operator connected to a
    // region's leaf node reaches the hub's streams, since `$JS.API.>` and `$KV.>` do not cross
    // a leaf link.
    publish.push("$JS.*.API.>".into());
    publish.push(format!("{prefix}.>"));
    publish.push(format!("{OPERATOR_INBOX}.>"));
    Permissions {
        publish,
        subscribe: vec![format!("{prefix}.>"), format!("{OPERATOR_INBOX}.>")],
        responses: None,
    }
}

/// The link of a region's leaf node to the hub: everything in the mesh account. It carries
/// the traffic of every client of that region, whose own permissions the leaf server enforces
/// (it trusts the same operator and accounts), and the agents' reply inboxes (`_INBOX_<id>`)
/// cannot be matched by a narrower wildcard. Only leaf servers hold it.
pub fn leaf() -> Permissions {
    Permissions {
        publish: vec![">".into()],
        subscribe: vec![">".into()],
        responses: None,
    }
}

/// The system-account user mesh-cli uses only to push account updates (revocations).
pub fn system() -> Permissions {
    Permissions {
        publish: vec![
            "$SYS.REQ.CLAIMS.UPDATE".into(),
            "$SYS.REQ.ACCOUNT.*.CLAIMS.UPDATE".into(),
            "$SYS.REQ.SERVER.PING.>".into(),
        ],
        subscribe: vec![format!("{OPERATOR_INBOX}.>")],
        responses: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_gets_only_its_own_subjects() {
        let p = agent_permissions("mesh", "billing");
        assert_eq!(
            p.publish,
            [
                "mesh.intent.billing.>",
                "mesh.hb.billing",
                "_INBOX_billing.>"
            ]
        );
        assert_eq!(p.subscribe, ["mesh.agent.billing.>", "_INBOX_billing.>"]);
        assert_eq!(p.responses, Some(1));
        assert!(p
            .publish
            .iter()
            .chain(&p.subscribe)
            .all(|s| !s.starts_with('$')));
    }

    #[test]
    fn trusted_inboxes_lie_outside_every_agents() {
        for prefix in [GATEWAY_INBOX, OPERATOR_INBOX] {
            assert!(!prefix.starts_with("_INBOX_"), "{prefix}");
            assert_ne!(prefix, "_INBOX");
        }
        for p in [gateway("mesh"), operator("mesh"), system()] {
            assert!(!p.subscribe.iter().any(|s| s == "_INBOX.>" || s == ">"));
            assert!(!p.publish.iter().any(|s| s == ">" || s == "$JS.>"));
        }
    }
}
