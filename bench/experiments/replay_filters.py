"""What nats-server spends per replayed intent for each way a recipient's held work could be read
back: one unfiltered consumer (the shared lane's case, the floor), one filtered consumer per
recipient on today's sender-first subjects (`mesh.intent.*.<to>.>`), the same on recipient-first
subjects (a stream subject transform to `mesh.in.<to>.<from>.>`), and one consumer with a filter
per recipient (`filter_subjects`).

    scripts/python-env >/dev/null
    .venv/bin/python bench/experiments/replay_filters.py "$(scripts/install-nats)" 100000

Prints, per layout, the intents read back and nats-server's CPU time per intent (from
/proc/<pid>/stat). The client is Python and sets the wall time; only the server's CPU is the
figure. Docs: docs/BENCHMARKS.md, "Replay through the shared lane: measured layouts".
"""
import asyncio
import os
import socket
import subprocess
import sys
import tempfile

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig, SubjectTransform

RECIPIENTS = 100


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def filters(layout: str) -> list[list[str]]:
    """The filter subjects of each consumer the layout reads through."""
    if layout == "unfiltered":
        return [[]]
    if layout == "multi":
        return [[f"mesh.intent.*.r{r}.>" for r in range(RECIPIENTS)]]
    if layout == "recipient-first":
        return [[f"mesh.in.r{r}.>"] for r in range(RECIPIENTS)]
    return [[f"mesh.intent.*.r{r}.>"] for r in range(RECIPIENTS)]


async def run(binary: str, layout: str, n: int) -> None:
    store = tempfile.mkdtemp()
    port = 14300 + hash(layout) % 500
    server = subprocess.Popen([binary, "-js", "-sd", store, "-p", str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
        js = nc.jetstream()
        cfg = StreamConfig(name="I", subjects=["mesh.intent.>"])
        if layout == "recipient-first":
            cfg.subject_transform = SubjectTransform(
                src="mesh.intent.*.*.>", dest="mesh.in.{{wildcard(2)}}.{{wildcard(1)}}.>"
            )
        await js.add_stream(cfg)
        # Interleaved like held work of many recipients: each recipient's intents are 1 in 100.
        for i in range(n):
            await nc.publish(f"mesh.intent.s{(i // RECIPIENTS) % RECIPIENTS}.r{i % RECIPIENTS}.act", b"x" * 64)
            if i % 1000 == 999:
                await nc.flush()
        await nc.flush()
        while (await js.stream_info("I")).state.messages < n:
            await asyncio.sleep(0.1)
        subs = []
        for k, f in enumerate(filters(layout)):
            await js.add_consumer(
                "I",
                ConsumerConfig(
                    durable_name=f"c{k}",
                    filter_subject=f[0] if len(f) == 1 else None,
                    filter_subjects=f if len(f) > 1 else None,
                    ack_policy=AckPolicy.EXPLICIT,
                    max_ack_pending=10_000,
                ),
            )
            subs.append(await js.pull_subscribe_bind(durable=f"c{k}", stream="I"))
        share = n // len(subs)
        before = server_cpu(server.pid)
        read = 0

        async def drain(sub) -> None:
            nonlocal read
            mine = 0
            while mine < share:
                try:
                    msgs = await sub.fetch(200, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                for m in msgs:
                    await m.ack()
                mine += len(msgs)
                read += len(msgs)

        await asyncio.gather(*(drain(s) for s in subs))
        await nc.flush()
        spent = server_cpu(server.pid) - before
        print(f"{layout:>16}: {read} intents read back, nats-server {spent / read * 1e6:.1f} µs per intent")
        await nc.close()
    finally:
        server.terminate()
        server.wait()


async def main() -> None:
    binary, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    layouts = sys.argv[3:] or ["unfiltered", "sender-first", "recipient-first", "multi"]
    for layout in layouts:
        await run(binary, layout, n)


asyncio.run(main())
