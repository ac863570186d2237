#!/usr/bin/env python
"""Benchmark the pump against the floor of its own XML work, and print one table.

    python scripts/bench.py                     # full run (a few minutes at most)
    python scripts/bench.py --quick             # short run, smaller counts (says so in the table)
    python scripts/bench.py --json figures.json # also write every figure as JSON
    python scripts/bench.py --profile DIR       # cProfile the throughput runs only (DIR/*.prof)
    python scripts/bench.py --peers             # also run the workloads on autogen-core (pip install -e '.[bench]')

Rows, all measured in the same run:

- floor: µs per message for the pump's XML work done directly in a tight loop (no
  pump): safe parse, exclusive C14N, envelope validation (+ reading <meta>), payload
  extraction, payload XSD validation, `Cls.parse`, and building the response envelope
  (xmlable `xml_value()` of the reply object, `build_envelope`, `etree.tostring`);
  best of three passes taken before, between and after the throughput runs;
- throughput: N pre-built envelopes, each on a new thread UUID, injected as fast as the
  pump takes them, timed until nothing is in flight; one hop (handler returns None) and
  two hops (the handler forwards once to a listener that returns None); µs per hop and
  the ratio to the floor, and the two-hop/one-hop cost per injected message;
- closed-loop latency (one message in flight), p50 and p99: in-process `ask`, and `ask`
  over the Unix socket of a server this script starts (`python -m agentserver run`).
  An ask is two hops of XML work (the request to echo, echo's reply to the client), so
  its targets are ratios to the *two-hop floor*, twice the floor measured in this run:
  absolute times do not carry across hosts, ratios to the same run's floor do. The
  absolute times are printed beside them;
- concurrency: 500 messages to a handler that sleeps 10 ms, max_concurrent_handlers 100
  (and the listener's own cap at 100), wall time against the ideal 50 ms (median of 3
  rounds);
- memory: VmRSS growth of this process (the pump runs in it) over M messages in M/10
  conversations (10 messages each, 100 conversations at a time), after a warm-up.

With `--peers`, a second table: the same workloads on autogen-core's
`SingleThreadedAgentRuntime` (scripts/bench_peers.py says how each is run there) and
the ratio ours / autogen-core (lower is better for us): 1 hop and 2 hops (µs per
hop), closed-loop request/response p50 and p99 (`client.ask` against their
`send_message`), and 500 x 10 ms handlers (wall time). Their agents receive the
dataclass itself; ours go through the whole pump, XML validation and all. Both sides
run in rotated rounds in this process (ABBA: ours then theirs, then theirs then ours,
...), so that drift on a shared machine hits both, and each side's figure is the
median of its rounds. Targets, reported and never gates: ≤ 0.7x per hop, ≤ 1.0x p50.

The organism is `scripts/bench_organism.py`. The pump's logger is set to WARNING.
Targets are what one run is compared with; a MISS does not fail the script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.util
import json
import logging
import math
import os
import platform
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
for _path in (str(SCRIPTS), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import lxml  # noqa: E402
from lxml import etree  # noqa: E402

import bench_organism as organism  # noqa: E402
from agentserver.config import load_config  # noqa: E402
from agentserver.envelope import build_envelope, load_envelope_schema, payload_elements, read_meta  # noqa: E402
from agentserver.message_bus.stream_pump import StreamPump  # noqa: E402
from agentserver.xmlsafe import SafeXml  # noqa: E402

CLIENT = "bench"
TEXT = "hello, bench"


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Counts:
    floor: int  # messages through the direct loop
    throughput: int  # envelopes per throughput run (each on its own thread)
    warmup: int  # envelopes before each throughput run
    latency: int  # in-process asks
    socket: int  # socket asks
    latency_warmup: int
    concurrency_messages: int
    concurrency_handlers: int
    concurrency_rounds: int
    memory_conversations: int
    memory_messages_per_conversation: int
    memory_warmup_conversations: int
    memory_batch: int  # conversations in flight at once
    peer_rounds: int  # --peers: rounds per side
    peer_throughput: int  # --peers: messages per hop round
    peer_latency: int  # --peers: request/responses per round


FULL = Counts(
    floor=20_000, throughput=20_000, warmup=2_000, latency=5_000, socket=5_000, latency_warmup=200,
    concurrency_messages=500, concurrency_handlers=100, concurrency_rounds=3,
    memory_conversations=10_000, memory_messages_per_conversation=10, memory_warmup_conversations=2_000,
    memory_batch=100, peer_rounds=7, peer_throughput=5_000, peer_latency=1_000,
)
QUICK = Counts(
    floor=5_000, throughput=5_000, warmup=500, latency=1_000, socket=1_000, latency_warmup=100,
    concurrency_messages=500, concurrency_handlers=100, concurrency_rounds=3,
    memory_conversations=2_000, memory_messages_per_conversation=10, memory_warmup_conversations=500,
    memory_batch=100, peer_rounds=3, peer_throughput=2_000, peer_latency=300,
)

# ours / autogen-core, in rotated rounds (--peers): workload -> (what is compared, its unit)
PEER_WORKLOADS: dict[str, tuple[str, str]] = {
    "one_hop": ("1 hop", "µs/hop"),
    "two_hops": ("2 hops", "µs/hop"),
    "ask_p50": ("request/response p50", "ms"),
    "ask_p99": ("request/response p99", "ms"),
    "naps": ("500 x 10 ms handlers", "ms"),
}
# figure key -> the most it may be for PASS. The latency targets are ratios to the
# two-hop floor of the same run (see the module docstring). A socket ask adds to an
# in-process one two frames through the kernel, a second process woken twice and the
# client's parse of the reply: over 13 runs on the project's shared 2-CPU machine,
# 3x the two-hop floor (median; 1x-7x), so the socket p50 target is the in-process
# one plus 3x. Socket p99 was 5x-13x there except when the process lost the CPU for a
# 4 ms scheduler tick (45x-112x): 10x is for a quiet host.
TARGETS: dict[str, float] = {
    "one_hop_x_floor": 2.0,
    "two_hops_x_floor": 2.0,
    "two_vs_one_hop": 2.1,
    "inproc_p50_x_floor2": 1.5,
    "socket_p50_x_floor2": 4.5,
    "socket_p99_x_floor2": 10.0,
    "concurrency_x_ideal": 2.0,
    "rss_growth_mib": 20.0,
    "journal_x_off": 1.5,
    "peer_call_x_ask": 1.0,
    # --peers: ours / autogen-core
    "one_hop_x_autogen": 0.7,
    "two_hops_x_autogen": 0.7,
    "ask_p50_x_autogen": 1.0,
}

# every figure the JSON carries (None when it could not be measured)
FIGURES = (
    "floor_us",
    "one_hop_us_per_hop",
    "one_hop_x_floor",
    "two_hops_us_per_hop",
    "two_hops_x_floor",
    "two_vs_one_hop",
    "two_hop_floor_us",
    "inproc_p50_ms",
    "inproc_p50_x_floor2",
    "inproc_p99_ms",
    "inproc_p99_x_floor2",
    "socket_p50_ms",
    "socket_p50_x_floor2",
    "socket_p99_ms",
    "socket_p99_x_floor2",
    "concurrency_wall_ms",
    "concurrency_ideal_ms",
    "concurrency_x_ideal",
    "rss_growth_mib",
    "peer_ask_p50_ms",
    "peer_call_x_ask",
    "journal_us_per_hop",
    "journal_off_us_per_hop",
    "journal_x_off",
) + tuple(f"{workload}_{what}" for workload in PEER_WORKLOADS for what in ("ours", "autogen", "x_autogen"))


class BenchError(RuntimeError):
    """The pump did not do what the bench asked (lost or refused messages)."""


# ---------------------------------------------------------------------------- helpers
def envelope(tag: str, to: str, fields: dict[str, Any], *, thread: str | None = None) -> bytes:
    """Envelope bytes from CLIENT, built the way clients build them (lxml, escaped)."""
    payload = etree.Element(tag)
    for name, value in fields.items():
        etree.SubElement(payload, name).text = str(value)
    root = build_envelope(payload, sender=CLIENT, to=to, thread=thread or str(uuid.uuid4()))
    return etree.tostring(root)


def envelopes(tag: str, to: str, n: int, fields: dict[str, Any] | None = None) -> list[bytes]:
    """n envelopes, each on a new thread UUID (fields default to <Seq>i</Seq><Text>...</Text>)."""
    return [envelope(tag, to, fields if fields is not None else {"Seq": i, "Text": TEXT}) for i in range(n)]


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def vmrss_kib() -> int | None:
    """This process's resident set size from /proc/self/status, in KiB (None off Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def make_pump(**options: Any) -> StreamPump:
    return StreamPump(load_config("<bench organism>", text=organism.config_yaml(**options)))


