"""The contract's names, header rules and record formats, as the Rust `mesh-agent` uses them."""

from __future__ import annotations

import json
import re
import unicodedata
from decimal import Decimal
from typing import Any, Dict, Optional

import msgpack  # type: ignore[import-untyped]
from nats.nuid import NUID

NATS_MSG_ID = "Nats-Msg-Id"
MESH_COST = "Mesh-Cost"
MESH_INTENT_ID = "Mesh-Intent-Id"
MESH_FROM = "Mesh-From"
MESH_ACTION = "Mesh-Action"
MESH_ATTEMPT = "Mesh-Attempt"
MESH_STATUS = "Mesh-Status"
MESH_REASON = "Mesh-Reason"
MESH_INSTANCE = "Mesh-Instance"
MESH_COST_TOTAL = "Mesh-Cost-Total"

#: Longest accepted `Nats-Msg-Id`, in bytes.
MAX_MSG_ID_LEN = 256
#: Longest agent id.
MAX_AGENT_ID_LEN = 64
#: Longest `Mesh-Instance`, in bytes; the gateways ignore heartbeats with a longer one.
MAX_INSTANCE_LEN = 128

_AGENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PREFIX_TOKEN = re.compile(r"[A-Za-z0-9_-]+")

_nuid = NUID()


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"


def new_id() -> str:
    """A fresh unique id (a NUID, as `mesh-agent` uses)."""
    return _nuid.next().decode()


class InvalidName(ValueError):
    """An agent id, action or subject prefix that is not valid on the mesh."""


def validate_agent_id(agent_id: str) -> str:
    """Checks that `agent_id` is 1 to 64 characters of `A-Z a-z 0-9 _ -`."""
    if not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id):
        raise InvalidName(
            f"agent id {agent_id!r} is not valid: use 1 to {MAX_AGENT_ID_LEN} characters of "
            "A-Z a-z 0-9 _ -"
        )
    return agent_id


def validate_action(action: str) -> str:
    """Checks that `action` is one or more non-empty subject tokens without wildcards or spaces."""
    if not isinstance(action, str) or action == "":
        raise InvalidName("action is empty; use one or more dot-separated tokens, e.g. deploy.service")
    for ch in action:
        if ch in "*>" or ch.isspace() or _is_control(ch):
            raise InvalidName(
                f"action {action!r} contains {ch!r}; wildcards, spaces and control characters "
                "are not allowed"
            )
    if any(t == "" for t in action.split(".")):
        raise InvalidName(f"action {action!r} has an empty token (a leading, trailing or double dot)")
    return action


def validate_prefix(prefix: str) -> str:
    """Checks a subject prefix such as `mesh` or `team.mesh`."""
    if not prefix or not all(_PREFIX_TOKEN.fullmatch(t) for t in prefix.split(".")):
        raise InvalidName(f"subject prefix {prefix!r} is not valid: dot-separated tokens of A-Z a-z 0-9 _ -")
    return prefix


def validate_glob(glob: str) -> str:
    """Checks an action glob: tokens, `*` for one token, `>` (last) for one or more."""
    tokens = glob.split(".") if isinstance(glob, str) else [""]
    bad = (
        glob == ""
        or any(t == "" or any(c.isspace() for c in t) for t in tokens)
        or ">" in tokens[:-1]
        or any(len(t) > 1 and ("*" in t or ">" in t) for t in tokens)
    )
    if bad:
        raise InvalidName(
            f"action glob {glob!r} is not valid: dot-separated tokens, '*' for one token, "
            "'>' as the last token for one or more"
        )
    return glob


def action_matches(glob: str, action: str) -> bool:
    """Whether `action` matches `glob` (the same rule as the policies' action globs)."""
    g = glob.split(".")
    a = action.split(".")
    for i, gt in enumerate(g):
        if i >= len(a):
            return False
        if gt == ">":
            return True
        if gt != "*" and gt != a[i]:
            return False
    return len(g) == len(a)


def format_usd(value: float) -> str:
    """A plain decimal, as Rust prints an `f64` (`0.25`, `1`, `0.0000001`): never an exponent."""
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def check_usd(value: float) -> float:
    """Checks a cost: a finite, non-negative number of USD."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"cost {value!r} is not a number of USD") from None
    if v != v or v in (float("inf"), float("-inf")) or v < 0:
        raise ValueError(f"cost {value} is not a finite, non-negative number of USD")
    return v


def header_safe(instance: str) -> str:
    """An instance id that fits in a header value (as `mesh-agent` cleans it)."""
    out = []
    size = 0
    for ch in instance.strip():
        if _is_control(ch):
            ch = "_"
        n = len(ch.encode())
        if size + n > MAX_INSTANCE_LEN:
            break
        out.append(ch)
        size += n
    return "".join(out) or new_id()


def decode_record(data: bytes) -> Optional[Dict[str, Any]]:
    """Decodes a mesh record: MessagePack (a map with field names), or JSON when it starts with `{`."""
    stripped = data.lstrip()
    if not stripped:
        return None
    try:
        if stripped[:1] == b"{":
            value = json.loads(data)
        else:
            value = msgpack.unpackb(data, raw=False)
    except Exception:  # noqa: BLE001 - any undecodable record is skipped by the caller
        return None
    return value if isinstance(value, dict) else None


class Subjects:
    """The subjects of one mesh (default prefix `mesh`)."""

    def __init__(self, prefix: str = "mesh") -> None:
        self.prefix = validate_prefix(prefix)

    def intent(self, sender: str, to: str, action: str) -> str:
        return f"{self.prefix}.intent.{sender}.{to}.{action}"

    def inbox(self, agent: str) -> str:
        return f"{self.prefix}.agent.{agent}.inbox"

    def rejected(self, agent: str) -> str:
        return f"{self.prefix}.agent.{agent}.rejected"

    def control(self, agent: str) -> str:
        return f"{self.prefix}.agent.{agent}.control"

    def heartbeat(self, agent: str) -> str:
        return f"{self.prefix}.hb.{agent}"
