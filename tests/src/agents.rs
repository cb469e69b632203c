//! Agents for tests, on plain async-nats: inbox servers that record every delivery, and senders.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

/// One delivery as an agent instance saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub instance: String,
    pub from: String,
    pub action: String,
    pub intent_id: String,
    pub attempt: u32,
    pub payload: Bytes,
    /// When the instance took it from its subscription (the chaos soak compares it with when a
    /// kill returned).
    pub at: std::time::Instant,
}

/// Deliveries recorded by all instances of one agent, with a counter to await.
#[derive(Clone)]
pub struct Recorder {
    log: Arc<Mutex<Vec<Received>>>,
    count: watch::Sender<usize>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            log: Arc::new(Mutex::new(Vec::new())),
            count: watch::channel(0).0,
        }
    }
}

impl Recorder {
    pub fn all(&self) -> Vec<Received> {
        self.log.lock().expect("recorder lock").clone()
    }

    pub fn len(&self) -> usize {
        *self.count.borrow()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, r: Received) {
        self.log.lock().expect("recorder lock").push(r);
        self.count.send_modify(|c| *c += 1);
    }

    /// A receiver that changes whenever a delivery is recorded, for waits of one's own.
    pub fn count_watch(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// Waits until at least `n` deliveries were recorded.
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        let res = tokio::time::timeout(crate::DEADLINE, rx.wait_for(|c| *c >= n)).await;
        assert!(
            res.is_ok(),
            "timed out waiting for {n} deliveries; have {}",
            self.len()
        );
    }

    /// Waits until `n` distinct intents from `from` were recorded (redeliveries not counted).
    pub async fn wait_unique(&self, from: &str, n: usize) {
        let mut rx = self.count.subscribe();
        let res = tokio::time::timeout(crate::DEADLINE, async {
            while self.payloads_from(from).len() < n {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            res.is_ok(),
            "timed out waiting for {n} distinct intents from {from}; have {}",
            self.payloads_from(from).len()
        );
    }

    /// Asserts that `from`'s intents arrived exactly as `0..n`, in order; on failure shows
    /// where the order broke instead of two long lists.
    pub fn assert_in_order(&self, from: &str, n: usize) {
        let got = self.payloads_from(from);
        let first_bad = got
            .iter()
            .enumerate()
            .find(|(i, p)| **p != i.to_string())
            .map(|(i, _)| i);
        if let Some(i) = first_bad {
            let all = self.all();
            let around: Vec<String> = all
                .iter()
                .filter(|r| r.from == from)
                .skip(i.saturating_sub(3))
                .take(8)
                .map(|r| {
                    format!(
                        "{}@{}#{}",
                        String::from_utf8_lossy(&r.payload),
                        r.instance,
                        r.attempt
                    )
                })
                .collect();
            let missing = i.to_string();
            let late: Vec<String> = all
                .iter()
                .enumerate()
                .filter(|(_, r)| r.from == from && r.payload == missing.as_bytes())
                .map(|(pos, r)| format!("at {pos}: {}@{}#{}", missing, r.instance, r.attempt))
                .collect();
            panic!("order from {from} broke at position {i}: {around:?} (payload@instance#attempt); {missing} arrived {late:?}");
        }
        assert_eq!(
            got.len(),
            n,
            "intents from {from}: got {}, want {n}",
            got.len()
        );
    }

    /// Payloads (as strings) from `from`, in delivery order, first delivery of each intent only.
    pub fn payloads_from(&self, from: &str) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.all()
            .into_iter()
            .filter(|r| r.from == from && seen.insert(r.intent_id.clone()))
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
            .collect()
    }
}

/// Serves `agent`'s inbox as instance `instance` (queue group = agent id), recording every
/// delivery into `rec` and replying (acknowledging) unless `reply` is false. Returns once the
/// subscription is registered with the server.
pub async fn serve(
    client: &async_nats::Client,
    agent: &str,
    instance: &str,
    rec: Recorder,
    reply: bool,
) -> tokio::task::JoinHandle<()> {
    serve_slowly(client, agent, instance, rec, reply, Duration::ZERO).await
}

/// Agent `id` with credentials of its own, connected to the server at `url` (the hub's or a
/// region's) and served as `instance` like [`serve`]; returns what it records and its task.
pub async fn serve_at(
    mesh: &crate::Mesh,
    url: &str,
    id: &str,
    instance: &str,
) -> (Recorder, tokio::task::JoinHandle<()>) {
    let rec = Recorder::default();
    let client = mesh.agent_at(url, id).await;
    let task = serve(&client, id, instance, rec.clone(), true).await;
    (rec, task)
}

/// [`serve`], with an agent that works `delay` on each delivery before it replies (one at a
/// time), so that a gateway holds a queue for it.
pub async fn serve_slowly(
    client: &async_nats::Client,
    agent: &str,
    instance: &str,
    rec: Recorder,
    reply: bool,
    delay: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut sub = client
        .queue_subscribe(format!("mesh.agent.{agent}.inbox"), agent.to_string())
        .await
        .expect("subscribe inbox");
    crate::registered(client).await;
    let client = client.clone();
    let instance = instance.to_string();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let h = msg.headers.clone().unwrap_or_default();
            let get = |k: &str| h.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
            rec.push(Received {
                at: std::time::Instant::now(),
                instance: instance.clone(),
                from: get("Mesh-From"),
                action: get("Mesh-Action"),
                intent_id: get("Mesh-Intent-Id"),
                attempt: get("Mesh-Attempt").parse().unwrap_or(0),
                payload: msg.payload.clone(),
            });
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if reply {
                if let Some(r) = msg.reply {
                    let _ = client.publish(r, Bytes::new()).await;
                }
            }
        }
    })
}

