// An example agent on the TypeScript SDK (sdk/typescript): it deploys what it is asked to, asks
// `infra` for a DNS record after each deployment, reports what it spends, and stops cleanly on
// Ctrl-C.
//
//   scripts/ts-env                                  # npm ci + build of sdk/typescript
//   mesh-cli up                                     # prints the export line; run it
//   mesh-cli agent add deployer --out deployer.creds
//   node examples/typescript/agent.mjs deployer deployer.creds
//
// In your own project: `npm install ./sdk/typescript` (or the published package) and
// `import { Agent } from "@agent-mesh/agent"`.

import { setTimeout as delay } from "node:timers/promises";
import { Agent } from "../../sdk/typescript/dist/index.js";

const [agentId, creds] = process.argv.slice(2);
if (!agentId || !creds) {
  console.error("usage: agent.mjs <agent id> <creds file>");
  process.exit(2);
}
const servers = process.env.MESH_NATS_URL ?? "nats://127.0.0.1:4222";
const agent = await Agent.connect(agentId, { servers, creds });

agent.on("deploy.*", async (intent) => {
  const what = intent.text() || "?";
  console.log(`${intent.sender} asks for ${intent.action} of ${what} (intent ${intent.intentId})`);
  await delay(500, undefined, { signal: intent.signal }); // the real work; aborted if the agent is killed
  agent.reportCost(0.02); // e.g. a model call; carried by the heartbeats
  await agent.send("infra", "dns.create", what, { costUsd: 0.001 });
  return `deployed ${what}`; // the reply acknowledges the intent
});
agent.onRejected((r) => console.log(`intent ${r.intentId} rejected: ${r.status} ${r.reason}`));
agent.onControl((n) => console.log(`${n.state} by ${n.by}: ${n.reason}`));

console.log(`${agentId} serving on ${servers}; Ctrl-C stops`);
await agent.run({ heartbeatEveryMs: 5000, stopSignals: ["SIGINT", "SIGTERM"] });
await agent.close();
