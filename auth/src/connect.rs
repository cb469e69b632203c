//! Connection options shared by every role: how to reach and authenticate to NATS.
