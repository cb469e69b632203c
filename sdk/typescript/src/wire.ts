// The contract's names, header rules and record formats, as the Rust `mesh-agent` uses them.

import { decode as decodeMsgpack } from "@msgpack/msgpack";
import { nuid } from "@nats-io/nuid";

export const NATS_MSG_ID = "Nats-Msg-Id";
export const MESH_COST = "Mesh-Cost";
export const MESH_INTENT_ID = "Mesh-Intent-Id";
export const MESH_FROM = "Mesh-From";
export const MESH_ACTION = "Mesh-Action";
export const MESH_ATTEMPT = "Mesh-Attempt";
export const MESH_STATUS = "Mesh-Status";
export const MESH_REASON = "Mesh-Reason";
export const MESH_INSTANCE = "Mesh-Instance";
export const MESH_COST_TOTAL = "Mesh-Cost-Total";

/** Longest accepted `Nats-Msg-Id`, in bytes. */
export const MAX_MSG_ID_LEN = 256;
/** Longest `Mesh-Instance`, in bytes; the gateways ignore heartbeats with a longer one. */
export const MAX_INSTANCE_LEN = 128;

const AGENT_ID = /^[A-Za-z0-9_-]{1,64}$/;
const PREFIX_TOKEN = /^[A-Za-z0-9_-]+$/;
// Unicode category Cc, as Rust's char::is_control.
const CONTROL = /\p{Cc}/u;
const WHITESPACE = /\s/u;

/** A fresh unique id (a NUID, as `mesh-agent` uses). */
export function newId(): string {
  return nuid.next();
}

/** An agent id, action, glob or subject prefix that is not valid on the mesh. */
export class InvalidNameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "InvalidNameError";
  }
}

/** Checks that `id` is 1 to 64 characters of `A-Z a-z 0-9 _ -`. */
export function validateAgentId(id: string): string {
  if (typeof id !== "string" || !AGENT_ID.test(id)) {
    throw new InvalidNameError(`agent id ${JSON.stringify(id)} is not valid: use 1 to 64 characters of A-Z a-z 0-9 _ -`);
  }
  return id;
}

/** Checks that `action` is one or more non-empty subject tokens without wildcards or spaces. */
export function validateAction(action: string): string {
  if (typeof action !== "string" || action === "") {
    throw new InvalidNameError("action is empty; use one or more dot-separated tokens, e.g. deploy.service");
  }
  for (const ch of action) {
    if (ch === "*" || ch === ">" || WHITESPACE.test(ch) || CONTROL.test(ch)) {
      throw new InvalidNameError(
        `action ${JSON.stringify(action)} contains ${JSON.stringify(ch)}; wildcards, spaces and control characters are not allowed`,
      );
    }
  }
  if (action.split(".").some((t) => t === "")) {
    throw new InvalidNameError(`action ${JSON.stringify(action)} has an empty token (a leading, trailing or double dot)`);
  }
  return action;
}

/** Checks a subject prefix such as `mesh`. */
export function validatePrefix(prefix: string): string {
  if (!prefix || !prefix.split(".").every((t) => PREFIX_TOKEN.test(t))) {
    throw new InvalidNameError(`subject prefix ${JSON.stringify(prefix)} is not valid: dot-separated tokens of A-Z a-z 0-9 _ -`);
  }
  return prefix;
}

/** Checks an action glob: tokens, `*` for one token, `>` (last) for one or more. */
export function validateGlob(glob: string): string {
  const tokens = typeof glob === "string" ? glob.split(".") : [""];
  const bad =
    glob === "" ||
    tokens.some((t) => t === "" || WHITESPACE.test(t)) ||
    tokens.slice(0, -1).includes(">") ||
    tokens.some((t) => t.length > 1 && (t.includes("*") || t.includes(">")));
  if (bad) {
    throw new InvalidNameError(
      `action glob ${JSON.stringify(glob)} is not valid: dot-separated tokens, '*' for one token, '>' as the last token for one or more`,
    );
  }
  return glob;
}

/** Whether `action` matches `glob` (the same rule as the policies' action globs). */
export function actionMatches(glob: string, action: string): boolean {
  const g = glob.split(".");
  const a = action.split(".");
  for (let i = 0; i < g.length; i++) {
    if (i >= a.length) return false;
    if (g[i] === ">") return true;
    if (g[i] !== "*" && g[i] !== a[i]) return false;
  }
  return g.length === a.length;
}