@contextlib.asynccontextmanager
async def running_pump(**options: Any):
    async with make_pump(**options) as pump:
        await pump.idle()  # the Boot message has gone through
        yield pump


async def drain(pump: StreamPump) -> None:
    """Wait until nothing is in flight (the pump sets `_idle` when in_flight reaches 0)."""
    await pump.idle()
    if pump.counters.in_flight != 0:  # pragma: no cover - a pump bug
        raise BenchError(f"pump idle with {pump.counters.in_flight} units in flight")


async def inject_all(pump: StreamPump, raws: list[bytes]) -> None:
    inject = pump.inject
    for raw in raws:
        await inject(raw, from_id=CLIENT)


def expect(pump: StreamPump, before: tuple[int, int], units: int, what: str) -> None:
    accepted = pump.counters.accepted - before[0]
    errored = pump.counters.errored_total - before[1]
    if errored or accepted != units:
        reasons = dict(pump.counters.errored)
        raise BenchError(f"{what}: expected {units} units without error, got {accepted} accepted, "
                         f"{errored} errored {reasons}")


def snapshot(pump: StreamPump) -> tuple[int, int]:
    return pump.counters.accepted, pump.counters.errored_total


# ---------------------------------------------------------------------------- 1. floor
def measure_floor(raws: list[bytes], *, stages: bool = True) -> dict[str, Any]:
    """The pump's XML work for one message, done directly: µs per message (and per stage)."""
    xml = SafeXml()
    envelope_schema = load_envelope_schema()
    payload_class = organism.Ping
    payload_schema = etree.XMLSchema(payload_class.xsd(namespaces={}, imports={}))
    tostring = etree.tostring

    def one(raw: bytes) -> bytes:
        root = xml.parse(raw)
        tostring(root, method="c14n", exclusive=True)
        if not envelope_schema.validate(root):
            raise BenchError("floor: envelope invalid")
        meta = read_meta(root)
        element = payload_elements(root)[0]
        if not payload_schema.validate(element):
            raise BenchError("floor: payload invalid")
        payload = payload_class.parse(element)
        reply = build_envelope(payload.xml_value().getroot(), sender="sink", to=meta.sender, thread=meta.thread)
        return tostring(reply)

    for raw in raws[: min(1000, len(raws))]:  # warm-up
        one(raw)
    start = time.perf_counter()
    for raw in raws:
        one(raw)
    per_message = (time.perf_counter() - start) / len(raws) * 1e6
    if not stages:
        return {"us_per_message": per_message, "messages": len(raws)}

    # the same work stage by stage (batched), for the record
    stage_us: dict[str, float] = {}

    def stage(name: str, fn: Callable[[Any], Any], items: list) -> list:
        t0 = time.perf_counter()
        out = [fn(item) for item in items]
        stage_us[name] = (time.perf_counter() - t0) / len(items) * 1e6
        return out

    roots = stage("parse", xml.parse, raws)
    stage("c14n", lambda r: tostring(r, method="c14n", exclusive=True), roots)
    stage("envelope_validation", envelope_schema.validate, roots)
    metas = stage("read_meta", read_meta, roots)
    elements = stage("payload_extraction", lambda r: payload_elements(r)[0], roots)
    stage("payload_xsd", payload_schema.validate, elements)
    payloads = stage("deserialize", payload_class.parse, elements)
    replies = stage("xml_value", lambda p: p.xml_value().getroot(), payloads)
    stage("build_envelope+tostring",
          lambda pair: tostring(build_envelope(pair[0], sender="sink", to=pair[1].sender, thread=pair[1].thread)),
          list(zip(replies, metas)))
    return {"us_per_message": per_message, "stages_us": stage_us, "messages": len(raws)}


