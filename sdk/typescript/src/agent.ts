// The agent: a NATS connection with the agent's inbox prefix, sending, serving, notices, heartbeats.

import { readFileSync, statSync } from "node:fs";
import { hostname } from "node:os";
import {
  credsAuthenticator,
  headers as natsHeaders,
  nkeyAuthenticator,
  tokenAuthenticator,
  usernamePasswordAuthenticator,
  type Authenticator,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from "@nats-io/nats-core";
import { connect as natsConnect, type NodeConnectionOptions } from "@nats-io/transport-node";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";

import * as wire from "./wire.js";

/** How many acknowledged intent ids an inbox remembers by default (as `mesh-agent`). */
export const DEFAULT_DEDUPE_CAPACITY = 65_536;
/** The shortest interval between heartbeats, in milliseconds. */
export const MIN_HEARTBEAT_INTERVAL_MS = 10;

/** One intent delivered to this agent (the gateway's headers, parsed). */
export interface Intent {
  /** `Mesh-Intent-Id`: the same on every redelivery of the intent. */
  readonly intentId: string;
  /** `Mesh-From`: the sender (the gateway takes it from the subject, never a header). */
  readonly sender: string;
  /** `Mesh-Action`: one or more tokens, e.g. `deploy.service`. */
  readonly action: string;
  /** `Mesh-Attempt`: which JetStream delivery this is, from 1. */
  readonly attempt: number;
  /** The payload, as the sender sent it. */
  readonly payload: Uint8Array;
  /** All headers of the delivery (the first value of each). */
  readonly headers: Readonly<Record<string, string>>;
  /** Aborted when the handler is cancelled (a kill notice, or a stop past its grace). */
  readonly signal: AbortSignal;
  /** Whether the gateway delivered this intent before. */
  readonly isRedelivery: boolean;
  /** The payload as UTF-8 text. */
  text(): string;
}

/** What a handler may return: the reply that acknowledges the intent. Anything that is not bytes,
 * a string or nothing is sent as JSON. */
export type Reply = Uint8Array | string | undefined | null | void | unknown;
export type Handler = (intent: Intent) => Reply | Promise<Reply>;

/** What a stored intent can be found by. */
export interface SendReceipt {
  /** The intent id (`Nats-Msg-Id`); the recipient sees it as `Mesh-Intent-Id`. */
  intentId: string;
  /** The intent's sequence in the intents stream. */
  streamSeq: number;
  /** True when JetStream already had an intent with this id: nothing new was stored. */
  duplicate: boolean;
}

/** One of this agent's intents that the gateway refused. */
export interface Rejection {
  intentId: string;
  /** 400 invalid, 403 killed or action not allowed, 429 over a limit. */
  status: number;
  /** Why, in words (a kill echoes the kill's reason). */
  reason: string;
  /** The intent's subject; empty when the notice carried only headers. */
  subject: string;
}

/** A kill or resume notice for this agent. */
export interface ControlNotice {
  agent: string;
  /** `killed` or `active`. */
  state: string;
  reason: string;
  by: string;
  atUnixMs: number;
  killed: boolean;
}

export interface SendOptions {
  /** `Mesh-Cost`: USD counted against this agent's cost ceilings. */
  costUsd?: number;
  /** `Nats-Msg-Id`; a fresh NUID by default. Set it to make a retry idempotent. */
  intentId?: string;
  /** How long to wait for JetStream's acknowledgement; 5000 ms by default. */
  timeoutMs?: number;
}

export interface ConnectOptions {
  /** A URL, a comma-separated list or a list; `nats://127.0.0.1:4222` by default. */
  servers?: string | string[];
  /** An agent's `.creds` file (`mesh-cli agent add <id> --out FILE`). */
  creds?: string;
  /** An nkey seed file. */
  nkeySeed?: string;
  user?: string;
  pass?: string;
  token?: string;
  /** TLS options of the NATS client (`{ caFile, certFile, keyFile }`), or `true` for TLS with the system CAs. */
  tls?: NodeConnectionOptions["tls"] | true;
  /** The mesh's subject prefix; `mesh` by default. */
  prefix?: string;
  /** The connection's name; `agent-mesh <id>` by default. */
  name?: string;
  /** How long each server gets to answer; 5000 ms by default. */
  timeoutMs?: number;
  /** Other options for `connect` of `@nats-io/transport-node`. */
  nats?: Partial<NodeConnectionOptions>;
}

export interface ServeOptions {
  /** Heartbeat interval in milliseconds (the first one at once); `null` for none. 5000 by default. */
  heartbeatEveryMs?: number | null;
  /** `Mesh-Instance`: which instance of the agent this is; `<host>-<pid>` by default. */
  instance?: string;
  /** How many acknowledged intent ids to remember; 0 turns deduplication of acknowledged repeats off. */
  dedupeCapacity?: number;
  /** Abort the running handlers' signals when a kill notice arrives; true by default. */
  cancelOnKill?: boolean;
  /** Handlers running at once; 64 by default. */
  maxConcurrency?: number;
}

export interface RunOptions extends ServeOptions {
  /** How long in-flight handlers may take after a stop was asked; 30000 ms by default. */
  graceMs?: number;
  /** Signals that stop the agent gracefully, e.g. `["SIGINT", "SIGTERM"]`; none by default. */
  stopSignals?: NodeJS.Signals[];
}

/** Counters of one agent's inbox, for logs, metrics and tests. */
export class Stats {
  /** Deliveries that reached this instance (repeats included). */
  received = 0;
  /** Intents handed to a handler and acknowledged. */
  handled = 0;
  /** Handler runs that threw (not acknowledged: the intent comes back). */
  failed = 0;
  /** Handler runs cancelled (kill notice, or a stop past its grace; not acknowledged). */
  cancelled = 0;
  /** Repeats of acknowledged intents, acknowledged again without the handler. */
  repeatsAcked = 0;
  /** Repeats of intents still being handled, ignored. */
  repeatsSkipped = 0;
  /** Deliveries whose action no handler matches (not acknowledged: they come back). */
  unhandled = 0;
  /** Messages on the inbox without the gateway's headers or a reply subject (ignored). */
  invalid = 0;
  /** Heartbeats published. */
  heartbeats = 0;

  private waiters = new Set<() => void>();

  /** @internal */
  bump(name: Exclude<keyof Stats, "bump" | "waitUntil">, by = 1): void {
    (this as unknown as Record<string, number>)[name] += by;
    for (const w of [...this.waiters]) w();
  }

  /** Resolves once `predicate(stats)` is true; rejects after `timeoutMs`. */
  waitUntil(predicate: (s: Stats) => boolean, timeoutMs = 30_000): Promise<void> {
    if (predicate(this)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (predicate(this)) {
          this.waiters.delete(check);
          clearTimeout(timer);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${predicate.toString()}`));
      }, timeoutMs);
      this.waiters.add(check);
    });
  }
}

export class MeshError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}
/** The agent could not connect: unreachable, refused credentials, bad settings. */
export class ConnectError extends MeshError {}
/** The server refused a subscription: these credentials are not this agent's. */
export class PermissionDeniedError extends MeshError {}
/** An intent was not stored. `retryable`: sending again with the same `intentId` may succeed. */
export class SendError extends MeshError {
  constructor(
    message: string,
    readonly subject: string,
    readonly intentId: string,
    readonly retryable: boolean,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

function replyBytes(value: unknown): Uint8Array {
  if (value === undefined || value === null) return new Uint8Array();
  if (value instanceof Uint8Array) return value;
  if (typeof value === "string") return new TextEncoder().encode(value);
  return new TextEncoder().encode(JSON.stringify(value));
}

function firstHeaders(h: MsgHdrs | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!h) return out;
  for (const [k, values] of h) {
    if (values.length > 0) out[k] = values[0];
  }
  return out;
}

class Cancelled extends Error {}

interface Running {
  controller: AbortController;
  done: Promise<void>;
}

/**
 * One agent on the mesh: its NATS connection, its id, its handlers.
 *
 * Create it with {@link Agent.connect}, which sets the inbox prefix `_INBOX_<id>` that a secured
 * mesh requires, or wrap a connection made with that `inboxPrefix` yourself.
 */
export class Agent {
  readonly id: string;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly subjects: wire.Subjects;
  readonly stats = new Stats();

  private owns = false;
  private handlers: Array<[string, Handler]> = [];
  private rejectedCallbacks: Array<(r: Rejection) => unknown> = [];
  private controlCallbacks: Array<(n: ControlNotice) => unknown> = [];
  private subs: Subscription[] = [];
  private inboxSub: Subscription | null = null;
  private running = new Set<Running>();
  private recent = new wire.Recent(DEFAULT_DEDUPE_CAPACITY);
  private maxConcurrency = 64;
  private waiting: Array<() => void> = [];
  private active = 0;
  private cancelOnKill = true;
  private costTotal = 0;
  private instanceId = "";
  private hbTimer: NodeJS.Timeout | null = null;
  private started = false;
  private stopping: Promise<void> | null = null;
  private stopRequested: (() => void) | null = null;
  private readyWaiters: Array<() => void> = [];
  private subErrors: Error[] = [];

  constructor(nc: NatsConnection, id: string, options: { prefix?: string } = {}) {
    this.id = wire.validateAgentId(id);
    this.nc = nc;
    this.js = jetstream(nc);
    this.subjects = new wire.Subjects(options.prefix ?? "mesh");
  }

  /**
   * Connects agent `id` with the inbox prefix `_INBOX_<id>` that its permissions allow. Tries
   * each server once; rejects with {@link ConnectError} when none accepts (refused credentials
   * included). Once connected, the client reconnects on its own.
   */
  static async connect(id: string, options: ConnectOptions = {}): Promise<Agent> {
    wire.validateAgentId(id);
    const servers = (Array.isArray(options.servers) ? options.servers : (options.servers ?? "nats://127.0.0.1:4222").split(","))
      .map((s) => s.trim())
      .filter((s) => s !== "");
    if (servers.length === 0) throw new ConnectError("no NATS server URL given");
    const authenticators: Authenticator[] = [];
    const read = (what: string, path: string): Uint8Array => {
      try {
        if (!statSync(path).isFile()) throw new Error("not a file");
        return readFileSync(path);
      } catch (e) {
        throw new ConnectError(`${what} ${path} cannot be read: ${(e as Error).message}`);
      }
    };
    if (options.creds) authenticators.push(credsAuthenticator(read("credentials file", options.creds)));
    if (options.nkeySeed) {
      const seed = new TextDecoder().decode(read("nkey seed file", options.nkeySeed)).trim();
      authenticators.push(nkeyAuthenticator(new TextEncoder().encode(seed)));
    }
    if (options.user !== undefined) authenticators.push(usernamePasswordAuthenticator(options.user, options.pass));
    if (options.token !== undefined) authenticators.push(tokenAuthenticator(options.token));
    const tls = options.tls === true ? {} : options.tls;
    let nc: NatsConnection;
    try {
      nc = await natsConnect({
        servers,
        name: options.name ?? `agent-mesh ${id}`,
        inboxPrefix: `_INBOX_${id}`,
        timeout: options.timeoutMs ?? 5_000,
        maxReconnectAttempts: -1,
        ...(authenticators.length > 0 ? { authenticator: authenticators } : {}),
        ...(tls ? { tls } : {}),
        ...options.nats,
      });
    } catch (e) {
      const err = e as Error;
      const auth = /authori[sz]ation|authentication/i.test(`${err.name} ${err.message}`);
      throw new ConnectError(
        auth
          ? `the server refused the credentials of agent ${id} (${err.message}); issue them with \`mesh-cli agent add\``
          : `could not connect agent ${id} to ${servers.join(", ")}: ${err.message}`,
        { cause: err },
      );
    }
    const agent = new Agent(nc, id, { prefix: options.prefix });
    agent.owns = true;
    return agent;
  }

  /** Stops serving (see {@link stop}) and closes the connection if {@link connect} made it. */
  async close(): Promise<void> {
    await this.stop();
    if (this.owns && !this.nc.isClosed()) {
      try {
        await this.nc.drain();
      } catch {
        await this.nc.close();
      }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ------------------------------------------------------------------ sending

  /** Sends `payload` to agent `to` as `action`; resolves to the intent id once JetStream has stored it. */
  async send(to: string, action: string, payload: Uint8Array | string = new Uint8Array(), options: SendOptions = {}): Promise<string> {
    return (await this.sendReceipt(to, action, payload, options)).intentId;
  }

  /** Like {@link send}, with the stream sequence and whether it was a duplicate. */
  async sendReceipt(to: string, action: string, payload: Uint8Array | string = new Uint8Array(), options: SendOptions = {}): Promise<SendReceipt> {
    wire.validateAgentId(to);
    wire.validateAction(action);
    const intentId = options.intentId ?? wire.newId();
    if (intentId === "" || new TextEncoder().encode(intentId).length > wire.MAX_MSG_ID_LEN) {
      throw new RangeError(`intent id ${JSON.stringify(intentId)} is empty or longer than 256 bytes`);
    }
    const h = natsHeaders();
    if (options.costUsd !== undefined) h.set(wire.MESH_COST, wire.formatUsd(wire.checkUsd(options.costUsd)));
    const subject = this.subjects.intent(this.id, to, action);
    const data = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
    try {
      // msgID sets Nats-Msg-Id.
      const ack = await this.js.publish(subject, data, { msgID: intentId, headers: h, timeout: options.timeoutMs ?? 5_000 });
      return { intentId, streamSeq: ack.seq, duplicate: Boolean(ack.duplicate) };
    } catch (e) {
      const err = e as Error;
      const text = `${err.name} ${err.message}`;
      if (/not enabled|no responders/i.test(text)) {
        throw new SendError(
          `no stream stores ${subject}; start a gateway (or \`mesh-cli up\`) so that the intents stream exists, and check the subject prefix`,
          subject,
          intentId,
          false,
          { cause: err },
        );
      }
      if (/timeout/i.test(text)) {
        const want = `_INBOX_${this.id}`;
        const inbox = (this.nc as unknown as { options?: { inboxPrefix?: string } }).options?.inboxPrefix ?? "_INBOX";
        if (inbox !== want) {
          throw new SendError(
            `intent ${intentId} to ${subject} got no acknowledgement, and this client's inbox prefix is ${JSON.stringify(inbox)}: in a secured mesh an agent receives its PubAcks only on ${JSON.stringify(want)}; connect with that inbox prefix (Agent.connect does)`,
            subject,
            intentId,
            false,
            { cause: err },
          );
        }
      }
      throw new SendError(
        `intent ${intentId} to ${subject} was not acknowledged by JetStream (${err.message}); send it again with the same intent id`,
        subject,
        intentId,
        true,
        { cause: err },
      );
    }
  }

  // ------------------------------------------------------------------ handlers

  /**
   * Registers a handler for intents whose action matches `glob` (`deploy.*`: one token,
   * `deploy.>`: one or more). Its return value is the reply, which acknowledges the intent; a
   * handler that throws does not acknowledge, so the gateway delivers the intent again. The
   * first registered glob that matches wins.
   */
  on(glob: string, handler: Handler): this {
    wire.validateGlob(glob);
    this.handlers.push([glob, handler]);
    return this;
  }

  /** Registers a callback for rejections of this agent's intents. */
  onRejected(callback: (r: Rejection) => unknown): this {
    this.rejectedCallbacks.push(callback);
    return this;
  }

  /** Registers a callback for kill and resume notices. */
  onControl(callback: (n: ControlNotice) => unknown): this {
    this.controlCallbacks.push(callback);
    return this;
  }

  private match(action: string): Handler | undefined {
    return this.handlers.find(([glob]) => wire.actionMatches(glob, action))?.[1];
  }

  // ------------------------------------------------------------------ serving

  /**
   * Subscribes to the control and rejection notices and, when handlers are registered, to the
   * inbox (queue group `<id>`: the agent's instances share the work); starts the heartbeats.
   * Resolves once the server has registered the subscriptions; rejects with
   * {@link PermissionDeniedError} when the server refuses one.
   */
  async start(options: ServeOptions = {}): Promise<void> {
    if (this.started) throw new Error("the agent is already serving");
    const maxConcurrency = options.maxConcurrency ?? 64;
    if (!Number.isInteger(maxConcurrency) || maxConcurrency < 1) throw new RangeError("maxConcurrency must be at least 1");
    this.started = true;
    this.recent = new wire.Recent(options.dedupeCapacity ?? DEFAULT_DEDUPE_CAPACITY);
    this.maxConcurrency = maxConcurrency;
    this.cancelOnKill = options.cancelOnKill ?? true;
    this.subErrors = [];
    const onErr = (err: Error | null) => {
      if (err) this.subErrors.push(err);
    };
    this.subs.push(
      this.nc.subscribe(this.subjects.control(this.id), {
        callback: (err, msg) => (err ? onErr(err) : void this.onControlMsg(msg)),
      }),
      this.nc.subscribe(this.subjects.rejected(this.id), {
        callback: (err, msg) => (err ? onErr(err) : void this.onRejectedMsg(msg)),
      }),
    );
    if (this.handlers.length > 0) {
      this.inboxSub = this.nc.subscribe(this.subjects.inbox(this.id), {
        queue: this.id,
        callback: (err, msg) => (err ? onErr(err) : this.onInboxMsg(msg)),
      });
    }
    // PING/PONG round trips: the server has processed the SUBs; a refused SUB's error may trail
    // the first PONG.
    await this.nc.flush();
    await this.nc.flush();
    if (this.subErrors.length > 0) {
      const first = this.subErrors[0];
      this.unsubscribeAll();
      this.started = false;
      throw new PermissionDeniedError(
        `the server refused agent ${this.id}'s subscriptions (${first.message}); are these the credentials of ${this.id}?`,
        { cause: first },
      );
    }
    if (options.heartbeatEveryMs !== null) {
      const every = Math.max(options.heartbeatEveryMs ?? 5_000, MIN_HEARTBEAT_INTERVAL_MS);
      this.instanceId = wire.headerSafe(options.instance ?? `${hostname()}-${process.pid}`);
      this.heartbeat();
      this.hbTimer = setInterval(() => this.heartbeat(), every);
    }
    for (const w of this.readyWaiters.splice(0)) w();
  }

  /** Resolves once {@link start} (or {@link run}) has subscribed. */
  waitReady(): Promise<void> {
    if (this.started && this.stopping === null && this.subs.length > 0) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  /**
   * Serves until {@link stop} or {@link requestStop} (or one of `stopSignals`), then stops
   * gracefully: no new deliveries, in-flight handlers get `graceMs` to finish, a last heartbeat.
   */
  async run(options: RunOptions = {}): Promise<void> {
    const stopAsked = new Promise<void>((resolve) => {
      this.stopRequested = resolve;
    });
    await this.start(options);
    const signals = options.stopSignals ?? [];
    const onSignal = () => this.requestStop();
    for (const s of signals) process.on(s, onSignal);
    try {
      await stopAsked;
    } finally {
      for (const s of signals) process.off(s, onSignal);
      await this.stop(options.graceMs ?? 30_000);
    }
  }

  /** Asks {@link run} to stop gracefully; returns at once. */
  requestStop(): void {
    this.stopRequested?.();
  }

  /**
   * Stops serving gracefully: leaves the queue group (new deliveries go to other instances, or
   * wait), lets in-flight handlers finish within `graceMs` (the rest are cancelled,
   * unacknowledged, and delivered again), sends a last heartbeat.
   */
  stop(graceMs = 30_000): Promise<void> {
    if (!this.started) return Promise.resolve();
    if (this.stopping) return this.stopping;
    this.requestStop();
    this.stopping = (async () => {
      try {
        if (this.inboxSub) {
          this.inboxSub.unsubscribe();
          this.inboxSub = null;
        }
        const inFlight = [...this.running];
        if (inFlight.length > 0) {
          let timer: NodeJS.Timeout | undefined;
          const timedOut = new Promise<void>((resolve) => {
            timer = setTimeout(resolve, graceMs);
          });
          await Promise.race([Promise.all(inFlight.map((r) => r.done)), timedOut]);
          clearTimeout(timer);
          for (const r of this.running) r.controller.abort(new Cancelled("stopped"));
          await Promise.all([...this.running].map((r) => r.done));
        }
        if (this.hbTimer) {
          clearInterval(this.hbTimer);
          this.hbTimer = null;
          this.heartbeat();
          try {
            await this.nc.flush();
          } catch {
            // closing anyway
          }
        }
        this.unsubscribeAll();
      } finally {
        this.started = false;
        this.stopping = null;
        this.stopRequested = null;
      }
    })();
    return this.stopping;
  }

  private unsubscribeAll(): void {
    const subs = this.subs.splice(0);
    if (this.inboxSub) subs.push(this.inboxSub);
    this.inboxSub = null;
    for (const s of subs) {
      try {
        s.unsubscribe();
      } catch {
        // the connection may be closing
      }
    }
  }

  /** Aborts the running handlers' signals (their intents are not acknowledged and come back);
   * returns how many were running. */
  cancelHandlers(): number {
    const n = this.running.size;
    for (const r of this.running) r.controller.abort(new Cancelled("cancelled"));
    return n;
  }

  /** Handlers running now. */
  get inFlight(): number {
    return this.running.size;
  }

  private onInboxMsg(msg: Msg): void {
    this.stats.bump("received");
    if (!msg.reply) {
      this.stats.bump("invalid");
      console.warn(`agent ${this.id}: ignoring a message without a reply subject: not a delivery from a gateway`);
      return;
    }
    let intentFields: Omit<Intent, "signal" | "text">;
    try {
      intentFields = parseIntent(firstHeaders(msg.headers), msg.data);
    } catch (e) {
      this.stats.bump("invalid");
      console.warn(`agent ${this.id}: ignoring a message that is not a delivery from a gateway: ${(e as Error).message}`);
      return;
    }
    const key = wire.Recent.key(intentFields.sender, intentFields.intentId);
    const seen = this.recent.claim(key);
    if (seen === "acked") {
      try {
        this.nc.publish(msg.reply, new Uint8Array());
      } catch (e) {
        console.warn(`agent ${this.id}: could not re-acknowledge ${intentFields.intentId}: ${(e as Error).message}`);
      }
      this.stats.bump("repeatsAcked");
      return;
    }
    if (seen === "in_progress") {
      this.stats.bump("repeatsSkipped");
      return;
    }
    const handler = this.match(intentFields.action);
    if (!handler) {
      this.recent.release(key);
      this.stats.bump("unhandled");
      console.warn(
        `agent ${this.id}: no handler for action ${intentFields.action} (intent ${intentFields.intentId} from ${intentFields.sender}); not acknowledged, it will be delivered again`,
      );
      return;
    }
    const controller = new AbortController();
    const payload = intentFields.payload;
    const intent: Intent = {
      ...intentFields,
      signal: controller.signal,
      text: () => new TextDecoder().decode(payload),
    };
    const entry: Running = { controller, done: Promise.resolve() };
    this.running.add(entry);
    entry.done = this.handle(handler, intent, msg.reply, key, controller).finally(() => {
      this.running.delete(entry);
    });
  }

  private async acquire(signal: AbortSignal): Promise<void> {
    while (this.active >= this.maxConcurrency) {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
      if (signal.aborted) throw signal.reason;
    }
    this.active++;
  }

  private release(): void {
    this.active--;
    this.waiting.shift()?.();
  }

  private async handle(handler: Handler, intent: Intent, reply: string, key: string, controller: AbortController): Promise<void> {
    let acked = false;
    let slot = false;
    try {
      await this.acquire(controller.signal);
      slot = true;
      const aborted = new Promise<never>((_, reject) => {
        if (controller.signal.aborted) reject(controller.signal.reason);
        controller.signal.addEventListener("abort", () => reject(controller.signal.reason), { once: true });
      });
      aborted.catch(() => undefined);
      let body: Uint8Array;
      try {
        body = replyBytes(await Promise.race([Promise.resolve().then(() => handler(intent)), aborted]));
      } catch (e) {
        if (controller.signal.aborted) {
          this.stats.bump("cancelled");
          return;
        }
        this.stats.bump("failed");
        console.error(
          `agent ${this.id}: handler of ${intent.intentId} (${intent.action} from ${intent.sender}, attempt ${intent.attempt}) threw; not acknowledged, it will be delivered again:`,
          e,
        );
        return;
      }
      if (controller.signal.aborted) {
        this.stats.bump("cancelled");
        return;
      }
      try {
        this.nc.publish(reply, body);
        await this.nc.flush();
      } catch (e) {
        console.warn(`agent ${this.id}: could not acknowledge ${intent.intentId} (${(e as Error).message}); the gateway will deliver it again`);
        return;
      }
      acked = true;
      this.recent.ack(key);
      this.stats.bump("handled");
    } catch (e) {
      if (controller.signal.aborted) this.stats.bump("cancelled");
      else throw e;
    } finally {
      if (!acked) this.recent.release(key);
      if (slot) this.release();
    }
  }

  // ------------------------------------------------------------------ notices

  private async onRejectedMsg(msg: Msg): Promise<void> {
    const r = parseRejection(firstHeaders(msg.headers), msg.data);
    if (!r) {
      console.warn(`agent ${this.id}: ignoring an unreadable rejection notice`);
      return;
    }
    if (this.rejectedCallbacks.length === 0) {
      console.warn(`agent ${this.id}: intent ${r.intentId} rejected: ${r.status} ${r.reason}`);
    }
    for (const cb of this.rejectedCallbacks) {
      try {
        await cb(r);
      } catch (e) {
        console.error(`agent ${this.id}: the rejection callback threw:`, e);
      }
    }
  }

  private async onControlMsg(msg: Msg): Promise<void> {
    const rec = wire.decodeRecord(msg.data);
    if (!rec || typeof rec.state !== "string") {
      console.warn(`agent ${this.id}: ignoring a control notice that cannot be decoded`);
      return;
    }
    const notice: ControlNotice = {
      agent: String(rec.agent ?? this.id),
      state: rec.state,
      reason: String(rec.reason ?? ""),
      by: String(rec.by ?? ""),
      atUnixMs: Number(rec.at_unix_ms ?? 0),
      killed: rec.state === "killed",
    };
    if (notice.killed && this.cancelOnKill) this.cancelHandlers();
    for (const cb of this.controlCallbacks) {
      try {
        await cb(notice);
      } catch (e) {
        console.error(`agent ${this.id}: the control callback threw:`, e);
      }
    }
  }

  // ------------------------------------------------------------------ heartbeats

  /** Adds `usd` to the cumulative cost the heartbeats carry (`Mesh-Cost-Total`); returns the new
   * total. Report each cost once: here or as `costUsd` on an intent, not both. */
  reportCost(usd: number): number {
    this.costTotal += wire.checkUsd(usd);
    return this.costTotal;
  }

  get totalCost(): number {
    return this.costTotal;
  }

  /** The instance id the heartbeats carry (`Mesh-Instance`). */
  get instance(): string {
    return this.instanceId;
  }

  /** Publishes one heartbeat now (the serving loop sends them on its own). Best effort. */
  heartbeat(): void {
    if (!this.instanceId) this.instanceId = wire.headerSafe(`${hostname()}-${process.pid}`);
    const h = natsHeaders();
    h.set(wire.MESH_INSTANCE, this.instanceId);
    h.set(wire.MESH_COST_TOTAL, wire.formatUsd(this.costTotal));
    try {
      this.nc.publish(this.subjects.heartbeat(this.id), new Uint8Array(), { headers: h });
      this.stats.bump("heartbeats");
    } catch (e) {
      console.warn(`agent ${this.id}: could not publish a heartbeat: ${(e as Error).message}`);
    }
  }
}

/** Parses the gateway's headers of a delivery; throws when one is missing or malformed. */
export function parseIntent(h: Record<string, string>, payload: Uint8Array): Omit<Intent, "signal" | "text"> {
  const get = (name: string): string => {
    const v = h[name];
    if (!v) throw new Error(`header ${name} is missing or empty`);
    return v;
  };
  const intentId = get(wire.MESH_INTENT_ID);
  const sender = get(wire.MESH_FROM);
  try {
    wire.validateAgentId(sender);
  } catch {
    throw new Error(`header Mesh-From is not an agent id: ${JSON.stringify(sender)}`);
  }
  const action = get(wire.MESH_ACTION);
  try {
    wire.validateAction(action);
  } catch {
    throw new Error(`header Mesh-Action ${JSON.stringify(action)} is not an action`);
  }
  const attemptText = get(wire.MESH_ATTEMPT);
  const attempt = /^\s*\d+\s*$/.test(attemptText) ? Number(attemptText.trim()) : 0;
  if (!(attempt >= 1)) throw new Error(`header Mesh-Attempt ${JSON.stringify(attemptText)} is not a positive number`);
  return { intentId, sender, action, attempt, payload, headers: h, isRedelivery: attempt > 1 };
}

/** Reads a rejection from the headers, falling back to the MessagePack body (as mesh-agent). */
export function parseRejection(h: Record<string, string>, payload: Uint8Array): Rejection | undefined {
  const body = wire.decodeRecord(payload) ?? {};
  const statusText = (h[wire.MESH_STATUS] ?? "").trim();
  let status: number | undefined = /^\d+$/.test(statusText) ? Number(statusText) : undefined;
  if (status === undefined && typeof body.status === "number") status = body.status;
  const intentId = h[wire.MESH_INTENT_ID] || (typeof body.intent_id === "string" ? body.intent_id : "");
  if (status === undefined || !intentId) return undefined;
  return {
    intentId,
    status,
    reason: h[wire.MESH_REASON] || String(body.reason ?? ""),
    subject: typeof body.subject === "string" ? body.subject : "",
  };
}
