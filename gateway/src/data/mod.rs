//! The data path: intents from the stream to the agents' inboxes.
//!
//! An intent comes through the shared lane unless its recipient is parked; a parked recipient's
//! intents wait in a consumer of its own and come back through its drain, in order.
//!
//! - [`lane`]: the shared delivery consumer; order per sender; parks recipients that cannot
//!   take their work now (killed, unreachable, backlogged) and takes them back.
//! - [`park`]: parking and unparking a recipient, safely for order and without loss.
//! - [`discover`]: finds parked recipients and starts their drains.
//! - [`drain`]: the drain of one parked recipient's consumer; holds, retries, replays in order.
//! - [`deliver`]: one intent's delivery: gate checks, policies, request, ack.
//! - [`pin_hold`]: after a pin is gained, holds new intents until the previous holder's are done.
//! - [`flights`]: deliveries in flight, each a task of its own (why: see the module).
//! - [`reject`]: rejection notices and audit records.
//! - [`activity`]: the agents seen as senders or recipients, in `mesh-activity` for status.

pub mod activity;
pub mod deliver;
pub mod discover;
pub mod drain;
pub mod flights;
pub mod lane;
pub mod park;
pub mod pin_hold;
pub mod reject;
