//! The SDKs in one mesh with the Rust client library: a Rust sender (`mesh-agent`), a Python agent
//! (`sdk/python`, run from tests/sdk/agent.py in the project's venv) and a TypeScript agent
//! (`sdk/typescript`, tests/sdk/agent.mjs, built by scripts/ts-env), each with credentials of its
//! own. Both agents are killed and resumed in the middle, and each gets one forced redelivery
//! (`job.slow` answers only after the gateway delivered it again). Every intent reaches each
//! application exactly once, in the order sent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mesh_agent::{Agent, AgentId, SendOptions};
use mesh_tests::gateways::one_gateway;
use mesh_tests::operator;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const PER_PHASE: usize = 5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// Runs a scripts/*-env helper and returns what it printed (a path).
fn env_script(name: &str) -> String {
    let out = std::process::Command::new(root().join("scripts").join(name))
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// One SDK agent process and its JSON lines.
struct SdkAgent {
    name: &'static str,
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SdkAgent {
    fn spawn(
        name: &'static str,
        program: &str,
        script: &str,
        id: &str,
        url: &str,
        creds: &Path,
    ) -> Self {
        let mut child = Command::new(program)
            .arg(root().join("tests/sdk").join(script))
            .env("MESH_AGENT_ID", id)
            .env("MESH_NATS_URL", url)
            .env("MESH_AGENT_CREDS", creds)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {name} agent ({program}): {e}"));
        let stdout = child.stdout.take().expect("stdout");
        SdkAgent {
            name,
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next JSON line, within `wait`.
    async fn next(&mut self, wait: Duration) -> Value {
        let line = tokio::time::timeout(wait, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the {} agent said nothing within {wait:?}", self.name))
            .expect("read agent output")
            .unwrap_or_else(|| panic!("the {} agent exited early", self.name));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the {} agent printed {line:?}: {e}", self.name))
    }

    async fn expect(&mut self, event: &str) -> Value {
        let v = self.next(Duration::from_secs(60)).await;
        assert_eq!(v["event"], event, "{} agent: {v}", self.name);
        v
    }

    /// Stops it with SIGTERM (a graceful stop) and returns the intents it printed until then,
    /// with its final counters.
    async fn stop(mut self, intents: &mut Vec<Value>) -> Value {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        loop {
            let v = self.next(Duration::from_secs(60)).await;
            match v["event"].as_str() {
                Some("intent") => intents.push(v),
                Some("stopped") => {
                    let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                        .await
                        .expect("agent exits after stopping")
                        .expect("wait");
                    assert!(exit.success(), "the {} agent exited with {exit}", self.name);
                    return v;
                }
                _ => panic!("the {} agent printed {v}", self.name),
            }
        }
    }
}

#[tokio::test]
async fn a_rust_sender_python_and_typescript_agents_kill_and_resume_each_intent_once_in_order() {
    let python = env_script("python-env");
    let ts_sdk = env_script("ts-env");
    assert!(Path::new(&ts_sdk).join("dist/index.js").is_file());

    let (mesh, _gw, op) = one_gateway().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = |id: &str| {
        let path = dir.path().join(format!("{id}.creds"));
        std::fs::write(&path, mesh.agent_creds(id).expect("secured")).expect("write creds");
        path
    };
    let url = mesh.url();
    let mut py = SdkAgent::spawn(
        "python",
        &python,
        "agent.py",
        "py-agent",
        &url,
        &creds("py-agent"),
    );
    let mut ts = SdkAgent::spawn(
        "typescript",
        "node",
        "agent.mjs",
        "ts-agent",
        &url,
        &creds("ts-agent"),
    );
    py.expect("ready").await;
    ts.expect("ready").await;

    let sender = Agent::new(
        mesh.agent("rust-sender").await,
        AgentId::new("rust-sender").expect("valid id"),
    );
    let recipients = [
        AgentId::new("py-agent").expect("valid id"),
        AgentId::new("ts-agent").expect("valid id"),
    ];
    let mut sent: Vec<Vec<(String, String)>> = vec![Vec::new(), Vec::new()];
    let mut n = 0;
    let send_phase = async |sent: &mut Vec<Vec<(String, String)>>, n: &mut usize, slow: bool| {
        for i in 0..PER_PHASE {
            for (r, to) in recipients.iter().enumerate() {
                let action = if slow && i == 1 {
                    "job.slow"
                } else {
                    "job.run"
                };
                let payload = format!("{}-{n}", to.as_str());
                let receipt = sender
                    .send_with(
                        to,
                        action,
                        payload.clone(),
                        SendOptions::default().cost_usd(0.01),
                    )
                    .await
                    .expect("stored");
                sent[r].push((receipt.intent_id, payload));
            }
            *n += 1;
        }
    };

    // Phase 1: delivered as sent, with one forced redelivery each.
    send_phase(&mut sent, &mut n, true).await;
    let mut got: Vec<Vec<Value>> = vec![Vec::new(), Vec::new()];
    for _ in 0..PER_PHASE {
        got[0].push(py.expect("intent").await);
        got[1].push(ts.expect("intent").await);
    }

    // Phase 2: both killed; what is sent meanwhile waits, durable.
    operator::kill(&op, "py-agent", "cross-language test").await;
    operator::kill(&op, "ts-agent", "cross-language test").await;
    send_phase(&mut sent, &mut n, false).await;

    // Phase 3: resumed; the held intents come first, in order, then the new ones.
    operator::resume(&op, "py-agent").await;
    operator::resume(&op, "ts-agent").await;
    send_phase(&mut sent, &mut n, false).await;
    for _ in 0..2 * PER_PHASE {
        got[0].push(py.expect("intent").await);
        got[1].push(ts.expect("intent").await);
    }

    // A graceful stop; anything printed after the last expected intent would be a duplicate.
    let py_stats = py.stop(&mut got[0]).await;
    let ts_stats = ts.stop(&mut got[1]).await;

    for (r, (stats, name)) in [(py_stats, "python"), (ts_stats, "typescript")]
        .into_iter()
        .enumerate()
    {
        let ids: Vec<(String, String)> = got[r]
            .iter()
            .map(|v| {
                assert_eq!(v["sender"], "rust-sender", "{name}: {v}");
                (
                    v["id"].as_str().expect("id").to_string(),
                    v["payload"].as_str().expect("payload").to_string(),
                )
            })
            .collect();
        assert_eq!(ids, sent[r], "{name}: every intent once, in the order sent");
        assert_eq!(stats["handled"], 3 * PER_PHASE as u64, "{name}: {stats}");
        assert!(
            stats["repeats_acked"].as_u64().unwrap_or(0) >= 1
                && stats["repeats_skipped"].as_u64().unwrap_or(0) >= 1,
            "{name}: the forced redelivery was absorbed by the SDK's dedup: {stats}"
        );
        assert!(
            stats["heartbeats"].as_u64().unwrap_or(0) >= 1,
            "{name}: {stats}"
        );
    }
}
