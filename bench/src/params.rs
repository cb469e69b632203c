//! The sizes and durations of a run. A full run follows issue 4 to the letter (100 agents,
//! 100,000 held intents, 10 / 1,000 / 10,000 agents) and the identity issue (10,000 agents'
//! credentials minted); `--quick` keeps every phase and every code
//! path but shrinks them so that CI's smoke run ends in well under two minutes.

use std::time::Duration;

use serde::Serialize;

/// Everything that differs between a full and a quick run.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// True for `--quick`.
    pub quick: bool,
    /// Agents (recipients with acknowledging instances) in the throughput, latency, fence,
    /// replay and policy phases.
    pub agents: usize,
    /// Sender ids the intents are spread over (the pair is drawn at random per intent).
    pub senders: usize,
    /// Intent payload size in bytes.
    pub payload: usize,
    /// Time to reach a steady state before a measurement window opens.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// Length of one measurement window.
    #[serde(with = "secs")]
    pub measure: Duration,
    /// Baseline/mesh rounds of the throughput phase, alternated so that drift hits both sides.
    pub rounds: usize,
    /// PubAck futures outstanding per publisher.
    pub publish_window: usize,
    /// Closed-loop bound on intents published but not yet received by an agent.
    pub backlog: u64,
    /// Kills (each followed by a resume) per replica count in the fence phase.
    pub kills: usize,
    /// Held intents released by a resume in the replay phase.
    pub replay_intents: u64,
    /// Agent counts of the scale phase (small, medium, large).
    pub scale_agents: Vec<usize>,
    /// Measure the restart time at every scale step (else only at the largest).
    pub restart_every_count: bool,
    /// Also measure the relay shaped like the gateway (one consumer per agent, discovery) in
    /// the throughput phase and at scale steps with at least 1,000 agents.
    pub decompose: bool,
    /// In the policy phase, also measure each kind of check on its own.
    pub policy_breakdown: bool,
    /// Measurement window of each scale step.
    #[serde(with = "secs")]
    pub scale_measure: Duration,
    /// Agent connections in the benchmark process; agents are spread over them (except in the
    /// secured phase, where every agent and sender has a connection of its own).
    pub agent_connections: usize,
    /// Open/secured rounds of the secured phase, alternated.
    pub secured_rounds: usize,
    /// Agents' credentials minted, one `add_agent` call each, in the secured phase.
    pub mint_credentials: usize,
}

impl Params {
    /// What issue 4 asks for.
    pub fn full() -> Params {
        Params {
            quick: false,
            agents: 100,
            senders: 100,
            payload: 256,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(8),
            rounds: 2,
            publish_window: 1024,
            backlog: 20_000,
            kills: 100,
            replay_intents: 100_000,
            scale_agents: vec![10, 1_000, 10_000],
            restart_every_count: true,
            decompose: true,
            policy_breakdown: true,
            scale_measure: Duration::from_secs(6),
            agent_connections: 4,
            secured_rounds: 3,
            mint_credentials: 10_000,
        }
    }

    /// The smoke run: every phase, small.
    pub fn quick() -> Params {
        Params {
            quick: true,
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(2),
            rounds: 1,
            kills: 20,
            replay_intents: 10_000,
            scale_agents: vec![10, 1_000],
            restart_every_count: false,
            decompose: false,
            policy_breakdown: false,
            scale_measure: Duration::from_secs(2),
            secured_rounds: 2,
            mint_credentials: 1_000,
            ..Params::full()
        }
    }
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}
