// A real mesh for the suite: `mesh-cli up --json` (a secured nats-server on a free port and one
// gateway) in a temporary directory, stopped at the end. No mocks.
//
// Binaries: AGENT_MESH_CLI (default <repo>/target/debug/mesh-cli, mesh-gateway beside it) and
// MESH_NATS_SERVER (default: scripts/install-nats). The gateway's request timeout is shortened
// to 1 s (MESH_REQUEST_TIMEOUT, which `mesh-cli up` passes on to the gateway), so that
// redeliveries come back quickly.

import { execFile, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { randomBytes } from "node:crypto";

const run = promisify(execFile);
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

let counter = 0;

export class Mesh {
  constructor(info, cli, proc, tmp) {
    this.info = info;
    this.url = info.nats_url;
    this.cli = cli;
    this.proc = proc;
    this.tmp = tmp;
    this.env = {
      ...process.env,
      MESH_NATS_URL: this.url,
      MESH_NATS_CREDS: info.operator_creds,
      MESH_AUTH_DIR: info.auth_dir,
    };
  }

  static async start() {
    const cli = process.env.AGENT_MESH_CLI || join(ROOT, "target", "debug", "mesh-cli");
    if (!existsSync(cli)) throw new Error(`${cli} not found: run \`cargo build -p mesh-cli -p mesh-gateway\` first`);
    const natsServer =
      process.env.MESH_NATS_SERVER || execFileSync(join(ROOT, "scripts", "install-nats"), { encoding: "utf8" }).trim();
    const tmp = mkdtempSync(join(tmpdir(), "agent-mesh-ts-"));
    const env = { ...process.env, MESH_NATS_SERVER: natsServer, MESH_REQUEST_TIMEOUT: "1s" };
    for (const v of ["MESH_NATS_URL", "MESH_NATS_CREDS", "MESH_AUTH_DIR", "MESH_CONFIG"]) delete env[v];
    const log = openSync(join(tmp, "mesh-up.log"), "w");
    const proc = spawn(cli, ["up", "--json", "--dir", join(tmp, "mesh")], { env, stdio: ["ignore", "pipe", log] });
    const info = await new Promise((resolve, reject) => {
      let text = "";
      const timer = setTimeout(() => reject(new Error(`mesh-cli up did not start in time: ${text}`)), 90_000);
      proc.stdout.setEncoding("utf8");
      proc.stdout.on("data", (chunk) => {
        text += chunk;
        try {
          const parsed = JSON.parse(text);
          clearTimeout(timer);
          resolve(parsed);
        } catch {
          // not complete yet
        }
      });
      proc.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`mesh-cli up exited (${code}) before it was ready; see ${tmp}/mesh-up.log`));
      });
    });
    if (info.secured !== true) throw new Error("mesh-cli up must start a secured mesh");
    return new Mesh(info, cli, proc, tmp);
  }

  async stop() {
    if (this.proc.exitCode !== null) return;
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.proc.kill("SIGTERM");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), 30_000);
    await exited;
    clearTimeout(timer);
  }

  /** A fresh agent id, so that tests sharing the mesh never share an agent. */
  uniqueId(stem) {
    counter += 1;
    return `${stem}-${counter}-${randomBytes(3).toString("hex")}`;
  }

  async cliRun(...args) {
    try {
      const { stdout } = await run(this.cli, args, { env: this.env, timeout: 60_000 });
      return stdout;
    } catch (e) {
      throw new Error(`mesh-cli ${args.join(" ")} failed: ${e.stderr || e.message}`);
    }
  }

  /** Issues agent `id`'s credentials (`mesh-cli agent add`) and returns the file. */
  async creds(id) {
    const path = join(this.tmp, `${id}.creds`);
    await this.cliRun("agent", "add", id, "--out", path);
    return path;
  }

  kill(id, reason) {
    return this.cliRun("kill", id, "--reason", reason);
  }

  resume(id) {
    return this.cliRun("resume", id);
  }

  async status(id) {
    const data = JSON.parse(await this.cliRun("status", "--json"));
    const agents = Array.isArray(data) ? data : data.agents;
    return agents.find((a) => a.agent === id);
  }
}

/** Polls an outside view (mesh-cli status) until `check()` resolves to something truthy. */
export async function eventually(what, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A queue of values pushed by callbacks, awaited one at a time. */
export class Queue {
  items = [];
  waiters = [];
  push = (v) => {
    const w = this.waiters.shift();
    if (w) w(v);
    else this.items.push(v);
  };
  get(timeoutMs = 30_000) {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timed out waiting for a value")), timeoutMs);
      this.waiters.push((v) => {
        clearTimeout(timer);
        resolve(v);
      });
    });
  }
  get size() {
    return this.items.length;
  }
}
