"""The agent: a NATS connection with the agent's inbox prefix, sending, serving, notices, heartbeats."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import signal
import socket
import ssl
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import _wire as wire
from ._dedupe import Key, Recent, Seen
from ._types import ControlNotice, Intent, Rejection, SendReceipt, Stats

log = logging.getLogger("agent_mesh")

#: How many acknowledged intent ids an inbox remembers by default (as `mesh-agent`).
DEFAULT_DEDUPE_CAPACITY = 65_536
#: The shortest interval between heartbeats, in seconds.
MIN_HEARTBEAT_INTERVAL = 0.01

Reply = Union[bytes, bytearray, memoryview, str, None, Any]
Handler = Callable[[Intent], Union[Awaitable[Reply], Reply]]
RejectionCallback = Callable[[Rejection], Union[Awaitable[None], None]]
ControlCallback = Callable[[ControlNotice], Union[Awaitable[None], None]]
F = TypeVar("F", bound=Callable[..., Any])


class MeshError(Exception):
    """Base class of the SDK's errors."""


class ConnectError(MeshError):
    """The agent could not connect: unreachable, refused credentials, bad settings."""


class PermissionDenied(MeshError):
    """The server refused a subscription or publish: these credentials are not this agent's."""


class SendError(MeshError):
    """An intent was not stored. `retryable` says whether sending again with the same intent id
    (`send(..., intent_id=err.intent_id)`) may succeed."""

    def __init__(self, message: str, *, subject: str, intent_id: str, retryable: bool) -> None:
        super().__init__(message)
        self.subject = subject
        self.intent_id = intent_id
        self.retryable = retryable


