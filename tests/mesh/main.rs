//! Integration tests of Agent Mesh against real nats-server processes, grouped by topic.
//! One test binary, so that the server binary and the gateway binary are found once.

mod bad_input;
mod bypass;
mod churn;
mod cluster;
mod connect;
mod crash;
mod delivery;
mod garbage;
mod grafana;
mod health;
mod kill;
mod metrics;
mod park;
mod policy;
mod rate;
mod region;
mod replay;
mod sdk;
