// A TypeScript agent for the cross-language test (tests/mesh/sdk.rs), on the @agent-mesh/agent SDK
// (built by scripts/ts-env). The same protocol as agent.py: env MESH_AGENT_ID, MESH_NATS_URL,
// MESH_AGENT_CREDS; JSON lines `ready`, `intent`, `stopped`; `job.slow` answers only after the
// gateway delivered it again.

import { Agent } from "../../sdk/typescript/dist/index.js";

const emit = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");

const agent = await Agent.connect(process.env.MESH_AGENT_ID, {
  servers: process.env.MESH_NATS_URL,
  creds: process.env.MESH_AGENT_CREDS,
});
agent.on("job.>", async (intent) => {
  if (intent.action === "job.slow") await agent.stats.waitUntil((s) => s.repeatsSkipped >= 1, 60_000);
  emit({ event: "intent", id: intent.intentId, sender: intent.sender, action: intent.action, payload: intent.text() });
  return "ok";
});
const serving = agent.run({ heartbeatEveryMs: 1000, instance: "ts-1", stopSignals: ["SIGTERM", "SIGINT"] });
await agent.waitReady();
emit({ event: "ready" });
await serving;
const s = agent.stats;
emit({ event: "stopped", handled: s.handled, repeats_acked: s.repeatsAcked, repeats_skipped: s.repeatsSkipped, heartbeats: s.heartbeats });
await agent.close();
