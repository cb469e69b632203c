"""The values the SDK hands to an application."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional


@dataclass(frozen=True)
class Intent:
    """One intent delivered to this agent (the gateway's headers, parsed)."""

    intent_id: str
    """`Mesh-Intent-Id`: the same on every redelivery of the intent."""
    sender: str
    """`Mesh-From`: the agent that sent it (the gateway takes it from the subject, never a header)."""
    action: str
    """`Mesh-Action`: one or more tokens, e.g. `deploy.service`."""
    attempt: int
    """`Mesh-Attempt`: which delivery attempt this is, from 1."""
    payload: bytes
    """The payload, as the sender sent it."""
    headers: Dict[str, str] = field(default_factory=dict)
    """All headers of the delivery."""

    @property
    def is_redelivery(self) -> bool:
        """Whether the gateway delivered this intent before (to this or another instance)."""
        return self.attempt > 1


@dataclass(frozen=True)
class SendReceipt:
    """What a stored intent can be found by."""

    intent_id: str
    """The intent id (`Nats-Msg-Id`); the recipient sees it as `Mesh-Intent-Id`."""
    stream_seq: int
    """The intent's sequence in the intents stream."""
    duplicate: bool
    """True when JetStream already had an intent with this id: nothing new was stored."""


@dataclass(frozen=True)
class Rejection:
    """One of this agent's intents that the gateway refused."""

    intent_id: str
    status: int
    """400 invalid, 403 killed or action not allowed, 429 over a limit."""
    reason: str
    """Why, in words (a kill echoes the kill's reason)."""
    subject: str = ""
    """The intent's subject; empty when the notice carried only headers."""


@dataclass(frozen=True)
class ControlNotice:
    """A kill or resume notice for this agent (`<prefix>.agent.<id>.control`)."""

    agent: str
    state: str
    """`killed` or `active`."""
    reason: str
    by: str
    at_unix_ms: int

    @property
    def killed(self) -> bool:
        return self.state == "killed"


@dataclass
class Stats:
    """Counters of one agent's inbox, for logs, metrics and tests."""

    received: int = 0
    """Deliveries that reached this instance (repeats included)."""
    handled: int = 0
    """Intents handed to a handler and acknowledged."""
    failed: int = 0
    """Handler runs that raised (not acknowledged: the intent comes back)."""
    cancelled: int = 0
    """Handler runs cancelled (a kill notice or a stop past its grace; not acknowledged)."""
    repeats_acked: int = 0
    """Repeats of acknowledged intents, acknowledged again without the handler."""
    repeats_skipped: int = 0
    """Repeats of intents still being handled, ignored."""
    unhandled: int = 0
    """Deliveries whose action no handler matches (not acknowledged: they come back)."""
    invalid: int = 0
    """Messages on the inbox without the gateway's headers or a reply subject (ignored)."""
    heartbeats: int = 0
    """Heartbeats published."""
    _changed: Optional[asyncio.Condition] = field(default=None, repr=False, compare=False)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _bump(self, name: str, by: int = 1) -> None:
        setattr(self, name, getattr(self, name) + by)
        cond = self._condition()

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        asyncio.ensure_future(notify())

    async def wait_until(self, predicate: Callable[["Stats"], Any], timeout: float = 30.0) -> None:
        """Waits until `predicate(stats)` is true; raises `asyncio.TimeoutError` after `timeout` s."""
        cond = self._condition()

        async def wait() -> None:
            async with cond:
                await cond.wait_for(lambda: bool(predicate(self)))

        await asyncio.wait_for(wait(), timeout)