# ---------------------------------------------------------------------------- 2. throughput
async def measure_throughput(pump: StreamPump, raws: list[bytes], hops: int, warm: list[bytes],
                             profiler: cProfile.Profile | None = None) -> dict[str, Any]:
    await drain(pump)
    await inject_all(pump, warm)
    await drain(pump)
    gc.collect()
    before = snapshot(pump)
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter()
    await inject_all(pump, raws)
    await drain(pump)
    elapsed = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    expect(pump, before, len(raws) * hops, f"{hops}-hop throughput")
    return {
        "envelopes": len(raws),
        "hops": hops,
        "seconds": elapsed,
        "us_per_message": elapsed / len(raws) * 1e6,
        "us_per_hop": elapsed / (len(raws) * hops) * 1e6,
        "messages_per_s": len(raws) * hops / elapsed,
    }


async def measure_journal(counts: Counts) -> dict[str, Any]:
    """One hop, N messages, with `organism.journal` (SQLite, fsync per group commit) and
    without, alternated (off, on, off, on): the best of two of each. Every unit is
    written before it is processed and marked done after; the run ends when all of it
    is on disk (`idle()` waits for the journal)."""
    raws = envelopes("Ping", "sink", counts.throughput)
    warm = envelopes("Ping", "sink", counts.warmup)
    best: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as directory:
        for n, mode in enumerate(("off", "on", "off", "on")):
            path = os.path.join(directory, f"journal-{n}.db") if mode == "on" else None
            async with running_pump(journal=path) as pump:
                run = await measure_throughput(pump, raws, 1, warm)
            if mode not in best or run["us_per_hop"] < best[mode]["us_per_hop"]:
                best[mode] = run
    return {**best, "x_off": best["on"]["us_per_hop"] / best["off"]["us_per_hop"]}


# ---------------------------------------------------------------------------- 3. latency
def latency_figures(samples_ns: list[int]) -> dict[str, Any]:
    ms = [s / 1e6 for s in samples_ns]
    return {"samples": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "mean_ms": statistics.fmean(ms), "max_ms": max(ms)}