/** A plain decimal, as Rust prints an `f64` (`0.25`, `1`, `0.0000001`): never an exponent. */
export function formatUsd(value: number): string {
  const s = String(value);
  if (!/e/i.test(s)) return s;
  const [mantissa, expText] = s.toLowerCase().split("e");
  const exp = Number(expText);
  let [int, frac = ""] = mantissa.split(".");
  const negative = int.startsWith("-");
  if (negative) int = int.slice(1);
  const digits = int + frac;
  const point = int.length + exp;
  let out: string;
  if (point <= 0) out = "0." + "0".repeat(-point) + digits;
  else if (point >= digits.length) out = digits + "0".repeat(point - digits.length);
  else out = digits.slice(0, point) + "." + digits.slice(point);
  return (negative ? "-" : "") + out;
}

/** Checks a cost: a finite, non-negative number of USD. */
export function checkUsd(value: number): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`cost ${value} is not a finite, non-negative number of USD`);
  }
  return value;
}

/** An instance id that fits in a header value (as `mesh-agent` cleans it). */
export function headerSafe(instance: string): string {
  const enc = new TextEncoder();
  let out = "";
  let size = 0;
  for (let ch of instance.trim()) {
    if (CONTROL.test(ch)) ch = "_";
    const n = enc.encode(ch).length;
    if (size + n > MAX_INSTANCE_LEN) break;
    out += ch;
    size += n;
  }
  return out || newId();
}

/** Decodes a mesh record: MessagePack (a map with field names), or JSON when it starts with `{`. */
export function decodeRecord(data: Uint8Array): Record<string, unknown> | undefined {
  let i = 0;
  while (i < data.length && (data[i] === 0x20 || data[i] === 0x0a || data[i] === 0x0d || data[i] === 0x09)) i++;
  if (i >= data.length) return undefined;
  try {
    const value = data[i] === 0x7b ? JSON.parse(new TextDecoder().decode(data)) : decodeMsgpack(data);
    return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The subjects of one mesh (default prefix `mesh`). */
export class Subjects {
  readonly prefix: string;
  constructor(prefix = "mesh") {
    this.prefix = validatePrefix(prefix);
  }
  intent(from: string, to: string, action: string): string {
    return `${this.prefix}.intent.${from}.${to}.${action}`;
  }
  inbox(id: string): string {
    return `${this.prefix}.agent.${id}.inbox`;
  }
  rejected(id: string): string {
    return `${this.prefix}.agent.${id}.rejected`;
  }
  control(id: string): string {
    return `${this.prefix}.agent.${id}.control`;
  }
  heartbeat(id: string): string {
    return `${this.prefix}.hb.${id}`;
  }
}

/**
 * The bounded memory of one inbox, with the rules of `mesh-agent`'s `dedupe.rs`: a repeat of an
 * acknowledged intent is acknowledged again and not handed over; a repeat of an intent still
 * being handled is ignored; the last `capacity` acknowledged ids are kept, oldest forgotten
 * first; keys are (sender, intent id).
 */
export class Recent {
  readonly capacity: number;
  private acked = new Map<string, true>();
  private inProgress = new Set<string>();

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 0) throw new RangeError("dedupe capacity must be an integer, 0 or more");
    this.capacity = capacity;
  }

  static key(sender: string, intentId: string): string {
    // A sender id never contains a space.
    return `${sender} ${intentId}`;
  }

  /** Classifies `key`, marking it in progress when it is new. */
  claim(key: string): "new" | "acked" | "in_progress" {
    if (this.acked.has(key)) return "acked";
    if (this.inProgress.has(key)) return "in_progress";
    this.inProgress.add(key);
    return "new";
  }

  /** Records that `key` was acknowledged. */
  ack(key: string): void {
    this.inProgress.delete(key);
    if (this.capacity === 0 || this.acked.has(key)) return;
    while (this.acked.size >= this.capacity) {
      const oldest = this.acked.keys().next().value as string;
      this.acked.delete(oldest);
    }
    this.acked.set(key, true);
  }

  /** Forgets that `key` is in progress (its handling ended without an acknowledgement). */
  release(key: string): void {
    this.inProgress.delete(key);
  }

  get size(): number {
    return this.acked.size;
  }
}
