"""A real mesh for the suite: `mesh-cli up --json` (a secured nats-server on a free port and one
gateway) in a temporary directory, stopped at the end. No mocks.

Binaries: `AGENT_MESH_CLI` (default `<repo>/target/debug/mesh-cli`, with mesh-gateway beside it) and
`MESH_NATS_SERVER` (default: `scripts/install-nats`). The gateway's request timeout is shortened
to 1 s (`MESH_REQUEST_TIMEOUT`, which `mesh-cli up` passes on to the gateway), so that
redeliveries come back quickly.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]
REQUEST_TIMEOUT_S = 1.0


def _mesh_cli() -> str:
    path = os.environ.get("AGENT_MESH_CLI") or str(ROOT / "target" / "debug" / "mesh-cli")
    if not os.path.isfile(path):
        pytest.exit(f"{path} not found: run `cargo build -p mesh-cli -p mesh-gateway` first", returncode=2)
    return path


def _nats_server() -> str:
    if os.environ.get("MESH_NATS_SERVER"):
        return os.environ["MESH_NATS_SERVER"]
    return subprocess.run([str(ROOT / "scripts" / "install-nats")], check=True, capture_output=True, text=True).stdout.strip()


class Mesh:
    """One running `mesh-cli up`, and the operator commands the tests need."""

    def __init__(self, info: Dict[str, Any], cli: str, proc: subprocess.Popen, tmp: Path) -> None:
        self.info = info
        self.url: str = info["nats_url"]
        self.cli = cli
        self.proc = proc
        self.tmp = tmp
        self._ids = itertools.count(1)
        self.env = dict(
            os.environ,
            MESH_NATS_URL=self.url,
            MESH_NATS_CREDS=str(info["operator_creds"]),
            MESH_AUTH_DIR=str(info["auth_dir"]),
        )

    def unique_id(self, stem: str) -> str:
        """A fresh agent id, so that tests sharing the mesh never share an agent."""
        return f"{stem}-{next(self._ids)}-{uuid.uuid4().hex[:6]}"

    def cli_run(self, *args: str, timeout: float = 60) -> str:
        out = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"mesh-cli {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out.stdout

    def creds(self, agent_id: str) -> str:
        """Issues agent `agent_id`'s credentials (`mesh-cli agent add`) and returns the file."""
        path = self.tmp / f"{agent_id}.creds"
        self.cli_run("agent", "add", agent_id, "--out", str(path))
        return str(path)

    def kill(self, agent_id: str, reason: str) -> None:
        self.cli_run("kill", agent_id, "--reason", reason)

    def resume(self, agent_id: str) -> None:
        self.cli_run("resume", agent_id)

    def status(self, agent_id: str) -> Optional[Dict[str, Any]]:
        data = json.loads(self.cli_run("status", "--json"))
        agents: List[Dict[str, Any]] = data["agents"] if isinstance(data, dict) else data
        return next((a for a in agents if a.get("agent") == agent_id), None)


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    cli = _mesh_cli()
    tmp = Path(tempfile.mkdtemp(prefix="agent-mesh-py-"))
    env = dict(os.environ, MESH_NATS_SERVER=_nats_server(), MESH_REQUEST_TIMEOUT=f"{REQUEST_TIMEOUT_S}s")
    for var in ("MESH_NATS_URL", "MESH_NATS_CREDS", "MESH_AUTH_DIR", "MESH_CONFIG"):
        env.pop(var, None)
    log = open(tmp / "mesh-up.log", "w")
    proc = subprocess.Popen([cli, "up", "--json", "--dir", str(tmp / "mesh")], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    text = ""
    info: Optional[Dict[str, Any]] = None
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while info is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        text += line
        try:
            info = json.loads(text)
        except json.JSONDecodeError:
            continue
    if info is None:
        proc.kill()
        raise RuntimeError(f"mesh-cli up did not start: {text}\n{(tmp / 'mesh-up.log').read_text()}")
    assert info["secured"] is True, "mesh-cli up must start a secured mesh"
    m = Mesh(info, cli, proc, tmp)
    try:
        yield m
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
