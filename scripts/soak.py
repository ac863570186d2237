#!/usr/bin/env python
"""Soak the socket server: many messages from concurrent clients, then check the books.

    python scripts/soak.py                                  # 50,000 messages after a 5,000 warm-up
    python scripts/soak.py --messages 10000 --warmup 2000   # shorter
    python scripts/soak.py --json figures.json              # also write the figures as JSON

What it does:

1. starts `python -m agentserver run` (organism: scripts/soak_organism.py, an `echo`
   and a `slow` that sleeps a little) in a temporary directory;
2. four clients (`--clients`) connect over the Unix socket and send, concurrently, a mix
   of messages: most to `echo`, every `--slow-every`th to `slow`, every
   `--invalid-every`th invalid (malformed, no route, schema-invalid, a forged `<from>`,
   a DTD). Each client keeps at most `--window` messages unanswered (it never sends
   faster than the server drains) and reads every frame that comes back: one reply per
   valid message, with the text it sent, and one `<huh>` per invalid one, with the
   right code;
3. after the warm-up and again after the soak it waits (over the control channel) until
   nothing is in flight and reads the server's VmRSS from /proc/PID/status;
4. stops the server with SIGTERM (it must exit 0) and reads its final log line.

It fails (exit 1, the problems listed) unless every message got exactly its answer,
`accepted == handled + errored` with nothing in flight, no conversation is left open,
no frame was dropped, and VmRSS after the soak is within `--rss-limit-mib` (20) of
VmRSS after the warm-up. The figures are printed as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agentserver.client import Client, connect  # noqa: E402
from agentserver.envelope import ENVELOPE_NS, NIL_THREAD  # noqa: E402

GUARD = 120.0  # seconds; a hang guard, never a measurement

CONFIG = """\
organism:
  name: soak
  socket: run/agentserver.sock
max_concurrent_handlers: 50
limits: {{dead_letters: 1000}}
listeners:
  - name: echo
    payload_class: soak_organism.Echo
    handler: soak_organism.handle_echo
  - name: slow
    payload_class: soak_organism.Slow
    handler: soak_organism.handle_slow
    concurrency: {slow_concurrency}
