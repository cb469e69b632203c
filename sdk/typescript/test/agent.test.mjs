// The TypeScript SDK against a real secured mesh (nats-server + gateway from `mesh-cli up`).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { connect, credsAuthenticator } from "@nats-io/transport-node";

import { Agent, ConnectError, PermissionDeniedError } from "../dist/index.js";
import { Mesh, Queue, eventually } from "./mesh.mjs";

let mesh;
const open = [];

before(async () => {
  mesh = await Mesh.start();
});

after(async () => {
  for (const a of open) await a.close().catch(() => undefined);
  await mesh?.stop();
});

async function agent(id) {
  const a = await Agent.connect(id, { servers: mesh.url, creds: await mesh.creds(id) });
  open.push(a);
  return a;
}

const text = (bytes) => new TextDecoder().decode(bytes);

test("send and receive: headers, replies, intent ids, JetStream dedup of a resend", async () => {
  const aliceId = mesh.uniqueId("alice");
  const bobId = mesh.uniqueId("bob");
  const alice = await agent(aliceId);
  const bob = await agent(bobId);
  const got = [];
  bob.on("deploy.*", async (intent) => {
    got.push(intent);
    return `deployed ${intent.text()}`;
  });
  bob.on("ping", (intent) => {
    got.push(intent);
    return "pong";
  });
  await bob.start({ heartbeatEveryMs: null });
  const ids = [
    await alice.send(bobId, "deploy.service", "web", { costUsd: 0.25 }),
    await alice.send(bobId, "ping", new TextEncoder().encode("hello")),
    await alice.send(bobId, "deploy.db", "pg", { intentId: `${aliceId}-order-7` }),
  ];
  assert.equal(ids[2], `${aliceId}-order-7`);
  const again = await alice.sendReceipt(bobId, "deploy.db", "pg", { intentId: `${aliceId}-order-7` });
  assert.equal(again.duplicate, true);
  await bob.stats.waitUntil((s) => s.handled >= 3);
  assert.deepEqual(
    got.map((i) => i.intentId),
    ids,
  );
  assert.deepEqual(
    got.map((i) => [i.sender, i.action, i.text(), i.attempt]),
    [
      [aliceId, "deploy.service", "web", 1],
      [aliceId, "ping", "hello", 1],
      [aliceId, "deploy.db", "pg", 1],
    ],
  );
  assert.equal(got[0].headers["Mesh-Intent-Id"], ids[0]);
  assert.equal(bob.stats.repeatsAcked, 0);
  await assert.rejects(alice.send(bobId, "deploy.*", ""), /wildcards/);
  await assert.rejects(alice.send(bobId, "x", "", { costUsd: -1 }), RangeError);
});

test("a forced redelivery is deduplicated: the application sees the intent once", async () => {
  const aliceId = mesh.uniqueId("alice");
  const bobId = mesh.uniqueId("bob");
  const alice = await agent(aliceId);
  const bob = await agent(bobId);
  const calls = [];
  bob.on("work", async (intent) => {
    calls.push(intent.intentId);
    // Answer only after the gateway's request timed out and it delivered again.
    if (calls.length === 1) await bob.stats.waitUntil((s) => s.repeatsSkipped >= 1);
  });
  await bob.start({ heartbeatEveryMs: null });
  const first = await alice.send(bobId, "work", "1");
  await bob.stats.waitUntil((s) => s.repeatsAcked >= 1);
  const second = await alice.send(bobId, "work", "2");
  await bob.stats.waitUntil((s) => s.handled >= 2);
  assert.deepEqual(calls, [first, second]);
});

test("a handler that throws does not acknowledge: the intent comes back", async () => {
  const aliceId = mesh.uniqueId("alice");
  const bobId = mesh.uniqueId("bob");
  const alice = await agent(aliceId);
  const bob = await agent(bobId);
  const seen = [];
  bob.on("flaky.>", (intent) => {
    seen.push(intent.intentId);
    if (seen.length === 1) throw new Error("transient failure");
    return "ok";
  });
  await bob.start({ heartbeatEveryMs: null });
  const sent = await alice.send(bobId, "flaky.job.run", "x");
  await bob.stats.waitUntil((s) => s.handled >= 1);
  assert.equal(bob.stats.failed, 1);
  assert.deepEqual(seen, [sent, sent]);
});

test("a killed sender's intents are rejected with a notice that echoes the reason", async () => {
  const aliceId = mesh.uniqueId("alice");
  const bobId = mesh.uniqueId("bob");
  const alice = await agent(aliceId);
  const bob = await agent(bobId);
  const rejections = new Queue();
  alice.onRejected(rejections.push);
  const got = [];
  bob.on("job", (i) => {
    got.push(i.intentId);
  });
  await alice.start({ heartbeatEveryMs: null });
  await bob.start({ heartbeatEveryMs: null });

  await mesh.kill(aliceId, "deployed 47 of 3");
  const refused = await alice.send(bobId, "job", "nope");
  const r = await rejections.get();
  assert.equal(r.intentId, refused);
  assert.equal(r.status, 403);
  assert.match(r.reason, /deployed 47 of 3/);
  assert.equal(r.subject, `mesh.intent.${aliceId}.${bobId}.job`);

  await mesh.resume(aliceId);
  const ok = await alice.send(bobId, "job", "yes");
  await bob.stats.waitUntil((s) => s.handled >= 1);
  assert.deepEqual(got, [ok]);
  assert.equal(rejections.size, 0);
});

