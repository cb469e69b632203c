//! One module per command. Each has its clap `Args` and an `async fn run(args, ctx)`.

pub mod agent;
pub mod audit;
pub mod auth;
pub mod console;
pub mod demo;
pub mod kill;
pub mod policy;
pub mod resume;
pub mod status;
pub mod tail;
pub mod up;

use mesh_schemas::AgentId;

/// Parses an agent id argument (clap value parser): the error names the id and the allowed
/// characters.
pub fn agent_id(s: &str) -> Result<AgentId, mesh_schemas::InvalidAgentId> {
    AgentId::new(s)
}

/// `user@host` for the `by` of records, from `USER` or `LOGNAME`.
pub fn operator(env: &std::collections::HashMap<String, String>) -> String {
    let user = env
        .get("USER")
        .or_else(|| env.get("LOGNAME"))
        .filter(|u| !u.is_empty())
        .map(String::as_str)
        .unwrap_or("operator");
    format!("{user}@{}", mesh_gateway::config::hostname())
}
