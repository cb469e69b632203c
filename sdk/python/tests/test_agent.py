"""The Python SDK against a real secured mesh (nats-server + gateway from `mesh-cli up`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List

import nats
import pytest

from agent_mesh import Agent, ConnectError, ControlNotice, Intent, PermissionDenied, Rejection

from conftest import Mesh

DEADLINE = 30.0


async def connect(mesh: Mesh, agent_id: str) -> Agent:
    return await Agent.connect(agent_id, mesh.url, creds=mesh.creds(agent_id))


async def eventually(what: str, check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    """Polls an outside view (mesh-cli status) until `check()` returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.2)


async def test_send_and_receive_with_headers_replies_and_intent_ids(mesh: Mesh) -> None:
    alice_id, bob_id = mesh.unique_id("alice"), mesh.unique_id("bob")
    async with await connect(mesh, alice_id) as alice, await connect(mesh, bob_id) as bob:
        got: List[Intent] = []

        @bob.on("deploy.*")
        async def deploy(intent: Intent) -> bytes:
            got.append(intent)
            return b"deployed " + intent.payload

        @bob.on("ping")
        def ping(intent: Intent) -> str:  # plain functions work too
            got.append(intent)
            return "pong"

        await bob.start(heartbeat_every=None)
        ids = [
            await alice.send(bob_id, "deploy.service", b"web", cost_usd=0.25),
            await alice.send(bob_id, "ping", "hello"),
            await alice.send(bob_id, "deploy.db", b"pg", intent_id=f"{alice_id}-order-7"),
        ]
        assert ids[2] == f"{alice_id}-order-7"
        # The same intent id again is a duplicate: JetStream stores nothing new.
        again = await alice.send_receipt(bob_id, "deploy.db", b"pg", intent_id=f"{alice_id}-order-7")
        assert again.duplicate and again.intent_id == ids[2]
        await bob.stats.wait_until(lambda s: s.handled >= 3)
        assert [i.intent_id for i in got] == ids
        assert [(i.sender, i.action, i.payload, i.attempt) for i in got] == [
            (alice_id, "deploy.service", b"web", 1),
            (alice_id, "ping", b"hello", 1),
            (alice_id, "deploy.db", b"pg", 1),
        ]
        assert got[0].headers["Mesh-Intent-Id"] == ids[0]
        assert bob.stats.repeats_acked == 0 and bob.stats.failed == 0
        with pytest.raises(ValueError):
            await alice.send(bob_id, "deploy.*", b"")
        with pytest.raises(ValueError):
            await alice.send(bob_id, "x", b"", cost_usd=-1)


async def test_a_forced_redelivery_is_deduplicated(mesh: Mesh) -> None:
    """The handler answers only after the gateway's request timed out and it delivered again:
    the repeat that arrives while the handler runs is ignored, the one after the late reply is
    acknowledged without the handler. The application sees the intent once."""
    alice_id, bob_id = mesh.unique_id("alice"), mesh.unique_id("bob")
    async with await connect(mesh, alice_id) as alice, await connect(mesh, bob_id) as bob:
        calls: List[Intent] = []

        @bob.on("work")
        async def work(intent: Intent) -> None:
            calls.append(intent)
            if len(calls) == 1:
                await bob.stats.wait_until(lambda s: s.repeats_skipped >= 1)

        await bob.start(heartbeat_every=None)
        first = await alice.send(bob_id, "work", b"1")
        await bob.stats.wait_until(lambda s: s.repeats_acked >= 1)
        second = await alice.send(bob_id, "work", b"2")
        await bob.stats.wait_until(lambda s: s.handled >= 2)
        assert [c.intent_id for c in calls] == [first, second]
        assert bob.stats.repeats_skipped >= 1 and bob.stats.repeats_acked >= 1