"""


@dataclass
class Plan:
    clients: int = 4
    window: int = 32
    invalid_every: int = 10
    slow_every: int = 7
    slow_seconds: float = 0.002
    slow_concurrency: int = 20


@dataclass
class Figures:
    messages: int
    warmup: int
    clients: int
    seconds: float = 0.0
    per_second: float = 0.0
    rss_warm_kib: int = 0
    rss_after_kib: int = 0
    rss_growth_kib: int = 0
    replies: int = 0
    huhs: int = 0
    huhs_expected: int = 0
    accepted: int = 0
    handled: int = 0
    errored: int = 0
    in_flight: int = -1
    errored_by_reason: dict = field(default_factory=dict)
    conversations: int = -1
    threads: int = -1
    context_threads: int = -1
    frames_dropped: int = -1
    exit_code: int | None = None
    final_line: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)
        elif len(self.problems) == 20:
            self.problems.append("... (more problems not listed)")


# ------------------------------------------------------------------ the server
class SoakServer:
    """`python -m agentserver run` in a temporary directory, stopped with SIGTERM."""

    def __init__(self, plan: Plan) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="soak-"))  # short: AF_UNIX paths are limited
        (self.workdir / "organism.yaml").write_text(CONFIG.format(slow_concurrency=plan.slow_concurrency))
        self.socket_path = self.workdir / "run" / "agentserver.sock"
        self.log_path = self.workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "SoakServer":
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), str(ROOT), environment.get("PYTHONPATH", "")])
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentserver", "run", "organism.yaml", "--log-level", "INFO"],
            cwd=self.workdir, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while "listening on" not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{self.log}")
            time.sleep(0.05)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc/PID/status")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


# ------------------------------------------------------------------ the clients
def _raw_envelope(sender: str, payload: str, *, to: str | None, thread: str) -> bytes:
    to_xml = f"<env:to>{to}</env:to>" if to else ""
    return (f'<env:message xmlns:env="{ENVELOPE_NS}"><env:meta><env:from>{sender}</env:from>{to_xml}'
            f"<env:thread>{thread}</env:thread></env:meta>{payload}</env:message>").encode()


INVALID = ["malformed", "no-route", "invalid-payload", "forbidden-sender", "forbidden-dtd"]


def message(client: Client, plan: Plan, k: int) -> tuple[bytes, str, tuple[str, str]]:
    """The k-th message of a client: (frame, thread id, what must come back)."""
    text = f"{client.name}-{k}"
    if k % plan.invalid_every == plan.invalid_every - 1:
        code = INVALID[(k // plan.invalid_every) % len(INVALID)]
        thread = client.envelope("<Echo><Text>x</Text></Echo>")[1]
        if code == "malformed":  # refused before its <thread> is read: the huh carries the nil thread
            return f"<env:message>{text}".encode(), NIL_THREAD, ("huh", code)
        if code == "no-route":
            raw = _raw_envelope(client.name, f"<Nobody><Text>{text}</Text></Nobody>", to=None, thread=thread)
        elif code == "invalid-payload":
            raw = _raw_envelope(client.name, f"<Echo><Wrong>{text}</Wrong></Echo>", to="echo", thread=thread)
        elif code == "forbidden-sender":
            raw = _raw_envelope("echo", f"<Echo><Text>{text}</Text></Echo>", to="echo", thread=thread)
        else:  # refused before its <thread> is read, too
            raw = b'<!DOCTYPE m [<!ENTITY a "aaaa">]>' + _raw_envelope(client.name, "<Echo><Text>&a;</Text></Echo>",
                                                                      to="echo", thread=thread)
            return raw, NIL_THREAD, ("huh", code)
        return raw, thread, ("huh", code)
    if k % plan.slow_every == plan.slow_every - 1:
        raw, thread = client.envelope(f"<Slow><Seconds>{plan.slow_seconds}</Seconds><Text>{text}</Text></Slow>", to="slow")
    else:
        raw, thread = client.envelope(f"<Echo><Text>{text}</Text></Echo>", to="echo")
    return raw, thread, ("reply", f"<Echo><Text>{text}</Text></Echo>")


async def drive(client: Client, plan: Plan, first: int, count: int, figures: Figures) -> None:
    """Send `count` messages with at most `plan.window` unanswered; check every answer."""
    window = asyncio.Semaphore(plan.window)
    expected: dict[str, tuple[str, str]] = {}
    nil_pending: Counter[str] = Counter()  # huhs expected on the nil thread, by code

    async def read() -> None:
        for _ in range(count):
            frame = await client.receive()
            window.release()
            got = ("huh", frame.code) if frame.kind == "huh" else ("reply", frame.payload_xml.decode())
            if frame.thread_id == NIL_THREAD and frame.kind == "huh" and nil_pending[frame.code] > 0:
                nil_pending[frame.code] -= 1
                want = got
            else:
                want = expected.pop(frame.thread_id, ("nothing", ""))
            if got != want:
                figures.problem(f"{client.name}: expected {want}, got {got} on thread {frame.thread_id}")
            if frame.kind == "huh":
                figures.huhs += 1
            else:
                figures.replies += 1

    reader = asyncio.create_task(read(), name=f"reader:{client.name}")
    for k in range(first, first + count):
        await window.acquire()
        raw, thread, want = message(client, plan, k)
        figures.huhs_expected += want[0] == "huh"
        if thread == NIL_THREAD:
            nil_pending[want[1]] += 1
        else:
            expected[thread] = want
        await client.send_raw(raw)
    await asyncio.wait_for(reader, GUARD)
    if expected or +nil_pending:
        figures.problem(f"{client.name}: {len(expected) + sum(nil_pending.values())} messages never answered")


async def idle_status(watcher: Client) -> dict:
    """The server's status once nothing is in flight (polled; GUARD is only a hang guard)."""
    deadline = time.monotonic() + GUARD
    while True:
        status = await watcher.status()
        if status["counters"]["in_flight"] == 0 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


async def _phase(clients: list[Client], plan: Plan, first: int, total: int, figures: Figures) -> None:
    share, extra = divmod(total, len(clients))
    await asyncio.gather(*(
        drive(client, plan, first, share + (1 if i < extra else 0), figures) for i, client in enumerate(clients)
    ))


async def _soak(server: SoakServer, messages: int, warmup: int, plan: Plan, figures: Figures) -> None:
    path = str(server.socket_path)
    clients = [await connect(path, name=f"soaker-{i}") for i in range(plan.clients)]
    watcher = await connect(path, name="soak-watcher")
    try:
        await _phase(clients, plan, 0, warmup, figures)
        await idle_status(watcher)
        figures.rss_warm_kib = server.rss_kib()
        started = time.perf_counter()
        await _phase(clients, plan, warmup, messages, figures)
        status = await idle_status(watcher)
        figures.seconds = round(time.perf_counter() - started, 2)
        figures.per_second = round(messages / figures.seconds, 1) if figures.seconds else 0.0
        figures.rss_after_kib = server.rss_kib()
        figures.rss_growth_kib = figures.rss_after_kib - figures.rss_warm_kib
        for key in ("accepted", "handled", "errored", "in_flight", "errored_by_reason"):
            setattr(figures, key, status["counters"][key])
        figures.conversations = status["conversations"]["open"]
        figures.threads = status["registries"]["threads"]
        figures.context_threads = status["registries"]["context_threads"]
        figures.frames_dropped = status["server"]["frames_dropped"]
    finally:
        for client in (*clients, watcher):
            await client.close()