async def measure_inproc_latency(pump: StreamPump, n: int, warm: int, *, through_peer: bool = False) -> dict[str, Any]:
    """Closed-loop in-process asks of `echo` (two hops), or of `caller`, whose handler
    awaits `echo` with meta.ask (`through_peer`: four hops, one handler waiting)."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    payload_class, to = (organism.Call, "caller") if through_peer else (organism.Echo, "echo")
    async with pump.client(CLIENT) as client:
        for i in range(warm):
            await client.ask(payload_class(seq=i, text=TEXT), to=to, timeout=5)
        await drain(pump)
        for i in range(n):
            start = clock()
            reply = await client.ask(payload_class(seq=i, text=TEXT), to=to, timeout=5)
            samples.append(clock() - start)
            if reply.payload.seq != i:
                raise BenchError(f"in-process ask: reply {reply.payload!r} to seq {i}")
    return latency_figures(samples)


class SocketUnavailable(Exception):
    """The socket server or client could not be used; the row says n/a."""


async def measure_socket_latency(n: int, warm: int) -> dict[str, Any]:
    """`ask` over the Unix socket of `python -m agentserver run` started here."""
    if importlib.util.find_spec("agentserver.client") is None:
        raise SocketUnavailable("agentserver.client does not exist")
    if importlib.util.find_spec("agentserver.__main__") is None:
        raise SocketUnavailable("agentserver has no __main__ (python -m agentserver)")
    from agentserver.client import connect  # the socket client (DESIGN.md §4)

    workdir = tempfile.mkdtemp(prefix="agentserver-bench-")
    socket_path = os.path.join(workdir, "bench.sock")
    config_path = os.path.join(workdir, "organism.yaml")
    log_path = os.path.join(workdir, "server.log")
    Path(config_path).write_text(organism.config_yaml(name="bench-socket", socket=socket_path), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    log_file = open(log_path, "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentserver", "run", config_path, "--socket", socket_path, "--log-level", "WARNING",
        cwd=str(SCRIPTS), env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
    )

    def server_log() -> str:
        log_file.flush()
        text = Path(log_path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return text[-1] if text else "(no output)"

    try:
        client = None
        deadline = time.monotonic() + 20
        last_error: Exception | None = None
        while client is None:
            if proc.returncode is not None:
                raise SocketUnavailable(f"server exited with code {proc.returncode}: {server_log()}")
            if time.monotonic() > deadline:
                raise SocketUnavailable(f"server did not answer on {socket_path} within 20 s "
                                        f"({type(last_error).__name__ if last_error else 'no socket'}); {server_log()}")
            if os.path.exists(socket_path):
                try:
                    client = await connect(socket_path, name=CLIENT)
                except (ConnectionError, FileNotFoundError, OSError) as exc:
                    last_error = exc
            if client is None:
                try:
                    await asyncio.wait_for(proc.wait(), 0.05)
                except TimeoutError:
                    pass
        samples: list[int] = []
        clock = time.perf_counter_ns
        async with client as c:
            for i in range(warm):
                await c.ask(f"<Echo><Seq>{i}</Seq><Text>{TEXT}</Text></Echo>", to="echo", timeout=5)
            for i in range(n):
                text = f"<Echo><Seq>{i}</Seq><Text>{TEXT}</Text></Echo>"
                start = clock()
                await c.ask(text, to="echo", timeout=5)
                samples.append(clock() - start)
        return latency_figures(samples)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log_file.close()
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------- 4. concurrency
async def nap_round(pump: StreamPump, n: int) -> float:
    """n messages to the sleeper, injected at once: ms until every handler has ended."""
    raws = envelopes("Nap", "sleeper", n, {"Seq": 1})
    before = snapshot(pump)
    start = time.perf_counter()
    await inject_all(pump, raws)
    await drain(pump)
    wall_ms = (time.perf_counter() - start) * 1e3
    expect(pump, before, n, "concurrency")
    return wall_ms


async def measure_concurrency(counts: Counts) -> dict[str, Any]:
    n, slots = counts.concurrency_messages, counts.concurrency_handlers
    ideal_ms = math.ceil(n / slots) * 10.0
    walls: list[float] = []
    async with running_pump(max_concurrent_handlers=slots) as pump:
        await inject_all(pump, envelopes("Nap", "sleeper", slots, {"Seq": 0}))  # warm-up
        await drain(pump)
        for _ in range(counts.concurrency_rounds):
            walls.append(await nap_round(pump, n))
        pipelines = pump.config.max_concurrent_pipelines
    wall = statistics.median(walls)
    return {"messages": n, "max_concurrent_handlers": slots, "max_concurrent_pipelines": pipelines,
            "wall_ms": wall, "walls_ms": walls, "ideal_ms": ideal_ms, "x_ideal": wall / ideal_ms}


# ---------------------------------------------------------------------------- 5. memory
async def run_conversations(pump: StreamPump, raws: list[bytes], batch: int, per_conversation: int) -> None:
    for i in range(0, len(raws), batch):
        chunk = raws[i : i + batch]
        before = snapshot(pump)
        await inject_all(pump, chunk)
        await drain(pump)
        expect(pump, before, len(chunk) * per_conversation, "memory conversations")


async def measure_memory(counts: Counts) -> dict[str, Any]:
    per = counts.memory_messages_per_conversation
    fields = {"Left": per - 1, "Text": TEXT}
    warm = [envelope("Volley", "ping", fields) for _ in range(counts.memory_warmup_conversations)]
    raws = [envelope("Volley", "ping", fields) for _ in range(counts.memory_conversations)]
    async with running_pump() as pump:
        await run_conversations(pump, warm, counts.memory_batch, per)
        gc.collect()
        before = vmrss_kib()
        start = time.perf_counter()
        await run_conversations(pump, raws, counts.memory_batch, per)
        seconds = time.perf_counter() - start
        gc.collect()
        after = vmrss_kib()
        state = {"threads": len(pump.stores.threads), "conversations": pump.stores.threads.conversations,
                 "context_threads": len(pump.stores.history), "todos": len(pump.stores.todos)}
    growth = None if before is None or after is None else (after - before) / 1024
    return {"messages": len(raws) * per, "conversations": len(raws), "warmup_messages": len(warm) * per,
            "in_flight_conversations": counts.memory_batch, "rss_before_mib": before / 1024 if before else None,
            "rss_after_mib": after / 1024 if after else None, "rss_growth_mib": growth, "seconds": seconds,
            "pump_state_after": state}


# ---------------------------------------------------------------------------- 6. peers
def load_peers() -> tuple[Any, str]:
    """(the bench_peers module, "ok"), or (None, why not) when autogen-core is not installed."""
    try:
        import bench_peers
    except ImportError as exc:
        if not (exc.name or "").startswith("autogen_core"):
            raise
        return None, ("n/a: autogen-core is not installed; `pip install -e '.[bench]'` "
                      "(autogen-core==0.7.5) to compare with it")
    return bench_peers, "ok"


async def compare_peers(counts: Counts, peers: Any, progress: Callable[[str], None]) -> dict[str, Any]:
    """The same workloads on the pump and on autogen-core, in rotated rounds (see the module docstring)."""
    n, rounds, naps = counts.peer_throughput, counts.peer_rounds, counts.concurrency_messages
    ours: dict[str, list[float]] = {key: [] for key in PEER_WORKLOADS}
    theirs: dict[str, list[float]] = {key: [] for key in PEER_WORKLOADS}

    async with running_pump() as pump, running_pump(max_concurrent_handlers=counts.concurrency_handlers) as nap_pump, \
            peers.Peer() as peer:
        text = peers.TEXT

        async def our_round() -> None:
            one = await measure_throughput(pump, envelopes("Ping", "sink", n), 1, [])
            two = await measure_throughput(pump, envelopes("Relay", "relay", n), 2, [])
            gc.collect()
            asks = await measure_inproc_latency(pump, counts.peer_latency, 0)
            gc.collect()
            wall = await nap_round(nap_pump, naps)
            for key, value in (("one_hop", one["us_per_hop"]), ("two_hops", two["us_per_hop"]),
                               ("ask_p50", asks["p50_ms"]), ("ask_p99", asks["p99_ms"]), ("naps", wall)):
                ours[key].append(value)

        async def their_round() -> None:
            pings = [peers.Ping(seq=i, text=text) for i in range(n)]
            relays = [peers.Relay(seq=i, text=text) for i in range(n)]
            gc.collect()
            one = await peer.one_way("sink", pings, {"sink": n})
            gc.collect()
            two = await peer.one_way("relay", relays, {"relay": n, "sink": n})
            gc.collect()
            asks = latency_figures(await peer.latency(counts.peer_latency))
            gc.collect()
            wall = await peer.one_way("sleeper", [peers.Nap(seq=i) for i in range(naps)], {"sleeper": naps})
            for key, value in (("one_hop", one / n * 1e6), ("two_hops", two / (2 * n) * 1e6),
                               ("ask_p50", asks["p50_ms"]), ("ask_p99", asks["p99_ms"]), ("naps", wall * 1e3)):
                theirs[key].append(value)

        progress("peers: warm-up")
        await inject_all(pump, envelopes("Ping", "sink", counts.warmup) + envelopes("Relay", "relay", counts.warmup))
        await measure_inproc_latency(pump, counts.latency_warmup, 0)
        await nap_round(nap_pump, counts.concurrency_handlers)
        await drain(pump)
        await peer.warm(counts.latency_warmup)
        for i in range(rounds):  # ABBA: ours first in even rounds, theirs first in odd ones
            progress(f"peers: round {i + 1} of {rounds}")
            for side in ((our_round, their_round) if i % 2 == 0 else (their_round, our_round)):
                await side()

    workloads: dict[str, Any] = {}
    for key, (label, unit) in PEER_WORKLOADS.items():
        mine, other = statistics.median(ours[key]), statistics.median(theirs[key])
        workloads[key] = {"label": label, "unit": unit, "ours": mine, "autogen": other, "x_autogen": mine / other,
                          "ours_rounds": ours[key], "autogen_rounds": theirs[key]}
    return {"status": "ok", "autogen_core": peers.VERSION, "rounds": rounds, "statistic": "median of rounds",
            "order": "ABBA (ours, theirs; theirs, ours; ...)", "messages_per_hop_round": n,
            "asks_per_round": counts.peer_latency, "naps": naps, "our_handler_cap": counts.concurrency_handlers,
            "workloads": workloads}


# ---------------------------------------------------------------------------- the table
def verdict(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return "PASS" if value <= TARGETS[key] else "MISS"


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]
    line = "  ".join("{:<%d}" % w for w in widths)
    return [line.format(*headers), line.format(*("-" * w for w in widths))] + [line.format(*row) for row in rows]


def render(results: dict[str, Any]) -> str:
    f = results["figures"]
    c = results["counts"]
    quick = results["mode"] == "quick"
    full = asdict(FULL)

    def counted(key: str) -> str:
        """The count used, and the full run's count when --quick scaled it down."""
        text = f"{c[key]:,}"
        if quick and c[key] != full[key]:
            text += f" (quick; full {full[key]:,})"
        return text

    def latency(kind: str, q: str) -> str:
        ms, ratio = f[f"{kind}_{q}_ms"], f[f"{kind}_{q}_x_floor2"]
        return f"{fmt(ms, '.3f')} ms = {fmt(ratio, '.2f')}x two-hop floor"

    def floor2(key: str) -> str:
        return f"≤ {TARGETS[key]:g}x two-hop floor"

    socket_na = results["socket"]["status"] != "ok"
    na = "n/a (server not available)"
    rows = [
        ("floor: direct lxml+xmlable, per message",
         f"{fmt(f['floor_us'], '.1f')} µs (best of 3 passes); two hops {fmt(f['two_hop_floor_us'], '.1f')} µs", "-", "-"),
        (f"pump 1 hop, N={counted('throughput')}",
         f"{fmt(f['one_hop_us_per_hop'], '.1f')} µs/hop = {fmt(f['one_hop_x_floor'], '.2f')}x floor",
         "≤ 2.0x floor", verdict("one_hop_x_floor", f["one_hop_x_floor"])),
        (f"pump 2 hops, N={counted('throughput')}",
         f"{fmt(f['two_hops_us_per_hop'], '.1f')} µs/hop = {fmt(f['two_hops_x_floor'], '.2f')}x floor",
         "≤ 2.0x floor", verdict("two_hops_x_floor", f["two_hops_x_floor"])),
        ("2 hops vs 1 hop, cost per message", f"{fmt(f['two_vs_one_hop'], '.2f')}x",
         "≤ 2.1x", verdict("two_vs_one_hop", f["two_vs_one_hop"])),
        (f"in-process ask p50, n={counted('latency')}", latency("inproc", "p50"),
         floor2("inproc_p50_x_floor2"), verdict("inproc_p50_x_floor2", f["inproc_p50_x_floor2"])),
        (f"in-process ask p99, n={counted('latency')}", latency("inproc", "p99"), "-", "-"),
        (f"ask round trip, in-process, through a peer, n={counted('latency')}",
         f"p50 {fmt(f['peer_ask_p50_ms'], '.3f')} ms: the awaited call adds {fmt(f['peer_call_x_ask'], '.2f')}x "
         "a two-hop ask", "≤ 1.0x", verdict("peer_call_x_ask", f["peer_call_x_ask"])),
        (f"socket ask p50, n={counted('socket')}", na if socket_na else latency("socket", "p50"),
         floor2("socket_p50_x_floor2"), verdict("socket_p50_x_floor2", f["socket_p50_x_floor2"])),
        (f"socket ask p99, n={counted('socket')}", na if socket_na else latency("socket", "p99"),
         floor2("socket_p99_x_floor2"), verdict("socket_p99_x_floor2", f["socket_p99_x_floor2"])),
        (f"concurrency: {c['concurrency_messages']} x 10 ms sleep, {c['concurrency_handlers']} handlers",
         f"{fmt(f['concurrency_wall_ms'], '.1f')} ms = {fmt(f['concurrency_x_ideal'], '.2f')}x ideal "
         f"{fmt(f['concurrency_ideal_ms'], '.0f')} ms",
         "≤ 2x ideal", verdict("concurrency_x_ideal", f["concurrency_x_ideal"])),
        (f"memory: RSS growth, {results['memory']['messages']:,} msgs / {c['memory_conversations']:,} conv."
         + (f" (quick; full {full['memory_conversations'] * full['memory_messages_per_conversation']:,}"
            f" / {full['memory_conversations']:,})" if quick else ""),
         f"{fmt(f['rss_growth_mib'], '+.1f')} MiB", "≤ 20 MiB", verdict("rss_growth_mib", f["rss_growth_mib"])),
        (f"journal on vs off, 1 hop, N={counted('throughput')}",
         f"{fmt(f['journal_us_per_hop'], '.1f')} vs {fmt(f['journal_off_us_per_hop'], '.1f')} µs/hop = "
         f"{fmt(f['journal_x_off'], '.2f')}x", "≤ 1.5x", verdict("journal_x_off", f["journal_x_off"])),
    ]
    out = [
        f"agentserver bench: {results['mode']} run"
        + (" (--quick: counts scaled down where marked)" if quick else "")
        + f" | Python {platform.python_version()}, lxml {lxml.__version__}, {os.cpu_count()} CPUs, {platform.machine()}",
        *table(("measure", "figure", "target", "result"), rows),
    ]
    if socket_na:
        out.append(f"socket: {results['socket']['status']}")
    peers = results["peers"]
    if peers["status"] == "ok":
        out += ["", *render_peers(peers, counted)]
    elif peers["status"] != "not requested":
        out.append(f"peers: {peers['status']}")
    return "\n".join(out)


