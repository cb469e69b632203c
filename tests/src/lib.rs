//! Integration tests of Agent Mesh against real nats-server processes.
