"""A rogue agent written with nats-py: with its own valid credentials it tries every way around
the Agent Mesh gateway and reports what the NATS server answered to each attempt.

    python rogue.py '<json: url, creds, agent, victim, publish[], subscribe[]>'

Prints one JSON object: the attempts NATS refused, those it did not, the JetStream API calls that
failed, and the stream sequence of the rogue's one legitimate intent.
"""

import asyncio
import json
import sys

import nats
from nats.errors import Error as NatsError

# How long the server gets to refuse one attempt.
REFUSAL_TIMEOUT = 10.0


async def main(spec: dict) -> dict:
    errors: asyncio.Queue = asyncio.Queue()

    async def on_error(e: Exception) -> None:
        await errors.put(str(e))

    agent = spec["agent"]
    nc = await nats.connect(
        spec["url"],
        user_credentials=spec["creds"],
        inbox_prefix=f"_INBOX_{agent}",
        error_cb=on_error,
        allow_reconnect=False,
    )
    refused, not_refused = [], []

    async def expect_refusal(kind: str, subject: str) -> None:
        want = f'Permissions Violation for {kind} to "{subject}"'
        try:
            while True:
                err = await asyncio.wait_for(errors.get(), REFUSAL_TIMEOUT)
                if want.lower() in err.lower():
                    refused.append({"kind": kind, "subject": subject, "server": err})
                    return
        except asyncio.TimeoutError:
            not_refused.append({"kind": kind, "subject": subject})

    for subject in spec["publish"]:
        await nc.publish(subject, b"rogue")
        await expect_refusal("Publish", subject)
    for subject in spec["subscribe"]:
        await nc.subscribe(subject)
        await expect_refusal("Subscription", subject)

    # The JetStream API as a rogue would call it.
    js = nc.jetstream(timeout=1.0)
    js_errors = []
    for name, call in [
        ("delete_stream", lambda: js.delete_stream("MESH_INTENTS")),
        ("key_value", lambda: js.key_value("mesh-kill")),
        ("purge_stream", lambda: js.purge_stream("KV_mesh-kill")),
    ]:
        try:
            await call()
            js_errors.append({"call": name, "error": None})
        except (NatsError, asyncio.TimeoutError, Exception) as e:  # noqa: B014
            js_errors.append({"call": name, "error": type(e).__name__ + ": " + str(e)})

    # What it may do: publish its own intent, and get the PubAck in its own inbox.
    ack = await js.publish(
        f"mesh.intent.{agent}.{spec['victim']}.deploy.service",
        b"0",
        headers={"Mesh-From": spec["victim"]},
    )
    await nc.close()
    return {
        "refused": refused,
        "not_refused": not_refused,
        "js_errors": js_errors,
        "own_intent_seq": ack.seq,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