def render_peers(peers: dict[str, Any], counted: Callable[[str], str]) -> list[str]:
    """The --peers table: ours and autogen-core's figure per workload, and the ratio."""
    w = peers["workloads"]
    per_round = {"one_hop": f", N={counted('peer_throughput')}", "two_hops": f", N={counted('peer_throughput')}",
                 "ask_p50": f", n={counted('peer_latency')}", "ask_p99": f", n={counted('peer_latency')}", "naps": ""}
    ours_note = {"naps": f" (cap {peers['our_handler_cap']})"}
    theirs_note = {"naps": " (no cap)"}
    rows = []
    for key, figures in w.items():
        spec = ".1f" if figures["unit"] != "ms" or key == "naps" else ".3f"
        target_key = f"{key}_x_autogen"
        target = TARGETS.get(target_key)
        rows.append((
            f"peers: {figures['label']}{per_round[key]}",
            f"{format(figures['ours'], spec)} {figures['unit']}{ours_note.get(key, '')}",
            f"{format(figures['autogen'], spec)} {figures['unit']}{theirs_note.get(key, '')}",
            f"{figures['x_autogen']:.2f}x",
            "-" if target is None else f"≤ {target:g}x",
            "-" if target is None else verdict(target_key, figures["x_autogen"]),
        ))
    head = (f"vs autogen-core {peers['autogen_core']} SingleThreadedAgentRuntime: {counted('peer_rounds')} rounds each "
            f"(N, n: per round), rotated (ABBA), {peers['statistic']}; ours / autogen-core, lower is better for us")
    return [head, *table(("workload", "ours", "autogen-core", "ours/autogen", "target", "result"), rows)]


