//! Bad input: bad ids and subjects, malformed headers, oversized payloads, garbage kill records.
//! Each gets a clear error or a recorded 400, and nothing is lost or delivered by mistake.

use async_nats::HeaderMap;
use mesh_schemas::AuditKind;
use mesh_tests::agents::{self, Recorder};
use mesh_tests::gateways::one_gateway;
use mesh_tests::{eventually, operator};

#[tokio::test]
async fn an_intent_without_an_action_or_over_the_size_limit_fails_at_the_sender() {
    let (mesh, gw, _operator) = one_gateway().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    let no_action = agents::send_with(&js, "mesh.intent.A.B", HeaderMap::new(), "x").await;
    assert!(
        no_action.is_err(),
        "a subject without an action is not captured"
    );
    let big = vec![b'x'; 1024 * 1024 + 1];
    let oversized = agents::send(&js, "A", "B", "work", big).await;
    let err = oversized.expect_err("an oversized intent is refused by the stream");
    assert!(
        err.to_lowercase().contains("size") || err.to_lowercase().contains("payload"),
        "{err}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_ids_and_malformed_headers_are_rejected_400_with_a_record() {
    let (mesh, gw, client) = one_gateway().await;
    let js = async_nats::jetstream::new(mesh.agent("A").await);
    let rec = Recorder::default();
    let _b = agents::serve(&mesh.agent("B").await, "B", "b1", rec.clone(), true).await;
    let notices = agents::rejections(&mesh.agent("A").await, "A").await;

    // A sender id that is not a valid agent id. No credentials can be issued to it, so only a
    // trusted identity (the operator, allowed all of `mesh.>`) can put it on the wire; the
    // gateway must still refuse it.
    let js_trusted = async_nats::jetstream::new(client.clone());
    agents::send(&js_trusted, "bad$id", "B", "work", "1")
        .await
        .expect("publish");
    // A recipient id that is not valid: the intent can never be routed.
    agents::send(&js, "A", &"r".repeat(65), "work", "2")
        .await
        .expect("publish");
    // A cost that is not a number.
    let mut h = HeaderMap::new();
    h.insert("Mesh-Cost", "ten dollars");
    agents::send_with(&js, "mesh.intent.A.B.work", h, "3")
        .await
        .expect("publish");
    // And one good intent, so we know B's worker has processed what came before it.
    agents::send(&js, "A", "B", "work", "ok")
        .await
        .expect("publish");

    rec.wait_for(1).await;
    notices.wait_for(2).await;
    assert_eq!(rec.payloads_from("A"), vec!["ok".to_string()]);
    assert!(rec.all().iter().all(|r| r.from != "bad$id"));
    let got = notices.all();
    assert!(got.iter().all(|(status, _, _)| *status == 400), "{got:?}");
    assert!(
        got.iter()
            .any(|(_, reason, _)| reason.contains("Mesh-Cost")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|(_, reason, _)| reason.contains("recipient")),
        "{got:?}"
    );

    eventually("three rejection records", || {
        let client = client.clone();
        async move {
            let events = operator::audit_events(&client).await;
            events
                .iter()
                .filter(|e| e.kind == AuditKind::Reject)
                .count()
                >= 3
        }
    })
    .await;
    let events = operator::audit_events(&client).await;
    let rejects: Vec<_> = events
        .iter()
        .filter(|e| e.kind == AuditKind::Reject)
        .collect();
    assert_eq!(rejects.len(), 3);
    assert!(rejects.iter().all(|e| e.status == Some(400)));
    assert!(rejects.iter().any(|e| e.agent == "_invalid"));
    gw.stop().await;
}

#[tokio::test]
async fn a_garbage_kill_record_fails_closed_for_that_agent_and_says_why() {
    let (mesh, gw, client) = one_gateway().await;
    let js = async_nats::jetstream::new(client.clone());
    let kv = js.get_key_value("mesh-kill").await.expect("kill bucket");
    kv.put("G", bytes::Bytes::from_static(b"\xc1\xff not a record"))
        .await
        .expect("put garbage");

    let g = mesh.agent("G").await;
    let to_g = Recorder::default();
    let _g = agents::serve(&g, "G", "g1", to_g.clone(), true).await;
    let to_h = Recorder::default();
    let _h = agents::serve(&mesh.agent("H").await, "H", "h1", to_h.clone(), true).await;
    let notices = agents::rejections(&g, "G").await;

    agents::send(&async_nats::jetstream::new(g), "G", "H", "work", "from-g")
        .await
        .expect("publish");
    let js_h = async_nats::jetstream::new(mesh.agent("H").await);
    agents::send(&js_h, "H", "G", "work", "to-g")
        .await
        .expect("publish");
    let js_x = async_nats::jetstream::new(mesh.agent("X").await);
    agents::send(&js_x, "X", "H", "work", "marker")
        .await
        .expect("publish");

    notices.wait_for(1).await;
    let (status, reason, _) = notices.all()[0].clone();
    assert_eq!(status, 403);
    assert!(reason.contains("unreadable"), "{reason}");
    to_h.wait_for(1).await;
    assert_eq!(
        to_h.payloads_from("G"),
        Vec::<String>::new(),
        "nothing left G"
    );
    assert!(to_g.is_empty(), "nothing reached G");

    // An operator rewrites the flag: G is delivered what waited for it.
    operator::resume(&client, "G").await;
    to_g.wait_for(1).await;
    assert_eq!(to_g.payloads_from("H"), vec!["to-g".to_string()]);
    gw.stop().await;
}