def _reply_bytes(value: Reply) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _tls_context(ca: Optional[str], cert: Optional[str], key: Optional[str]) -> Optional[ssl.SSLContext]:
    if not (ca or cert):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class Agent:
    """One agent on the mesh: its NATS connection, its id, its handlers.

    Create it with :meth:`Agent.connect` (which sets the inbox prefix `_INBOX_<id>` that a secured
    mesh requires), or wrap a nats-py client you connected yourself with that prefix.
    """

    def __init__(self, nc: Client, agent_id: str, *, prefix: str = "mesh", _owns: bool = False) -> None:
        self.id = wire.validate_agent_id(agent_id)
        self.nc = nc
        self.subjects = wire.Subjects(prefix)
        self.js = nc.jetstream()
        self.stats = Stats()
        self._owns = _owns
        self._errors: List[str] = []
        self._handlers: List[Tuple[str, Handler]] = []
        self._on_rejected: List[RejectionCallback] = []
        self._on_control: List[ControlCallback] = []
        self._subs: List[Subscription] = []
        self._inbox_sub: Optional[Subscription] = None
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._recent = Recent(DEFAULT_DEDUPE_CAPACITY)
        self._sem: Optional[asyncio.Semaphore] = None
        self._cancel_on_kill = True
        self._cost_total = 0.0
        self._instance = ""
        self._hb_task: Optional["asyncio.Task[None]"] = None
        self._hb_stop: Optional[asyncio.Event] = None
        self._started = False
        self._ready = asyncio.Event()
        self._stop_requested: Optional[asyncio.Event] = None
        self._stopped: Optional["asyncio.Future[None]"] = None
        want = f"_INBOX_{self.id}"
        prefix_now = bytes(getattr(nc, "_inbox_prefix", b"")).decode(errors="replace")
        if prefix_now and prefix_now != want:
            log.warning(
                "agent %s: the client's inbox prefix is %r; in a secured mesh its PubAcks and "
                "replies arrive only on %r (Agent.connect sets it)",
                self.id,
                prefix_now,
                want,
            )

    # ----------------------------------------------------------------- connecting

    @classmethod
    async def connect(
        cls,
        agent_id: str,
        servers: Union[str, Sequence[str]] = "nats://127.0.0.1:4222",
        *,
        creds: Optional[Union[str, "os.PathLike[str]"]] = None,
        nkey_seed: Optional[Union[str, "os.PathLike[str]"]] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
        token: Optional[str] = None,
        tls: Optional[ssl.SSLContext] = None,
        tls_ca: Optional[str] = None,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        prefix: str = "mesh",
        name: Optional[str] = None,
        connect_timeout: float = 5.0,
        **nats_options: Any,
    ) -> "Agent":
        """Connects agent `agent_id` with the inbox prefix `_INBOX_<id>` that its permissions allow.

        `servers` is a URL, a comma-separated list or a list. Credentials: a `.creds` file
        (`mesh-cli agent add <id> --out FILE`), an nkey seed file, user and password, or a
        token; TLS from an `ssl.SSLContext` or CA/cert/key files. Tries each server for
        `connect_timeout` seconds; raises :class:`ConnectError` when none accepts (a refused
        credential fails at once). Once connected, the client reconnects on its own.
        Other keyword arguments go to `nats.connect`.
        """
        wire.validate_agent_id(agent_id)
        if isinstance(servers, str):
            servers = [s.strip() for s in servers.split(",") if s.strip()]
        servers = list(servers)
        if not servers:
            raise ConnectError("no NATS server URL given")
        for path in (creds, nkey_seed, tls_ca, tls_cert, tls_key):
            if path is not None and not os.path.isfile(path):
                raise ConnectError(f"{os.fspath(path)} does not exist or is not a file")
        errors: List[BaseException] = []
        auth_failed: "asyncio.Future[BaseException]" = asyncio.get_running_loop().create_future()
        agent_box: List[Agent] = []

        async def on_error(e: Exception) -> None:
            text = str(e)
            if agent_box:
                agent_box[0]._errors.append(text)
            else:
                errors.append(e)
                if isinstance(e, nats.errors.AuthorizationError) or "authorization" in text.lower():
                    if not auth_failed.done():
                        auth_failed.set_result(e)
            if "permissions violation" in text.lower():
                log.warning("agent %s: %s", agent_id, text)
            else:
                log.debug("agent %s: nats: %s", agent_id, text)

        options: Dict[str, Any] = dict(
            servers=servers,
            name=name or f"agent-mesh {agent_id}",
            inbox_prefix=f"_INBOX_{agent_id}",
            connect_timeout=connect_timeout,
            error_cb=on_error,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
        )
        if creds is not None:
            options["user_credentials"] = os.fspath(creds)
        if nkey_seed is not None:
            options["nkeys_seed"] = os.fspath(nkey_seed)
        if user is not None:
            options["user"] = user
            options["password"] = password
        if token is not None:
            options["token"] = token
        ctx = tls or _tls_context(tls_ca, tls_cert, tls_key)
        if ctx is not None:
            options["tls"] = ctx
        options.update(nats_options)

        nc = Client()
        connecting = asyncio.ensure_future(nc.connect(**options))
        deadline = connect_timeout * len(servers) + 1.0
        racing: Set["asyncio.Future[Any]"] = {connecting, auth_failed}
        done, _ = await asyncio.wait(racing, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        if connecting not in done or connecting.exception() is not None:
            connecting.cancel()
            try:
                await nc.close()
            except Exception:  # noqa: BLE001
                pass
            if auth_failed.done():
                raise ConnectError(
                    f"the server refused the credentials of agent {agent_id} ({auth_failed.result()}); "
                    "issue them with `mesh-cli agent add`"
                )
            cause = connecting.exception() if connecting.done() and not connecting.cancelled() else None
            last = cause or (errors[-1] if errors else None)
            raise ConnectError(f"could not connect agent {agent_id} to {', '.join(servers)}: {last or 'timed out'}")
        if not auth_failed.done():
            auth_failed.cancel()
        agent = cls(nc, agent_id, prefix=prefix, _owns=True)
        agent_box.append(agent)
        return agent

    async def close(self) -> None:
        """Stops serving (see :meth:`stop`) and closes the connection if :meth:`connect` made it."""
        await self.stop()
        if self._owns and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                await self.nc.close()

    async def __aenter__(self) -> "Agent":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- sending

    async def send(
        self,
        to: str,
        action: str,
        payload: Union[bytes, str] = b"",
        *,
        cost_usd: Optional[float] = None,
        intent_id: Optional[str] = None,
        timeout: float = 5.0,
    ) -> str:
        """Sends `payload` to agent `to` as `action` and returns the intent id once JetStream has
        stored it. See :meth:`send_receipt`."""
        return (await self.send_receipt(to, action, payload, cost_usd=cost_usd, intent_id=intent_id, timeout=timeout)).intent_id

    async def send_receipt(
        self,
        to: str,
        action: str,
        payload: Union[bytes, str] = b"",
        *,
        cost_usd: Optional[float] = None,
        intent_id: Optional[str] = None,
        timeout: float = 5.0,
    ) -> SendReceipt:
        """Like :meth:`send`, returning the stream sequence and whether it was a duplicate.

        `intent_id` (`Nats-Msg-Id`) defaults to a fresh NUID; set it to make a retry
        idempotent: JetStream stores one intent per id within its two-minute window.
        `cost_usd` sets `Mesh-Cost`, counted against this agent's cost ceilings.
        """
        wire.validate_agent_id(to)
        wire.validate_action(action)
        if intent_id is None:
            intent_id = wire.new_id()
        elif not intent_id or len(intent_id.encode()) > wire.MAX_MSG_ID_LEN:
            raise ValueError(f"intent id {intent_id!r} is empty or longer than 256 bytes")
        headers = {wire.NATS_MSG_ID: intent_id}
        if cost_usd is not None:
            headers[wire.MESH_COST] = wire.format_usd(wire.check_usd(cost_usd))
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        subject = self.subjects.intent(self.id, to, action)
        try:
            ack = await self.js.publish(subject, data, timeout=timeout, headers=headers)
        except nats.js.errors.NoStreamResponseError as e:
            raise SendError(
                f"no stream stores {subject}; start a gateway (or `mesh-cli up`) so that the "
                "intents stream exists, and check the subject prefix",
                subject=subject,
                intent_id=intent_id,
                retryable=False,
            ) from e
        except (asyncio.TimeoutError, nats.errors.TimeoutError) as e:
            want = f"_INBOX_{self.id}"
            have = bytes(getattr(self.nc, "_inbox_prefix", b"")).decode(errors="replace")
            if have and have != want:
                raise SendError(
                    f"intent {intent_id} to {subject} got no acknowledgement, and this client's "
                    f"inbox prefix is {have!r}: in a secured mesh an agent receives its PubAcks "
                    f"only on {want!r}; connect with that inbox prefix (Agent.connect does)",
                    subject=subject,
                    intent_id=intent_id,
                    retryable=False,
                ) from e
            raise SendError(
                f"intent {intent_id} to {subject} was not acknowledged by JetStream; send it "
                "again with the same intent id",
                subject=subject,
                intent_id=intent_id,
                retryable=True,
            ) from e
        except nats.errors.Error as e:
            raise SendError(
                f"intent {intent_id} to {subject} was not stored ({e}); send it again with the "
                "same intent id",
                subject=subject,
                intent_id=intent_id,
                retryable=True,
            ) from e
        return SendReceipt(intent_id=intent_id, stream_seq=ack.seq, duplicate=bool(ack.duplicate))

    # ----------------------------------------------------------------- handlers

    def on(self, action_glob: str, handler: Optional[Handler] = None) -> Any:
        """Registers a handler for intents whose action matches `action_glob` (`deploy.*`: one
        token, `deploy.>`: one or more). Use as a decorator or call with the handler.

        The handler gets an :class:`Intent`; its return value (bytes, str, None, or anything
        JSON-serialisable) is the reply, which acknowledges the intent. A handler that raises
        does not acknowledge: the gateway delivers the intent again. The first registered
        glob that matches wins."""
        wire.validate_glob(action_glob)

        def register(fn: F) -> F:
            self._handlers.append((action_glob, fn))
            return fn

        if handler is not None:
            register(handler)
            return handler
        return register

    def on_rejected(self, callback: F) -> F:
        """Registers a callback for rejections of this agent's intents (usable as a decorator)."""
        self._on_rejected.append(callback)
        return callback

    def on_control(self, callback: F) -> F:
        """Registers a callback for kill and resume notices (usable as a decorator)."""
        self._on_control.append(callback)
        return callback

    def _match(self, action: str) -> Optional[Handler]:
        for glob, fn in self._handlers:
            if wire.action_matches(glob, action):
                return fn
        return None

    # ----------------------------------------------------------------- serving

    async def start(
        self,
        *,
        heartbeat_every: Optional[float] = 5.0,
        instance: Optional[str] = None,
        dedupe_capacity: int = DEFAULT_DEDUPE_CAPACITY,
        cancel_on_kill: bool = True,
        max_concurrency: int = 64,
    ) -> None:
        """Subscribes to the control and rejection notices and, when handlers are registered,
        to the inbox (queue group `<id>`: the agent's instances share the work); starts the
        heartbeats. Returns once the server has registered the subscriptions.

        Raises :class:`PermissionDenied` when the server refuses a subscription (the
        credentials are another agent's)."""
        if self._started:
            raise RuntimeError("the agent is already serving")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._started = True
        self._stop_requested = asyncio.Event()
        self._recent = Recent(dedupe_capacity)
        self._sem = asyncio.Semaphore(max_concurrency)
        self._cancel_on_kill = cancel_on_kill
        errors_before = len(self._errors)
        self._subs.append(await self.nc.subscribe(self.subjects.control(self.id), cb=self._on_control_msg))
        self._subs.append(await self.nc.subscribe(self.subjects.rejected(self.id), cb=self._on_rejected_msg))
        if self._handlers:
            self._inbox_sub = await self.nc.subscribe(self.subjects.inbox(self.id), queue=self.id, cb=self._on_inbox_msg)
        # PING/PONG round trips: the server has processed the SUBs by the first PONG; a refused
        # SUB's -ERR may trail it, so a second round trip lets it arrive.
        await self.nc.flush()
        await self.nc.flush()
        refused = [e for e in self._errors[errors_before:] if "permissions violation" in e.lower()]
        if refused:
            await self._unsubscribe_all()
            self._started = False
            raise PermissionDenied(
                f"the server refused agent {self.id}'s subscriptions ({refused[0]}); are these "
                f"the credentials of {self.id}?"
            )
        if heartbeat_every is not None:
            self._instance = wire.header_safe(instance if instance is not None else f"{socket.gethostname()}-{os.getpid()}")
            self._hb_stop = asyncio.Event()
            self._hb_task = asyncio.ensure_future(self._beat(max(heartbeat_every, MIN_HEARTBEAT_INTERVAL)))
        self._ready.set()

    async def wait_ready(self) -> None:
        """Returns once :meth:`start` (or :meth:`run`) has subscribed; for a `run()` in a task."""
        await self._ready.wait()

    async def run(
        self,
        *,
        heartbeat_every: Optional[float] = 5.0,
        instance: Optional[str] = None,
        dedupe_capacity: int = DEFAULT_DEDUPE_CAPACITY,
        cancel_on_kill: bool = True,
        max_concurrency: int = 64,
        grace: float = 30.0,
        stop_signals: Iterable[int] = (),
    ) -> None:
        """Serves until :meth:`stop` (or one of `stop_signals`, e.g. `(signal.SIGINT,
        signal.SIGTERM)`), then stops gracefully: no new deliveries, in-flight handlers get
        `grace` seconds to finish, a last heartbeat. See :meth:`start` for the options."""
        await self.start(
            heartbeat_every=heartbeat_every,
            instance=instance,
            dedupe_capacity=dedupe_capacity,
            cancel_on_kill=cancel_on_kill,
            max_concurrency=max_concurrency,
        )
        loop = asyncio.get_running_loop()
        installed = []
        for sig in stop_signals:
            try:
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.request_stop))
        try:
            assert self._stop_requested is not None
            await self._stop_requested.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self._shutdown(grace)

    def request_stop(self) -> None:
        """Asks :meth:`run` to stop gracefully; returns at once."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Stops serving gracefully: leaves the queue group (new deliveries go to other
        instances, or wait), lets in-flight handlers finish within `grace` seconds (the rest are
        cancelled, unacknowledged, and delivered again), sends a last heartbeat."""
        if not self._started:
            return
        self.request_stop()
        await self._shutdown(grace)

    async def _shutdown(self, grace: float) -> None:
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            if self._inbox_sub is not None:
                try:
                    await self._inbox_sub.unsubscribe()
                except Exception:  # noqa: BLE001 - the connection may be closing
                    pass
                self._inbox_sub = None
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
                for t in pending:
                    t.cancel()
                if pending:
                    await asyncio.wait(pending)
            if self._hb_task is not None and self._hb_stop is not None:
                self._hb_stop.set()
                await self._hb_task
                self._hb_task = None
            await self._unsubscribe_all()
        finally:
            self._started = False
            self._ready.clear()
            self._stopped.set_result(None)
            self._stopped = None

    async def _unsubscribe_all(self) -> None:
        subs, self._subs = self._subs, []
        if self._inbox_sub is not None:
            subs.append(self._inbox_sub)
            self._inbox_sub = None
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001
                pass

    def cancel_handlers(self) -> int:
        """Cancels the running handlers (their intents are not acknowledged and come back);
        returns how many were running."""
        running = [t for t in self._tasks if not t.done()]
        for t in running:
            t.cancel()
        return len(running)

    @property
    def in_flight(self) -> int:
        """Handlers running now."""
        return sum(1 for t in self._tasks if not t.done())

    async def _on_inbox_msg(self, msg: Msg) -> None:
        self.stats._bump("received")
        headers = msg.headers or {}
        if not msg.reply:
            self.stats._bump("invalid")
            log.warning("agent %s: ignoring a message without a reply subject: not a delivery from a gateway", self.id)
            return
        try:
            intent = _parse_intent(headers, msg.data)
        except ValueError as e:
            self.stats._bump("invalid")
            log.warning("agent %s: ignoring a message that is not a delivery from a gateway: %s", self.id, e)
            return
        key: Key = (intent.sender, intent.intent_id)
        seen = self._recent.claim(key)
        if seen is Seen.ACKED:
            log.debug("agent %s: re-acknowledging repeat %s of %s", self.id, intent.attempt, intent.intent_id)
            try:
                await self.nc.publish(msg.reply, b"")
            except Exception as e:  # noqa: BLE001
                log.warning("agent %s: could not re-acknowledge %s: %s", self.id, intent.intent_id, e)
            self.stats._bump("repeats_acked")
            return
        if seen is Seen.IN_PROGRESS:
            log.debug("agent %s: skipping repeat %s of %s, still being handled", self.id, intent.attempt, intent.intent_id)
            self.stats._bump("repeats_skipped")
            return
        handler = self._match(intent.action)
        if handler is None:
            self._recent.release(key)
            self.stats._bump("unhandled")
            log.warning(
                "agent %s: no handler for action %s (intent %s from %s); not acknowledged, it "
                "will be delivered again",
                self.id,
                intent.action,
                intent.intent_id,
                intent.sender,
            )
            return
        task = asyncio.ensure_future(self._handle(handler, intent, msg.reply, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, handler: Handler, intent: Intent, reply: str, key: Key) -> None:
        assert self._sem is not None
        acked = False
        try:
            async with self._sem:
                try:
                    body = _reply_bytes(await _maybe_await(handler(intent)))
                except asyncio.CancelledError:
                    self.stats._bump("cancelled")
                    log.info("agent %s: handler of %s cancelled; not acknowledged", self.id, intent.intent_id)
                    return
                except Exception:  # noqa: BLE001 - any handler error means: not handled
                    self.stats._bump("failed")
                    log.exception(
                        "agent %s: handler of %s (%s from %s, attempt %s) raised; not "
                        "acknowledged, it will be delivered again",
                        self.id,
                        intent.intent_id,
                        intent.action,
                        intent.sender,
                        intent.attempt,
                    )
                    return
                try:
                    await self.nc.publish(reply, body)
                    await self.nc.flush()
                except Exception as e:  # noqa: BLE001
                    log.warning("agent %s: could not acknowledge %s (%s); the gateway will deliver it again", self.id, intent.intent_id, e)
                    return
                acked = True
                self._recent.acked(key)
                self.stats._bump("handled")
        finally:
            if not acked:
                self._recent.release(key)

    # ----------------------------------------------------------------- notices

    async def _on_rejected_msg(self, msg: Msg) -> None:
        rejection = _parse_rejection(msg.headers or {}, msg.data)
        if rejection is None:
            log.warning("agent %s: ignoring an unreadable rejection notice", self.id)
            return
        if not self._on_rejected:
            log.warning("agent %s: intent %s rejected: %s %s", self.id, rejection.intent_id, rejection.status, rejection.reason)
        for cb in list(self._on_rejected):
            try:
                await _maybe_await(cb(rejection))
            except Exception:  # noqa: BLE001
                log.exception("agent %s: the rejection callback raised", self.id)

    async def _on_control_msg(self, msg: Msg) -> None:
        rec = wire.decode_record(msg.data)
        if rec is None or not isinstance(rec.get("state"), str):
            log.warning("agent %s: ignoring a control notice that cannot be decoded", self.id)
            return
        notice = ControlNotice(
            agent=str(rec.get("agent", self.id)),
            state=rec["state"],
            reason=str(rec.get("reason", "")),
            by=str(rec.get("by", "")),
            at_unix_ms=int(rec.get("at_unix_ms", 0) or 0),
        )
        log.info("agent %s: %s by %s: %s", self.id, notice.state, notice.by, notice.reason)
        if notice.killed and self._cancel_on_kill:
            n = self.cancel_handlers()
            if n:
                log.info("agent %s: killed; cancelled %d running handler(s)", self.id, n)
        for cb in list(self._on_control):
            try:
                await _maybe_await(cb(notice))
            except Exception:  # noqa: BLE001
                log.exception("agent %s: the control callback raised", self.id)

    # ----------------------------------------------------------------- heartbeats

    def report_cost(self, usd: float) -> float:
        """Adds `usd` to the cumulative cost the heartbeats carry (`Mesh-Cost-Total`); returns the
        new total. Report each cost once: here or as `cost_usd` on an intent, not both."""
        self._cost_total += wire.check_usd(usd)
        return self._cost_total

    @property
    def cost_total(self) -> float:
        return self._cost_total

    @property
    def instance(self) -> str:
        """The instance id the heartbeats carry (`Mesh-Instance`)."""
        return self._instance

    async def heartbeat(self) -> None:
        """Publishes one heartbeat now (the serving loop sends them on its own)."""
        if not self._instance:
            self._instance = wire.header_safe(f"{socket.gethostname()}-{os.getpid()}")
        headers = {
            wire.MESH_INSTANCE: self._instance,
            wire.MESH_COST_TOTAL: wire.format_usd(self._cost_total),
        }
        await self.nc.publish(self.subjects.heartbeat(self.id), b"", headers=headers)
        self.stats._bump("heartbeats")

    async def _beat(self, every: float) -> None:
        assert self._hb_stop is not None
        while not self._hb_stop.is_set():
            try:
                await self.heartbeat()
            except Exception as e:  # noqa: BLE001 - best effort; the next tick tries again
                log.warning("agent %s: could not publish a heartbeat: %s", self.id, e)
            try:
                await asyncio.wait_for(self._hb_stop.wait(), every)
            except asyncio.TimeoutError:
                pass
        try:
            await self.heartbeat()
            await self.nc.flush()
        except Exception as e:  # noqa: BLE001
            log.debug("agent %s: could not send the last heartbeat: %s", self.id, e)


def _parse_intent(headers: Dict[str, str], payload: bytes) -> Intent:
    def get(name: str) -> str:
        value = headers.get(name, "")
        if not value:
            raise ValueError(f"header {name} is missing or empty")
        return value

    intent_id = get(wire.MESH_INTENT_ID)
    sender = get(wire.MESH_FROM)
    try:
        wire.validate_agent_id(sender)
    except ValueError:
        raise ValueError(f"header Mesh-From is not an agent id: {sender!r}") from None
    action = get(wire.MESH_ACTION)
    try:
        wire.validate_action(action)
    except ValueError:
        raise ValueError(f"header Mesh-Action {action!r} is not an action") from None
    attempt_text = get(wire.MESH_ATTEMPT)
    try:
        attempt = int(attempt_text.strip())
    except ValueError:
        attempt = 0
    if attempt < 1:
        raise ValueError(f"header Mesh-Attempt {attempt_text!r} is not a positive number")
    return Intent(intent_id=intent_id, sender=sender, action=action, attempt=attempt, payload=bytes(payload), headers=dict(headers))


def _parse_rejection(headers: Dict[str, str], payload: bytes) -> Optional[Rejection]:
    """Reads a rejection from the headers, falling back to the MessagePack body (as mesh-agent)."""
    body = wire.decode_record(payload) or {}
    status: Optional[int] = None
    try:
        status = int(headers.get(wire.MESH_STATUS, "").strip())
    except ValueError:
        if isinstance(body.get("status"), int):
            status = body["status"]
    intent_id = headers.get(wire.MESH_INTENT_ID) or body.get("intent_id")
    if status is None or not intent_id:
        return None
    reason = headers.get(wire.MESH_REASON) or str(body.get("reason", ""))
    return Rejection(intent_id=str(intent_id), status=status, reason=reason, subject=str(body.get("subject", "")))
