"""The organism on NATS JetStream (DESIGN.md §15): does a second member add throughput?

    python scripts/bench_cluster.py                 # 2,000 messages, handlers of 5 ms CPU
    python scripts/bench_cluster.py --messages 200  # a quick look
    python scripts/bench_cluster.py --json

What it runs, all real processes on this machine (nats-server from Debian's package):

- throughput: a fresh nats-server; 1 member, then 2 members (`agentserver run
  --transport`), each its own process; N messages to a handler that spins 5 ms of CPU
  and answers. The clients (one per member, asks kept 64 in flight each) split the N
  messages evenly across the members' sockets, as clients of a real organism would.
  Timed from the first send to the last reply.
- per-hop overhead: one message at a time to a handler that does nothing, p50 of the
  round trip over the socket, with one member on NATS against the same organism in
  one process (no transport).

The target (DESIGN.md §15) is 2 members >= 1.6x the messages of 1 member per second.
Machines are shared and noisy: the figures are one run's, and nothing asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentserver.client import connect  # noqa: E402
from tests.cluster_organisms import Done, Job  # noqa: E402

CONFIG = """organism:
  name: {name}
  socket: run/agentserver.sock
max_concurrent_handlers: 8
listeners:
  - name: jobs
    payload_class: tests.cluster_organisms.Job
    handler: tests.cluster_organisms.handle_job
    concurrency: 16
"""
IN_FLIGHT = 64  # asks in flight per client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    def __init__(self, args: list[str], workdir: Path, log: Path) -> None:
        self.log = log
        self.out = open(log, "w")
        environment = {**os.environ, "PYTHONPATH": str(ROOT)}
        environment.pop("AS_RECORD", None)
        self.process = subprocess.Popen(args, cwd=workdir, env=environment, stdout=self.out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.out.close()


def start_nats(work: Path) -> tuple[Process, str]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    nats = Process([binary, "-js", "-sd", str(work / "nats-store"), "-a", "127.0.0.1", "-p", str(port)], work, work / "nats.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return nats, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nats-server did not start")


def start_member(work: Path, name: str, index: int, transport: str | None) -> tuple[Process, Path]:
    directory = work / f"{name}-{index}"
    directory.mkdir()
    (directory / "organism.yaml").write_text(CONFIG.format(name=name))
    args = [sys.executable, "-m", "agentserver", "run", "organism.yaml", "--log-level", "WARNING"]
    if transport:
        args += ["--transport", transport]
    process = Process(args, directory, directory / "member.log")
    socket_path = directory / "run" / "agentserver.sock"
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if process.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"member did not start:\n{process.log.read_text()}")
        time.sleep(0.05)
    return process, socket_path


async def drive(socket_path: Path, jobs: list[Job]) -> None:
    async with connect(socket_path, payloads=[Job, Done]) as client:
        room = asyncio.Semaphore(IN_FLIGHT)

        async def one(job: Job) -> None:
            async with room:
                reply = await client.ask(job, to="jobs", timeout=300)
                assert isinstance(reply.payload, Done) and reply.payload.n == job.n

        await asyncio.gather(*(one(job) for job in jobs))


def throughput(work: Path, transport: str, members: int, messages: int, spin_ms: int) -> float:
    started = [start_member(work, f"bench{members}", index, transport) for index in range(members)]
    try:
        asyncio.run(drive(started[0][1], [Job(n=-1 - n, spin_ms=spin_ms) for n in range(20)]))  # warm up
        jobs = [Job(n=n, spin_ms=spin_ms) for n in range(messages)]
        shares = [jobs[index::members] for index in range(members)]

        async def all_members() -> None:
            await asyncio.gather(*(drive(path, share) for (_, path), share in zip(started, shares)))

        begin = time.perf_counter()
        asyncio.run(all_members())
        return messages / (time.perf_counter() - begin)
    finally:
        for process, _ in started:
            process.stop()


def hop_p50(work: Path, name: str, transport: str | None, rounds: int) -> float:
    process, path = start_member(work, name, 0, transport)
    try:
        async def measure() -> list[float]:
            async with connect(path, payloads=[Job, Done]) as client:
                for n in range(20):
                    await client.ask(Job(n=n), to="jobs")
                times = []
                for n in range(rounds):
                    begin = time.perf_counter()
                    await client.ask(Job(n=n), to="jobs")
                    times.append(time.perf_counter() - begin)
                return times

        return statistics.median(asyncio.run(measure())) * 1000
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--spin-ms", type=int, default=5, help="CPU each handler call spends (default 5)")
    parser.add_argument("--rounds", type=int, default=300, help="sequential asks for the per-hop figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    nats, url = start_nats(work)
    try:
        one = throughput(work, url, 1, args.messages, args.spin_ms)
        two = throughput(work, url, 2, args.messages, args.spin_ms)
        alone = hop_p50(work, "alone", None, args.rounds)
        on_nats = hop_p50(work, "hop", url, args.rounds)
    finally:
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures = {"messages": args.messages, "spin_ms": args.spin_ms, "cores": os.cpu_count(),
               "one_member_msgs_per_s": round(one, 1), "two_members_msgs_per_s": round(two, 1),
               "scaling": round(two / one, 2), "target_scaling": 1.6,
               "ask_p50_ms_one_process": round(alone, 3), "ask_p50_ms_on_nats": round(on_nats, 3),
               "nats_hop_overhead_ms": round(on_nats - alone, 3), "nats_hop_ratio": round(on_nats / alone, 2)}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{args.messages} messages, handlers of {args.spin_ms} ms CPU, {os.cpu_count()} cores, nats-server on loopback")
    print(f"  1 member            {one:9.1f} msg/s")
    print(f"  2 members           {two:9.1f} msg/s   {two / one:.2f}x  (target >= 1.6x)  "
          f"{'PASS' if two / one >= 1.6 else 'MISS'}")
    print("per hop, one ask at a time over the socket (p50):")
    print(f"  one process         {alone:9.3f} ms")
    print(f"  1 member on NATS    {on_nats:9.3f} ms   {on_nats / alone:.2f}x  (+{on_nats - alone:.3f} ms per hop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