/// Publishes an intent through JetStream and waits for the PubAck.
pub async fn send(
    js: &jetstream::Context,
    from: &str,
    to: &str,
    action: &str,
    payload: impl Into<Bytes>,
) -> Result<u64, String> {
    let ack = js
        .publish(format!("mesh.intent.{from}.{to}.{action}"), payload.into())
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(|a| a.sequence).map_err(|e| e.to_string())
}

/// Publishes an intent with headers and waits for the PubAck.
pub async fn send_with(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: impl Into<Bytes>,
) -> Result<u64, String> {
    let ack = js
        .publish_with_headers(subject.to_string(), headers, payload.into())
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(|a| a.sequence).map_err(|e| e.to_string())
}

/// Publishes one intent with `Nats-Msg-Id: msg_id` until it is acknowledged, as a sender that
/// must not lose work does: a publish that gets no PubAck (no answer within `js`'s timeout,
/// no responders) is sent again with the same id, so a copy stored before its ack was lost is
/// not stored twice (JetStream's duplicate window). Counts every publish in `attempts` and
/// returns the stream sequence. Gives up after `DEADLINE`.
pub async fn send_until_stored(
    js: &jetstream::Context,
    [from, to, action]: [&str; 3],
    msg_id: &str,
    payload: impl Into<Bytes>,
    attempts: &std::sync::atomic::AtomicUsize,
) -> u64 {
    let subject = format!("mesh.intent.{from}.{to}.{action}");
    let payload = payload.into();
    let started = std::time::Instant::now();
    loop {
        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut headers = HeaderMap::new();
        headers.insert(mesh_schemas::headers::NATS_MSG_ID, msg_id);
        match send_with(js, &subject, headers, payload.clone()).await {
            Ok(seq) => return seq,
            Err(e) => {
                assert!(
                    started.elapsed() < crate::DEADLINE,
                    "intent {msg_id} not stored within the deadline: {e}"
                );
                // Without responders the publish fails at once: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Collects rejection notices sent to `agent` (headers `Mesh-Status`, `Mesh-Reason`,
/// `Mesh-Intent-Id`).
pub async fn rejections(client: &async_nats::Client, agent: &str) -> Rejections {
    let mut sub = client
        .subscribe(format!("mesh.agent.{agent}.rejected"))
        .await
        .expect("subscribe rejections");
    crate::registered(client).await;
    let out = Rejections::default();
    let sink = out.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let h = msg.headers.clone().unwrap_or_default();
            let get = |k: &str| h.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
            sink.push((
                get("Mesh-Status").parse().unwrap_or(0),
                get("Mesh-Reason"),
                get("Mesh-Intent-Id"),
            ));
        }
    });
    out
}

/// Rejection notices: (status, reason, intent id).
#[derive(Clone)]
pub struct Rejections {
    log: Arc<Mutex<Vec<(u16, String, String)>>>,
    count: watch::Sender<usize>,
}

impl Default for Rejections {
    fn default() -> Self {
        Rejections {
            log: Arc::new(Mutex::new(Vec::new())),
            count: watch::channel(0).0,
        }
    }
}

impl Rejections {
    fn push(&self, r: (u16, String, String)) {
        self.log.lock().expect("lock").push(r);
        self.count.send_modify(|c| *c += 1);
    }

    pub fn all(&self) -> Vec<(u16, String, String)> {
        self.log.lock().expect("lock").clone()
    }

    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        let res = tokio::time::timeout(crate::DEADLINE, rx.wait_for(|c| *c >= n)).await;
        assert!(
            res.is_ok(),
            "timed out waiting for {n} rejection notices; have {}",
            self.all().len()
        );
    }
}

/// Publishes `from → to` intents with `action`, numbered from 0, as fast as PubAcks allow until
/// `stop`; `sent` counts those stored.
pub fn flood(
    js: jetstream::Context,
    from: &str,
    to: &str,
    action: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    flood_within(js, [from, to, action], stop, sent, None)
}

/// Like [`flood`], but with `window = Some((rec, n))` it stores a new intent only while fewer
/// than `n` are stored and not yet recorded by `rec` (delivered, or held while the recipient is
/// killed): load that follows the recipient instead of outrunning it.
pub fn flood_within(
    js: jetstream::Context,
    [from, to, action]: [&str; 3],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    window: Option<(Recorder, usize)>,
) -> tokio::task::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    let (from, to, action) = (from.to_string(), to.to_string(), action.to_string());
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let n = sent.load(Ordering::SeqCst);
            if let Some((rec, size)) = &window {
                let mut count = rec.count_watch();
                let room = count.wait_for(|c| n < c + size);
                // Checked again at least every 10 ms, so that `stop` ends a full window too.
                if tokio::time::timeout(std::time::Duration::from_millis(10), room)
                    .await
                    .is_err()
                {
                    continue;
                }
            }
            send(&js, &from, &to, &action, format!("{n}"))
                .await
                .expect("publish intent");
            sent.fetch_add(1, Ordering::SeqCst);
        }
    })
}