# ---------------------------------------------------------------------------- main
async def bench(counts: Counts, mode: str, progress: Callable[[str], None], peers: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {"mode": mode, "counts": asdict(counts), "targets": dict(TARGETS)}
    f: dict[str, float | None] = {key: None for key in FIGURES}

    one_hop = envelopes("Ping", "sink", counts.throughput)
    two_hops = envelopes("Relay", "relay", counts.throughput)

    # The floor is measured three times, around the throughput runs, and the best pass
    # counts: a busy machine can only make the floor look slower, and a slower floor
    # would flatter the pump/floor ratios.
    progress("floor")
    floor = measure_floor(one_hop)
    passes = [floor["us_per_message"]]
    async with running_pump() as pump:
        progress("throughput, one hop")
        one = await measure_throughput(pump, one_hop, 1, envelopes("Ping", "sink", counts.warmup))
        progress("floor, again")
        passes.append(measure_floor(one_hop, stages=False)["us_per_message"])
        progress("throughput, two hops")
        two = await measure_throughput(pump, two_hops, 2, envelopes("Relay", "relay", counts.warmup))
        progress("floor, again")
        passes.append(measure_floor(one_hop, stages=False)["us_per_message"])
        progress("in-process latency")
        inproc = await measure_inproc_latency(pump, counts.latency, counts.latency_warmup)
        progress("in-process latency, through a peer (meta.ask)")
        via_peer = await measure_inproc_latency(pump, counts.latency, counts.latency_warmup, through_peer=True)
    floor["us_per_message"] = min(passes)
    floor["passes_us"] = passes
    results["floor"] = floor
    f["floor_us"] = floor["us_per_message"]
    results["throughput"] = {"one_hop": one, "two_hops": two}
    f["one_hop_us_per_hop"] = one["us_per_hop"]
    f["one_hop_x_floor"] = one["us_per_hop"] / f["floor_us"]
    f["two_hops_us_per_hop"] = two["us_per_hop"]
    f["two_hops_x_floor"] = two["us_per_hop"] / f["floor_us"]
    f["two_vs_one_hop"] = two["us_per_message"] / one["us_per_message"]
    results["inproc_latency"] = inproc
    f["two_hop_floor_us"] = floor2 = 2 * floor["us_per_message"]
    f["inproc_p50_ms"], f["inproc_p99_ms"] = inproc["p50_ms"], inproc["p99_ms"]
    f["inproc_p50_x_floor2"], f["inproc_p99_x_floor2"] = inproc["p50_ms"] * 1e3 / floor2, inproc["p99_ms"] * 1e3 / floor2
    results["peer_ask_latency"] = via_peer
    f["peer_ask_p50_ms"] = via_peer["p50_ms"]
    # what the awaited call adds to an ask (its two hops), against a whole ask of two hops
    f["peer_call_x_ask"] = (via_peer["p50_ms"] - inproc["p50_ms"]) / inproc["p50_ms"]

    progress("socket latency")
    try:
        sock = await measure_socket_latency(counts.socket, counts.latency_warmup)
        results["socket"] = {"status": "ok", **sock}
        f["socket_p50_ms"], f["socket_p99_ms"] = sock["p50_ms"], sock["p99_ms"]
        f["socket_p50_x_floor2"], f["socket_p99_x_floor2"] = sock["p50_ms"] * 1e3 / floor2, sock["p99_ms"] * 1e3 / floor2
    except SocketUnavailable as exc:
        results["socket"] = {"status": f"n/a: {exc}"}
    except Exception as exc:  # the socket server is new: a failure there must not sink the other rows
        results["socket"] = {"status": f"n/a: {type(exc).__name__}: {exc}"}

    progress("concurrency")
    conc = await measure_concurrency(counts)
    results["concurrency"] = conc
    f["concurrency_wall_ms"], f["concurrency_ideal_ms"], f["concurrency_x_ideal"] = conc["wall_ms"], conc["ideal_ms"], conc["x_ideal"]

    progress("journal on and off")
    journal = await measure_journal(counts)
    results["journal"] = journal
    f["journal_us_per_hop"], f["journal_off_us_per_hop"] = journal["on"]["us_per_hop"], journal["off"]["us_per_hop"]
    f["journal_x_off"] = journal["x_off"]

    progress("memory")
    mem = await measure_memory(counts)
    results["memory"] = mem
    f["rss_growth_mib"] = mem["rss_growth_mib"]

    results["peers"] = {"status": "not requested"}
    if peers:
        module, status = load_peers()
        if module is None:
            results["peers"] = {"status": status}
        else:
            progress("peers (autogen-core)")
            results["peers"] = await compare_peers(counts, module, progress)
            for key, figures in results["peers"]["workloads"].items():
                for what in ("ours", "autogen", "x_autogen"):
                    f[f"{key}_{what}"] = figures[what]

    results["figures"] = f
    results["verdicts"] = {key: verdict(key, f[key]) for key in TARGETS}
    return results


async def profile(counts: Counts, directory: Path) -> None:
    """cProfile the two throughput runs; write DIR/one_hop.prof and DIR/two_hops.prof."""
    directory.mkdir(parents=True, exist_ok=True)
    async with running_pump() as pump:
        for name, tag, to, hops in (("one_hop", "Ping", "sink", 1), ("two_hops", "Relay", "relay", 2)):
            profiler = cProfile.Profile()
            figures = await measure_throughput(pump, envelopes(tag, to, counts.throughput), hops,
                                               envelopes(tag, to, counts.warmup), profiler)
            path = directory / f"{name}.prof"
            profiler.dump_stats(str(path))
            print(f"== {name}: {figures['us_per_hop']:.1f} µs/hop under cProfile -> {path}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run with smaller counts (well under a minute)")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON to FILE")
    parser.add_argument("--profile", metavar="DIR", help="only cProfile the throughput runs, writing DIR/*.prof")
    parser.add_argument("--peers", action="store_true",
                        help="also run the workloads on autogen-core (pip install -e '.[bench]') and print the ratios")
    parser.add_argument("--verbose", action="store_true", help="say which part is running")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("agentserver").setLevel(logging.WARNING)
    counts, mode = (QUICK, "quick") if args.quick else (FULL, "full")

    if args.profile:
        asyncio.run(profile(counts, Path(args.profile)))
        return 0

    def progress(what: str) -> None:
        if args.verbose:
            print(f"... {what}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = asyncio.run(bench(counts, mode, progress, peers=args.peers))
    results["seconds"] = time.perf_counter() - started
    results["environment"] = {"python": platform.python_version(), "lxml": lxml.__version__,
                              "cpus": os.cpu_count(), "machine": platform.machine(), "platform": platform.platform()}
    table = render(results)
    results["table"] = table.splitlines()
    print(table)
    print(f"({results['seconds']:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
