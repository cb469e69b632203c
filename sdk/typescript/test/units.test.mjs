// The parts that need no server: dedup memory, action globs, number formats, header parsing.

import { test } from "node:test";
import assert from "node:assert/strict";
import { encode } from "@msgpack/msgpack";

import { Recent, actionMatches, formatUsd, headerSafe, parseIntent, parseRejection, validateAction } from "../dist/index.js";

test("dedup: new, then in progress, then acknowledged, per sender", () => {
  const r = new Recent(4);
  const k = (s, i) => Recent.key(s, i);
  assert.equal(r.claim(k("a", "1")), "new");
  assert.equal(r.claim(k("a", "1")), "in_progress");
  r.ack(k("a", "1"));
  assert.equal(r.claim(k("a", "1")), "acked");
  assert.equal(r.claim(k("b", "1")), "new");
  r.release(k("b", "1"));
  assert.equal(r.claim(k("b", "1")), "new");
});

test("dedup memory is bounded and forgets the oldest", () => {
  const r = new Recent(3);
  for (let i = 0; i < 5; i++) {
    assert.equal(r.claim(Recent.key("a", String(i))), "new");
    r.ack(Recent.key("a", String(i)));
  }
  assert.equal(r.size, 3);
  assert.equal(r.claim(Recent.key("a", "0")), "new");
  assert.equal(r.claim(Recent.key("a", "4")), "acked");
  const z = new Recent(0);
  z.claim("a 1");
  z.ack("a 1");
  assert.equal(z.claim("a 1"), "new");
});

test("action globs match tokens like the policies", () => {
  assert.ok(actionMatches("deploy.*", "deploy.service"));
  assert.ok(!actionMatches("deploy.*", "deploy.service.eu"));
  assert.ok(actionMatches("deploy.>", "deploy.service.eu"));
  assert.ok(!actionMatches("deploy.>", "deploy"));
  assert.ok(actionMatches("read", "read") && !actionMatches("read", "write"));
  for (const bad of ["", ".a", "a.", "a..b", "deploy.*", "a b"]) assert.throws(() => validateAction(bad));
});

test("costs print as Rust prints f64", () => {
  assert.equal(formatUsd(0.25), "0.25");
  assert.equal(formatUsd(0), "0");
  assert.equal(formatUsd(1), "1");
  assert.equal(formatUsd(0.0000001), "0.0000001");
  assert.equal(formatUsd(1e21), "1000000000000000000000");
  assert.equal(formatUsd(1.5e-7), "0.00000015");
});

test("instance ids fit in a header", () => {
  assert.equal(headerSafe("pod-7"), "pod-7");
  assert.equal(headerSafe("a\r\nb"), "a__b");
  assert.notEqual(headerSafe("  "), "");
  const long = headerSafe("é".repeat(100));
  assert.equal(new TextEncoder().encode(long).length, 128);
});

test("deliveries need the gateway headers", () => {
  const h = { "Mesh-Intent-Id": "i-1", "Mesh-From": "alice", "Mesh-Action": "deploy.service", "Mesh-Attempt": "2" };
  const i = parseIntent(h, new Uint8Array());
  assert.deepEqual([i.intentId, i.sender, i.action, i.attempt, i.isRedelivery], ["i-1", "alice", "deploy.service", 2, true]);
  for (const name of Object.keys(h)) {
    const rest = { ...h };
    delete rest[name];
    assert.throws(() => parseIntent(rest, new Uint8Array()));
  }
  for (const [name, bad] of [["Mesh-From", "a.b"], ["Mesh-Action", "deploy.*"], ["Mesh-Attempt", "0"], ["Mesh-Attempt", "two"]]) {
    assert.throws(() => parseIntent({ ...h, [name]: bad }, new Uint8Array()));
  }
});

test("rejections read headers first, then the MessagePack body", () => {
  const body = encode({ intent_id: "i-1", subject: "mesh.intent.a.b.x", status: 429, reason: "over 10/s", at_unix_ms: 1 });
  assert.deepEqual(parseRejection({}, body), { intentId: "i-1", status: 429, reason: "over 10/s", subject: "mesh.intent.a.b.x" });
  const r = parseRejection({ "Mesh-Status": "403", "Mesh-Reason": "killed", "Mesh-Intent-Id": "i-9" }, body);
  assert.deepEqual([r.intentId, r.status, r.reason], ["i-9", 403, "killed"]);
  assert.equal(parseRejection({}, new TextEncoder().encode("garbage")), undefined);
  assert.equal(parseRejection({ "Mesh-Status": "403" }, new Uint8Array()), undefined);
});
