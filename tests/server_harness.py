"""Start and stop a real `python -m agentserver run` in a subprocess, for tests.

    with RunningServer(config_text) as server:   # waits until it listens
        ... server.socket_path ...
    server.returncode, server.log                # after it stopped (SIGTERM)
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HELLO_LISTENERS = """
listeners:
  - name: greeter
    payload_class: agentserver.examples.hello.Greeting
    handler: agentserver.examples.hello.handle_greeting
    description: Greets people.
    agent: true
    peers: [shouter]
  - name: shouter
    payload_class: agentserver.examples.hello.Shout
    handler: agentserver.examples.hello.handle_shout
  - name: echo
    payload_class: tests.server_organisms.Echo
    handler: tests.server_organisms.handle_echo
  - name: slow
    payload_class: tests.server_organisms.Slow
    handler: tests.server_organisms.handle_slow
"""


def config_text(extra: str = "", *, name: str = "test-organism", tcp: str | None = None, listeners: str = HELLO_LISTENERS) -> str:
    organism = f"organism:\n  name: {name}\n  socket: run/agentserver.sock\n"
    if tcp:
        organism += f"  tcp: {tcp}\n"
    return organism + extra + listeners


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(REPO) + os.pathsep + environment.get("PYTHONPATH", "")
    environment.update(extra)
    return environment


def cli(*args: str, cwd: Path, timeout: float = 60, stdin: str | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    """Run `python -m agentserver ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "agentserver", *args], cwd=cwd, env=env(**extra_env), input=stdin,
                          capture_output=True, text=True, timeout=timeout)


class RunningServer:
    def __init__(self, config: str, *, workdir: Path | None = None, args: tuple[str, ...] = (), wait: bool = True, **extra_env: str) -> None:
        self.owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="as-"))  # short: AF_UNIX paths are limited
        (self.workdir / "organism.yaml").write_text(config)
        self.socket_path = self.workdir / "run" / "agentserver.sock"
        self.args = args
        self.wait = wait
        self.extra_env = extra_env
        self.log_path = self.workdir / "server.log"
        self.process: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._final_log: str | None = None
        self.signalled = False  # a stop was asked for already: stop() only waits

    def start(self) -> "RunningServer":
        self._log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentserver", "run", "organism.yaml", "--log-level", "INFO", *self.args],
            cwd=self.workdir, env=env(**self.extra_env), stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        if self.wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening on" in self.log:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise TimeoutError(f"server did not start listening within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text() if self.log_path.exists() else ""

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)
            self.signalled = True

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None:
            return -1
        if not self.signalled:
            self.send_signal(signum)
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        self._log_file.close()
        self._final_log = self.log
        return self.returncode

    def cleanup(self) -> None:
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "RunningServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
