// TypeScript client library for agents on Agent Mesh.
//
//   const agent = await Agent.connect("deployer", { servers, creds: "deployer.creds" });
//   await agent.send("infra", "deploy.service", "web", { costUsd: 0.25 });   // the intent id
//   agent.on("deploy.*", async (intent) => "done");                        // the reply acks
//   await agent.run({ heartbeatEveryMs: 5000, stopSignals: ["SIGINT", "SIGTERM"] });
//
// The same wire behaviour as the Rust `mesh-agent` crate: `Nats-Msg-Id` and `Mesh-Cost` on
// intents, deduplication of redeliveries by (Mesh-From, Mesh-Intent-Id) in a bounded memory,
// heartbeats on `<prefix>.hb.<id>` with `Mesh-Instance` and `Mesh-Cost-Total`.

export {
  Agent,
  ConnectError,
  DEFAULT_DEDUPE_CAPACITY,
  MeshError,
  MIN_HEARTBEAT_INTERVAL_MS,
  PermissionDeniedError,
  SendError,
  Stats,
  parseIntent,
  parseRejection,
} from "./agent.js";
export type {
  ConnectOptions,
  ControlNotice,
  Handler,
  Intent,
  Rejection,
  Reply,
  RunOptions,
  SendOptions,
  SendReceipt,
  ServeOptions,
} from "./agent.js";
export {
  InvalidNameError,
  Recent,
  Subjects,
  actionMatches,
  formatUsd,
  headerSafe,
  validateAction,
  validateAgentId,
} from "./wire.js";
