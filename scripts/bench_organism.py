"""The organism `scripts/bench.py` measures: payloads and handlers, nothing else.

    sink      <Ping>  -> None                              (one hop)
    relay     <Relay> -> HandlerResponse(<Ping>, to=sink)   (two hops)
    echo      <Echo>  -> HandlerResponse.respond(<Echoed>)  (closed-loop latency, in-process and socket)
    caller    <Call>  -> await meta.ask("echo", <Echo>), respond(<Echoed>)  (an awaited call)
    sleeper   <Nap>   -> asyncio.sleep(0.010), None         (concurrency)
    ping/pong <Volley> back and forth until `left` is 0     (memory: 10 messages per conversation)

Payload modules must not use `from __future__ import annotations` (xmlable reads the
annotations as types). The bench puts this directory on sys.path; the socket server is
started with it as its working directory, so `bench_organism.X` resolves in both.
"""

import asyncio
from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse


@xmlify
@dataclass
class Ping:
    seq: int
    text: str


@xmlify
@dataclass
class Relay:
    seq: int
    text: str


@xmlify
@dataclass
class Echo:
    seq: int
    text: str


@xmlify
@dataclass
class Echoed:
    seq: int
    text: str


@xmlify
@dataclass
class Nap:
    seq: int


@xmlify
@dataclass
class Volley:
    left: int
    text: str


async def handle_sink(payload: Ping, meta: HandlerMetadata) -> None:
    return None


async def handle_relay(payload: Relay, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse(Ping(seq=payload.seq, text=payload.text), to="sink")


async def handle_echo(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Echoed(seq=payload.seq, text=payload.text))


@xmlify
@dataclass
class Call:
    seq: int
    text: str


async def handle_call(payload: Call, meta: HandlerMetadata) -> HandlerResponse:
    answer = await meta.ask("echo", Echo(seq=payload.seq, text=payload.text))
    return HandlerResponse.respond(Echoed(seq=answer.seq, text=answer.text))


async def handle_nap(payload: Nap, meta: HandlerMetadata) -> None:
    await asyncio.sleep(0.010)
    return None


def _volley(to: str):
    async def handle(payload: Volley, meta: HandlerMetadata) -> HandlerResponse | None:
        if payload.left <= 0:
            return None
        return HandlerResponse(Volley(left=payload.left - 1, text=payload.text), to=to)

    return handle


handle_ping = _volley("pong")
handle_pong = _volley("ping")

_PREFIX = "bench_organism."


def config_yaml(*, name: str = "bench", socket: str | None = None, max_concurrent_handlers: int = 20,
                max_concurrent_pipelines: int = 50, prefix: str = _PREFIX, journal: str | None = None) -> str:
    """The organism.yaml text of the bench organism (`prefix`: the module's import path + '.').

    Each listener may use every handler slot (`max_concurrent_per_listener` is
    `max_concurrent_handlers`), so the concurrency row runs as many naps at once as it
    says, not the default cap of a plain listener."""
    lines = [
        "organism:",
        f"  name: {name}",
    ]
    if socket is not None:
        lines.append(f"  socket: {socket}")
    if journal is not None:
        lines.append(f"  journal: {journal}")
    lines += [
        "thread_scheduling: breadth-first",
        f"max_concurrent_pipelines: {max_concurrent_pipelines}",
        f"max_concurrent_handlers: {max_concurrent_handlers}",
        f"max_concurrent_per_listener: {max_concurrent_handlers}",
        # the bench measures the floor between runs with the pump's loop blocked on purpose
        "limits: {max_thread_hops: 1000, handler_timeout_s: 60, loop_lag_warning_s: 10}",
        "listeners:",
    ]
    for listener, payload, handler in (
        ("sink", "Ping", "handle_sink"),
        ("relay", "Relay", "handle_relay"),
        ("echo", "Echo", "handle_echo"),
        ("caller", "Call", "handle_call"),
        ("sleeper", "Nap", "handle_nap"),
        ("ping", "Volley", "handle_ping"),
        ("pong", "Volley", "handle_pong"),
    ):
        lines += [
            f"  - name: {listener}",
            f"    payload_class: {prefix}{payload}",
            f"    handler: {prefix}{handler}",
        ]
    return "\n".join(lines) + "\n"