def soak(messages: int = 50_000, warmup: int = 5_000, plan: Plan | None = None, rss_limit_mib: float = 20.0) -> Figures:
    """Run the soak against a fresh server; returns the figures (`problems` empty when it passed)."""
    plan = plan or Plan()
    figures = Figures(messages=messages, warmup=warmup, clients=plan.clients)
    server = SoakServer(plan).start()
    try:
        asyncio.run(_soak(server, messages, warmup, plan, figures))
    finally:
        figures.exit_code = server.stop()
        lines = [line for line in server.log.splitlines() if line.strip()]
        figures.final_line = lines[-1] if lines else ""
        log_tail = "\n".join(lines[-20:])
        server.cleanup()
    sent = messages + warmup
    if (figures.replies, figures.huhs) != (sent - figures.huhs_expected, figures.huhs_expected):
        figures.problem(f"{sent} messages sent ({figures.huhs_expected} invalid): "
                        f"{figures.replies} replies and {figures.huhs} huhs came back")
    if figures.in_flight != 0:
        figures.problem(f"still in flight after the soak: {figures.in_flight}")
    if figures.accepted != figures.handled + figures.errored:
        figures.problem(f"accepted {figures.accepted} != handled {figures.handled} + errored {figures.errored}")
    if figures.conversations != 0 or figures.context_threads != 0:
        figures.problem(f"left open: {figures.conversations} conversations, {figures.context_threads} context threads")
    if figures.frames_dropped != 0:
        figures.problem(f"{figures.frames_dropped} frames dropped")
    if figures.rss_growth_kib > rss_limit_mib * 1024:
        figures.problem(f"VmRSS grew {figures.rss_growth_kib} KiB after the warm-up (limit {rss_limit_mib} MiB)")
    if figures.exit_code != 0:
        figures.problem(f"the server exited with {figures.exit_code}:\n{log_tail}")
    final = re.search(r"stopped: accepted=(\d+) handled=(\d+) errored=(\d+) ", figures.final_line)
    if not final:
        figures.problem(f"the last log line is not the stopped line: {figures.final_line!r}")
    elif int(final.group(1)) != int(final.group(2)) + int(final.group(3)):
        figures.problem(f"final counters do not balance: {figures.final_line!r}")
    return figures


def render(figures: Figures) -> str:
    rows = [
        ("messages (after warm-up)", f"{figures.messages:,} (+{figures.warmup:,} warm-up) from {figures.clients} clients"),
        ("soak time", f"{figures.seconds} s ({figures.per_second:,.0f} messages/s)"),
        ("answers", f"{figures.replies:,} replies, {figures.huhs:,} huhs"),
        ("server counters", f"accepted={figures.accepted:,} handled={figures.handled:,} errored={figures.errored:,} "
                            f"in_flight={figures.in_flight}"),
        ("errored by reason", json.dumps(figures.errored_by_reason, sort_keys=True)),
        ("left open", f"conversations={figures.conversations} threads={figures.threads} "
                      f"context_threads={figures.context_threads} frames_dropped={figures.frames_dropped}"),
        ("VmRSS after warm-up", f"{figures.rss_warm_kib / 1024:.1f} MiB"),
        ("VmRSS after soak", f"{figures.rss_after_kib / 1024:.1f} MiB (growth {figures.rss_growth_kib / 1024:+.1f} MiB)"),
        ("exit code, last line", f"{figures.exit_code}: {figures.final_line.split(': ', 1)[-1]}"),
        ("verdict", "ok" if figures.ok else "FAILED:\n  " + "\n  ".join(figures.problems)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000, help="messages after the warm-up (default 50000)")
    parser.add_argument("--warmup", type=int, default=5_000, help="warm-up messages (default 5000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent socket clients (default 4)")
    parser.add_argument("--window", type=int, default=32, help="unanswered messages per client at most (default 32)")
    parser.add_argument("--invalid-every", type=int, default=10, help="every Nth message is invalid (default 10)")
    parser.add_argument("--slow-every", type=int, default=7, help="every Nth message goes to the slow handler (default 7)")
    parser.add_argument("--slow-seconds", type=float, default=0.002, help="how long the slow handler sleeps (default 0.002)")
    parser.add_argument("--rss-limit-mib", type=float, default=20.0, help="allowed VmRSS growth after the warm-up (default 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    plan = Plan(clients=args.clients, window=args.window, invalid_every=args.invalid_every,
                slow_every=args.slow_every, slow_seconds=args.slow_seconds)
    figures = soak(args.messages, args.warmup, plan, args.rss_limit_mib)
    print(render(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(figures), indent=2, sort_keys=True))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