async def test_a_handler_error_does_not_acknowledge_and_the_intent_comes_back(mesh: Mesh) -> None:
    alice_id, bob_id = mesh.unique_id("alice"), mesh.unique_id("bob")
    async with await connect(mesh, alice_id) as alice, await connect(mesh, bob_id) as bob:
        attempts: List[int] = []

        @bob.on("flaky.>")
        async def flaky(intent: Intent) -> bytes:
            attempts.append(intent.attempt)
            if len(attempts) == 1:
                raise RuntimeError("transient failure")
            return b"ok"

        await bob.start(heartbeat_every=None)
        sent = await alice.send(bob_id, "flaky.job.run", b"x")
        await bob.stats.wait_until(lambda s: s.handled >= 1)
        assert bob.stats.failed == 1
        # Mesh-Attempt counts JetStream deliveries; a retry of the same delivery keeps it.
        assert len(attempts) == 2 and attempts[0] == 1
        assert sent


async def test_a_killed_senders_intents_are_rejected_with_a_notice(mesh: Mesh) -> None:
    alice_id, bob_id = mesh.unique_id("alice"), mesh.unique_id("bob")
    async with await connect(mesh, alice_id) as alice, await connect(mesh, bob_id) as bob:
        rejections: "asyncio.Queue[Rejection]" = asyncio.Queue()
        alice.on_rejected(rejections.put_nowait)
        got: List[Intent] = []
        bob.on("job", got.append)
        await alice.start(heartbeat_every=None)
        await bob.start(heartbeat_every=None)

        await asyncio.to_thread(mesh.kill, alice_id, "deployed 47 of 3")
        refused = await alice.send(bob_id, "job", b"nope")
        r = await asyncio.wait_for(rejections.get(), DEADLINE)
        assert (r.intent_id, r.status) == (refused, 403)
        assert "deployed 47 of 3" in r.reason
        assert r.subject == f"mesh.intent.{alice_id}.{bob_id}.job"

        await asyncio.to_thread(mesh.resume, alice_id)
        ok = await alice.send(bob_id, "job", b"yes")
        await bob.stats.wait_until(lambda s: s.handled >= 1)
        assert [i.intent_id for i in got] == [ok]
        assert rejections.empty()


async def test_a_kill_notice_cancels_running_handlers_and_resume_redelivers(mesh: Mesh) -> None:
    alice_id, bob_id = mesh.unique_id("alice"), mesh.unique_id("bob")
    async with await connect(mesh, alice_id) as alice, await connect(mesh, bob_id) as bob:
        notices: "asyncio.Queue[ControlNotice]" = asyncio.Queue()
        bob.on_control(notices.put_nowait)
        started = asyncio.Event()
        calls: List[Intent] = []

        @bob.on("long.task")
        async def long_task(intent: Intent) -> bytes:
            calls.append(intent)
            if len(calls) == 1:
                started.set()
                await asyncio.Event().wait()  # runs until cancelled
            return b"done"

        await bob.start(heartbeat_every=None)
        sent = await alice.send(bob_id, "long.task", b"x")
        await asyncio.wait_for(started.wait(), DEADLINE)

        await asyncio.to_thread(mesh.kill, bob_id, "runaway")
        killed = await asyncio.wait_for(notices.get(), DEADLINE)
        assert (killed.agent, killed.state, killed.reason, killed.killed) == (bob_id, "killed", "runaway", True)
        await bob.stats.wait_until(lambda s: s.cancelled >= 1)
        assert bob.in_flight == 0 and bob.stats.handled == 0

        await asyncio.to_thread(mesh.resume, bob_id)
        resumed = await asyncio.wait_for(notices.get(), DEADLINE)
        assert resumed.state == "active" and not resumed.killed
        await bob.stats.wait_until(lambda s: s.handled >= 1)
        assert [c.intent_id for c in calls] == [sent, sent]


