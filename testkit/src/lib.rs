//! Test harness: starts real nats-server processes (free port, own store, restart, cluster).
