//! Allowed actions: the sender's `allow_send`/`deny_send` and the recipient's
//! `allow_receive`/`deny_receive`. A refused intent is rejected 403; the agent keeps running.

use mesh_schemas::AgentId;

use super::Effective;

/// Why `from` may not send `action` to `to`, if it may not.
pub fn check(
    from: &AgentId,
    from_policy: &Effective,
    to: &AgentId,
    to_policy: &Effective,
    action: &str,
) -> Result<(), String> {
    from_policy
        .policy
        .may_send(action)
        .map_err(|why| format!("{from} may not send: {why}"))?;
    to_policy
        .policy
        .may_receive(action)
        .map_err(|why| format!("{to} may not receive: {why}"))
}
