//! Client library for Rust agents on Agent Mesh: send intents, serve an inbox, dedupe redeliveries.