test("a kill notice cancels running handlers; after resume the intent comes back", async () => {
  const aliceId = mesh.uniqueId("alice");
  const bobId = mesh.uniqueId("bob");
  const alice = await agent(aliceId);
  const bob = await agent(bobId);
  const notices = new Queue();
  bob.onControl(notices.push);
  const calls = [];
  let started;
  const running = new Promise((r) => (started = r));
  bob.on("long.task", async (intent) => {
    calls.push(intent.intentId);
    if (calls.length === 1) {
      started();
      // Runs until the kill aborts its signal.
      await new Promise((_, reject) => intent.signal.addEventListener("abort", () => reject(intent.signal.reason)));
    }
    return "done";
  });
  await bob.start({ heartbeatEveryMs: null });
  const sent = await alice.send(bobId, "long.task", "x");
  await running;

  await mesh.kill(bobId, "runaway");
  const killed = await notices.get();
  assert.deepEqual([killed.agent, killed.state, killed.reason, killed.killed], [bobId, "killed", "runaway", true]);
  await bob.stats.waitUntil((s) => s.cancelled >= 1);
  assert.equal(bob.inFlight, 0);
  assert.equal(bob.stats.handled, 0);

  await mesh.resume(bobId);
  const resumed = await notices.get();
  assert.equal(resumed.state, "active");
  await bob.stats.waitUntil((s) => s.handled >= 1);
  assert.deepEqual(calls, [sent, sent]);
});

test("heartbeats carry the instance and the cost, and make the agent healthy in mesh-cli status", async () => {
  const bobId = mesh.uniqueId("bob");
  const op = await connect({
    servers: mesh.url,
    authenticator: credsAuthenticator(readFileSync(mesh.info.operator_creds)),
    inboxPrefix: "_CLI_INBOX",
  });
  try {
    const beats = new Queue();
    op.subscribe(`mesh.hb.${bobId}`, { callback: (_, m) => beats.push(m) });
    await op.flush();
    const bob = await agent(bobId);
    bob.reportCost(0.5);
    bob.reportCost(0.0000001);
    await bob.start({ heartbeatEveryMs: 200, instance: "ts-1" });
    const msg = await beats.get();
    assert.equal(msg.data.length, 0);
    assert.deepEqual([...msg.headers].map(([k, v]) => [k, v[0]]).sort(), [
      ["Mesh-Cost-Total", "0.5000001"],
      ["Mesh-Instance", "ts-1"],
    ]);
    const s = await eventually("health healthy in mesh-cli status", async () => {
      const st = await mesh.status(bobId);
      return st && st.health === "healthy" && st.instances === 1 && st.cost_reported_usd ? st : undefined;
    });
    assert.ok(Math.abs(s.cost_reported_usd - 0.5000001) < 1e-9);
    assert.ok(s.last_heartbeat_unix_ms > 0);
    const before = bob.stats.heartbeats;
    await bob.stop();
    assert.equal(bob.stats.heartbeats, before + 1); // a last heartbeat on a graceful stop
  } finally {
    await op.close();
  }
});

test("a graceful stop finishes in-flight handlers, and what they acknowledged stays acknowledged", async () => {
  const aliceId = mesh.uniqueId("alice");
  const bobId = mesh.uniqueId("bob");
  const alice = await agent(aliceId);
  const bob = await agent(bobId);
  let release;
  const released = new Promise((r) => (release = r));
  let started;
  const running = new Promise((r) => (started = r));
  const done = [];
  bob.on("job", async (intent) => {
    started();
    await released;
    done.push(intent.intentId);
  });
  const serving = bob.run({ heartbeatEveryMs: null, graceMs: 30_000 });
  await bob.waitReady();
  const first = await alice.send(bobId, "job", "1");
  await running;
  bob.requestStop();
  let finished = false;
  serving.then(() => (finished = true));
  await new Promise((r) => setImmediate(r));
  assert.equal(finished, false); // still finishing the handler
  release();
  await serving;
  assert.deepEqual(done, [first]);
  assert.equal(bob.stats.handled, 1);

  const second = await alice.send(bobId, "job", "2");
  const bob2 = await Agent.connect(bobId, { servers: mesh.url, creds: `${mesh.tmp}/${bobId}.creds` });
  open.push(bob2);
  const seen = [];
  bob2.on("job", (i) => {
    seen.push(i.intentId);
  });
  await bob2.start({ heartbeatEveryMs: null });
  await bob2.stats.waitUntil((s) => s.handled >= 1);
  assert.deepEqual(seen, [second]);
});

test("credentials: required, bound to the agent, and revocable", async () => {
  const bobId = mesh.uniqueId("bob");
  const carolId = mesh.uniqueId("carol");
  await assert.rejects(Agent.connect(bobId, { servers: mesh.url, timeoutMs: 2000 }), ConnectError);

  const bobCreds = await mesh.creds(bobId);
  const carol = await Agent.connect(carolId, { servers: mesh.url, creds: bobCreds });
  open.push(carol);
  carol.on("x", () => undefined);
  await assert.rejects(carol.start({ heartbeatEveryMs: null }), PermissionDeniedError);

  const bob = await Agent.connect(bobId, { servers: mesh.url, creds: bobCreds });
  await bob.close();
  await mesh.cliRun("agent", "revoke", bobId);
  await assert.rejects(Agent.connect(bobId, { servers: mesh.url, creds: bobCreds, timeoutMs: 2000 }), ConnectError);
});
