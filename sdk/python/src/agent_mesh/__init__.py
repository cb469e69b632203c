"""Python client library for agents on Agent Mesh.

```python
from agent_mesh import Agent

agent = await Agent.connect("deployer", "nats://127.0.0.1:4222", creds="deployer.creds")
intent_id = await agent.send("infra", "deploy.service", b"web", cost_usd=0.25)

@agent.on("deploy.*")
async def deploy(intent):
    return b"done"          # the reply acknowledges the intent

await agent.run(heartbeat_every=5)
```

The same wire behaviour as the Rust `mesh-agent` crate: `Nats-Msg-Id` and `Mesh-Cost` on
intents, deduplication of redeliveries by `(Mesh-From, Mesh-Intent-Id)` in a bounded memory,
heartbeats on `<prefix>.hb.<id>` with `Mesh-Instance` and `Mesh-Cost-Total`.
"""

from ._agent import (
    DEFAULT_DEDUPE_CAPACITY,
    Agent,
    ConnectError,
    MeshError,
    PermissionDenied,
    SendError,
)
from ._types import ControlNotice, Intent, Rejection, SendReceipt, Stats
from ._wire import InvalidName, Subjects, action_matches, validate_action, validate_agent_id

__all__ = [
    "Agent",
    "ConnectError",
    "ControlNotice",
    "DEFAULT_DEDUPE_CAPACITY",
    "Intent",
    "InvalidName",
    "MeshError",
    "PermissionDenied",
    "Rejection",
    "SendError",
    "SendReceipt",
    "Stats",
    "Subjects",
    "action_matches",
    "validate_action",
    "validate_agent_id",
]
