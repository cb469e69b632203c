//! `mesh-cli policy set` through the loss of the policy bucket's leader (issue 10): run the
//! moment that node is SIGKILLed, it retries each step within its `--timeout` as `kill` does,
//! instead of failing at the first request that finds no leader, and the policy reads back.

use mesh_tests::cli::{finished, mesh_cli, shown};
use mesh_tests::gateways::{wait_live, GatewayProcess};
use mesh_tests::node_loss::{leader_of, r3_cluster};
use mesh_tests::{connect, init_tracing};

/// Runs `mesh-cli --json <args>` against every node; returns its exit code and output.
async fn cli(urls: &str, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = finished(mesh_cli(urls, &all)).await;
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, shown(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_set_lands_through_the_loss_of_the_policy_buckets_leader() {
    init_tracing();
    let (cluster, urls, js) = r3_cluster().await;
    let all = urls.join(",");
    let lost = leader_of(&js, "KV_mesh-policy").await;
    let kept = (lost + 1) % 3;
    let _gw = GatewayProcess::start_with(&urls[kept], "gw1", &[("MESH_REPLICAS", "3")]);
    wait_live(&connect(&urls[kept]).await, &["gw1"]).await;

    tokio::task::block_in_place(|| cluster.node(lost).kill());
    let (code, set, output) = cli(
        &all,
        &[
            "policy",
            "set",
            "worker",
            "--max-intents-per-day",
            "4242",
            "--timeout",
            "40s",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "mesh-cli policy set: {output}");
    assert_eq!(set["to"]["max_intents_per_day"], 4242, "{set}");

    let (code, got, output) = cli(&all, &["policy", "get", "worker"]).await;
    assert_eq!(code, Some(0), "mesh-cli policy get: {output}");
    assert_eq!(
        got["policy"]["record"]["policy"]["max_intents_per_day"], 4242,
        "{got}"
    );
    assert_eq!(got["policy"]["revision"], set["revision"], "{got} {set}");
}
