//! The control path: the kill flags in `mesh-kill` → each agent's gate → the fence that confirms
//! a kill to `mesh-cli`. Until the kill state is known, and while this replica cannot prove it
//! is listed, nothing is delivered (fail closed).
//!
//! - [`killwatch`]: follows `mesh-kill`, applies changes, fences and confirms them, pauses and
//!   resumes the recipient's consumer so that the hold lives in NATS.
//! - [`gate`]: per-agent kill state and in-flight accounting; fail-closed readiness.
//! - [`presence`]: this replica's record in `mesh-gateways`; who else is live.

pub mod gate;
pub mod killwatch;
pub mod presence;
