"""An example agent on the Python SDK (sdk/python): it deploys what it is asked to, asks `infra`
for a DNS record after each deployment, reports what it spends, and stops cleanly on Ctrl-C.

    pip install ./sdk/python
    mesh-cli up                                   # prints the export line; run it
    mesh-cli agent add deployer --out deployer.creds
    python examples/python/agent.py deployer deployer.creds

In another terminal, send it work as any agent, e.g. with the nats CLI (see the README).
"""

import asyncio
import logging
import os
import signal
import sys

from agent_mesh import Agent, ControlNotice, Intent, Rejection


async def main(agent_id: str, creds: str) -> None:
    url = os.environ.get("MESH_NATS_URL", "nats://127.0.0.1:4222")
    agent = await Agent.connect(agent_id, url, creds=creds)

    @agent.on("deploy.*")  # deploy.service, deploy.db, ...
    async def deploy(intent: Intent) -> bytes:
        what = intent.payload.decode() or "?"
        print(f"{intent.sender} asks for {intent.action} of {what} (intent {intent.intent_id})")
        await asyncio.sleep(0.5)  # the real work; cancelled if the agent is killed meanwhile
        agent.report_cost(0.02)  # e.g. a model call; carried by the heartbeats
        await agent.send("infra", "dns.create", what.encode(), cost_usd=0.001)
        return f"deployed {what}".encode()  # the reply acknowledges the intent

    @agent.on_rejected
    def rejected(r: Rejection) -> None:
        print(f"intent {r.intent_id} rejected: {r.status} {r.reason}")

    @agent.on_control
    def control(n: ControlNotice) -> None:
        print(f"{n.state} by {n.by}: {n.reason}")

    print(f"{agent_id} serving on {url}; Ctrl-C stops")
    await agent.run(heartbeat_every=5, stop_signals=(signal.SIGINT, signal.SIGTERM))
    await agent.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) != 3:
        sys.exit("usage: agent.py <agent id> <creds file>")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
