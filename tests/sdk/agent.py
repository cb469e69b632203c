"""A Python agent for the cross-language test (tests/mesh/sdk.rs), on the agent_mesh SDK.

Env: MESH_AGENT_ID, MESH_NATS_URL, MESH_AGENT_CREDS. Prints one JSON object per line: `ready`
once serving, `intent` for each intent handed to the application, `stopped` with the counters
after a graceful stop (SIGTERM). The action `job.slow` answers only after the gateway has
delivered it again (a forced redelivery that the SDK must absorb).
"""

import asyncio
import json
import os
import signal

from agent_mesh import Agent, Intent


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main() -> None:
    agent = await Agent.connect(os.environ["MESH_AGENT_ID"], os.environ["MESH_NATS_URL"], creds=os.environ["MESH_AGENT_CREDS"])

    @agent.on("job.>")
    async def job(intent: Intent) -> bytes:
        if intent.action == "job.slow":
            await agent.stats.wait_until(lambda s: s.repeats_skipped >= 1, timeout=60)
        emit(event="intent", id=intent.intent_id, sender=intent.sender, action=intent.action, payload=intent.payload.decode())
        return b"ok"

    serving = asyncio.ensure_future(agent.run(heartbeat_every=1, instance="py-1", stop_signals=(signal.SIGTERM, signal.SIGINT)))
    await agent.wait_ready()
    emit(event="ready")
    await serving
    s = agent.stats
    emit(event="stopped", handled=s.handled, repeats_acked=s.repeats_acked, repeats_skipped=s.repeats_skipped, heartbeats=s.heartbeats)
    await agent.close()


asyncio.run(main())
