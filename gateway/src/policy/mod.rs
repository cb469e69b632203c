//! Policies on the delivery path: the in-memory book of policies (hot-reloaded from a KV watch),
//! and the checks one delivery runs before its request.
//!
//! - [`book`]: policies per agent and `_default`, merged and cached; bad records reported and
//!   ignored (the last valid policy stays in force).
//! - [`actions`]: allow/deny globs for sending and receiving.
//! - [`rate`]: per-sender throttling, one token bucket per sender kept mesh-wide in KV.
//! - [`budget`]: hourly/daily caps and cost ceilings, counted mesh-wide in KV before delivery.
//! - [`autokill`]: a breach writes a kill record like an operator would.

pub mod actions;
pub mod autokill;
pub mod book;
pub mod budget;
pub mod rate;

pub use book::{Effective, PolicyBook};
