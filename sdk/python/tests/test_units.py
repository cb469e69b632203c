"""The parts that need no server: dedup memory, action globs, number formats, header parsing."""

from __future__ import annotations

import pytest

from agent_mesh import action_matches, validate_action
from agent_mesh._agent import _parse_intent, _parse_rejection
from agent_mesh._dedupe import Recent, Seen
from agent_mesh._wire import format_usd, header_safe

import msgpack


def test_dedupe_new_then_in_progress_then_acked_per_sender() -> None:
    r = Recent(4)
    assert r.claim(("a", "1")) is Seen.NEW
    assert r.claim(("a", "1")) is Seen.IN_PROGRESS
    r.acked(("a", "1"))
    assert r.claim(("a", "1")) is Seen.ACKED
    assert r.claim(("b", "1")) is Seen.NEW  # same id, other sender: another intent
    r.release(("b", "1"))
    assert r.claim(("b", "1")) is Seen.NEW


def test_dedupe_memory_is_bounded_and_forgets_the_oldest() -> None:
    r = Recent(3)
    for i in range(5):
        assert r.claim(("a", str(i))) is Seen.NEW
        r.acked(("a", str(i)))
    assert len(r) == 3
    assert r.claim(("a", "0")) is Seen.NEW
    assert r.claim(("a", "4")) is Seen.ACKED
    z = Recent(0)
    z.claim(("a", "1"))
    z.acked(("a", "1"))
    assert z.claim(("a", "1")) is Seen.NEW


def test_action_globs_match_tokens_like_the_policies() -> None:
    assert action_matches("deploy.*", "deploy.service")
    assert not action_matches("deploy.*", "deploy.service.eu")
    assert action_matches("deploy.>", "deploy.service.eu")
    assert not action_matches("deploy.>", "deploy")
    assert action_matches("read", "read") and not action_matches("read", "write")
    for bad in ["", ".a", "a.", "a..b", "deploy.*", "a b"]:
        with pytest.raises(ValueError):
            validate_action(bad)


def test_costs_print_as_rust_prints_f64() -> None:
    assert format_usd(0.25) == "0.25"
    assert format_usd(0.0) == "0"
    assert format_usd(1.0) == "1"
    assert format_usd(0.0000001) == "0.0000001"
    assert format_usd(1e21) == "1000000000000000000000"


def test_instance_ids_fit_in_a_header() -> None:
    assert header_safe("pod-7") == "pod-7"
    assert header_safe("a\r\nb") == "a__b"
    assert header_safe("  ") != ""
    long = header_safe("é" * 100)
    assert len(long.encode()) == 128 and set(long) == {"é"}


def test_deliveries_need_the_gateway_headers() -> None:
    h = {"Mesh-Intent-Id": "i-1", "Mesh-From": "alice", "Mesh-Action": "deploy.service", "Mesh-Attempt": "2"}
    i = _parse_intent(h, b"x")
    assert (i.intent_id, i.sender, i.action, i.attempt, i.is_redelivery) == ("i-1", "alice", "deploy.service", 2, True)
    for name in h:
        with pytest.raises(ValueError):
            _parse_intent({k: v for k, v in h.items() if k != name}, b"")
    for name, bad in [("Mesh-From", "a.b"), ("Mesh-Action", "deploy.*"), ("Mesh-Attempt", "0"), ("Mesh-Attempt", "two")]:
        with pytest.raises(ValueError):
            _parse_intent({**h, name: bad}, b"")


def test_rejections_read_headers_first_then_the_messagepack_body() -> None:
    body = msgpack.packb({"intent_id": "i-1", "subject": "mesh.intent.a.b.x", "status": 429, "reason": "over 10/s", "at_unix_ms": 1})
    r = _parse_rejection({}, body)
    assert r is not None and (r.intent_id, r.status, r.reason, r.subject) == ("i-1", 429, "over 10/s", "mesh.intent.a.b.x")
    r = _parse_rejection({"Mesh-Status": "403", "Mesh-Reason": "killed", "Mesh-Intent-Id": "i-9"}, body)
    assert r is not None and (r.intent_id, r.status, r.reason) == ("i-9", 403, "killed")
    assert _parse_rejection({}, b"garbage") is None
    assert _parse_rejection({"Mesh-Status": "403"}, b"") is None