async def test_heartbeats_carry_the_instance_and_cost_and_make_the_agent_healthy(mesh: Mesh) -> None:
    bob_id = mesh.unique_id("bob")
    # The operator may read heartbeats; the format must be mesh-agent's.
    op = await nats.connect(mesh.url, user_credentials=mesh.info["operator_creds"], inbox_prefix="_CLI_INBOX")
    beats: "asyncio.Queue[Any]" = asyncio.Queue()
    await op.subscribe(f"mesh.hb.{bob_id}", cb=beats.put)
    await op.flush()
    try:
        async with await connect(mesh, bob_id) as bob:
            bob.report_cost(0.5)
            bob.report_cost(0.0000001)
            await bob.start(heartbeat_every=0.2, instance="py-1")
            msg = await asyncio.wait_for(beats.get(), DEADLINE)
            assert msg.data == b""
            assert msg.headers == {"Mesh-Instance": "py-1", "Mesh-Cost-Total": "0.5000001"}

            def healthy() -> Dict[str, Any]:
                s = mesh.status(bob_id)
                ok = s and s["health"] == "healthy" and s["instances"] == 1 and s.get("cost_reported_usd")
                return s if ok else {}

            s = await eventually("health healthy in mesh-cli status", healthy)
            assert s["cost_reported_usd"] == pytest.approx(0.5000001)
            assert s["last_heartbeat_unix_ms"] > 0
            # A graceful stop sends a last heartbeat.
            before = bob.stats.heartbeats
            await bob.stop()
            assert bob.stats.heartbeats == before + 1
    finally:
        await op.close()


async def test_graceful_stop_finishes_in_flight_handlers(mesh: Mesh) -> None:
    alice_id, bob_id = mesh.unique_id("alice"), mesh.unique_id("bob")
    async with await connect(mesh, alice_id) as alice, await connect(mesh, bob_id) as bob:
        started, release = asyncio.Event(), asyncio.Event()
        done: List[str] = []

        @bob.on("job")
        async def job(intent: Intent) -> None:
            started.set()
            await release.wait()
            done.append(intent.intent_id)

        running = asyncio.ensure_future(bob.run(heartbeat_every=None, grace=DEADLINE))
        await asyncio.wait_for(bob.wait_ready(), DEADLINE)
        first = await alice.send(bob_id, "job", b"1")
        await asyncio.wait_for(started.wait(), DEADLINE)
        bob.request_stop()
        await asyncio.sleep(0)
        assert not running.done()  # still finishing the handler
        release.set()
        await asyncio.wait_for(running, DEADLINE)
        assert done == [first] and bob.stats.handled == 1

        # It was acknowledged: a new instance gets only what was sent after.
        second = await alice.send(bob_id, "job", b"2")
        async with await Agent.connect(bob_id, mesh.url, creds=str(mesh.tmp / f"{bob_id}.creds")) as bob2:
            seen: List[str] = []
            bob2.on("job", lambda i: seen.append(i.intent_id))
            await bob2.start(heartbeat_every=None)
            await bob2.stats.wait_until(lambda s: s.handled >= 1)
            assert seen == [second]


async def test_credentials_are_required_and_bound_to_the_agent(mesh: Mesh) -> None:
    bob_id, carol_id = mesh.unique_id("bob"), mesh.unique_id("carol")
    with pytest.raises(ConnectError):
        await Agent.connect(bob_id, mesh.url, connect_timeout=2)  # no credentials

    bob_creds = mesh.creds(bob_id)
    # Bob's credentials used as carol: NATS refuses carol's subjects.
    carol = await Agent.connect(carol_id, mesh.url, creds=bob_creds)
    try:
        carol.on("x", lambda i: None)
        with pytest.raises(PermissionDenied):
            await carol.start(heartbeat_every=None)
    finally:
        await carol.close()

    # Revoked credentials no longer connect.
    bob = await Agent.connect(bob_id, mesh.url, creds=bob_creds)
    await bob.close()
    await asyncio.to_thread(mesh.cli_run, "agent", "revoke", bob_id)
    with pytest.raises(ConnectError):
        await Agent.connect(bob_id, mesh.url, creds=bob_creds, connect_timeout=2)
