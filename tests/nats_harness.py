"""A real nats-server for the tests: JetStream on, a free loopback port, a temporary store.

Tests that need it take the `nats_server` fixture (tests/conftest.py). Without the
`nats-server` binary (Debian package nats-server) they skip saying so, except under
CI=true, where they fail: `.ci/run` installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.server_harness import free_port

BINARY = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)


def need_nats_server() -> str:
    if BINARY is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nats-server is not installed (apt-get install -y nats-server); .ci/run installs it")
        pytest.skip("nats-server is not installed (Debian package nats-server): the NATS transport tests need it")
    return BINARY


class NatsServer:
    """`nats-server -js` on 127.0.0.1:PORT with its store in a temporary directory."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.store = Path(tempfile.mkdtemp(prefix="nats-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        self.process = subprocess.Popen([self.binary, "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("nats-server did not listen within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop it and start it again on the same port and store (what it kept survives)."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.store, ignore_errors=True)


CLUSTER_LISTENERS = """
listeners:
  - name: jobs
    payload_class: tests.cluster_organisms.Job
    handler: tests.cluster_organisms.handle_job
  - name: capped
    payload_class: tests.cluster_organisms.Capped
    handler: tests.cluster_organisms.handle_job
    concurrency: 2
  - name: asker
    payload_class: tests.cluster_organisms.Question
    handler: tests.cluster_organisms.handle_question
    peers: [doubler]
  - name: doubler
    payload_class: tests.cluster_organisms.Number
    handler: tests.cluster_organisms.handle_number
  - name: crasher
    payload_class: tests.cluster_organisms.Crash
    handler: tests.cluster_organisms.handle_crash
  - name: chain
    payload_class: tests.cluster_organisms.Chain
    handler: tests.cluster_organisms.handle_chain
"""


def cluster_config(name: str = "cluster", listeners: str = CLUSTER_LISTENERS, extra: str = "") -> str:
    return f"organism:\n  name: {name}\n  socket: run/agentserver.sock\n{extra}{listeners}"


def records(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
