"""Organisms for awaiting a peer (`meta.ask`): a planner that gathers two peers, and others.

No `from __future__ import annotations` here: xmlable reads the annotations as types.
"""

import asyncio
from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse, SystemError
from agentserver import PeerError
from tests.organisms import PROBE


@xmlify
@dataclass
class Task:
    a: int
    b: int
    city: str


@xmlify
@dataclass
class Add:
    a: int
    b: int


@xmlify
@dataclass
class Sum:
    value: int


@xmlify
@dataclass
class City:
    name: str


@xmlify
@dataclass
class Forecast:
    text: str


@xmlify
@dataclass
class Summary:
    total: int
    weather: str


@xmlify
@dataclass
class Link:
    path: str


async def planner(payload: Task, meta: HandlerMetadata) -> HandlerResponse:
    """The story of the issue, in straight-line code: ask two peers at once, then answer."""
    PROBE.record("planner", payload, meta)
    try:
        total, forecast = await asyncio.gather(
            meta.ask("calculator", Add(a=payload.a, b=payload.b)),
            meta.ask("weather", City(name=payload.city), timeout=PROBE.notes.get("weather_timeout")),
        )
    except PeerError as exc:
        PROBE.notes["peer_error"] = exc
        return HandlerResponse.respond(Summary(total=-1, weather=f"{exc.code} from {exc.peer}"))
    except TimeoutError:
        PROBE.notes["timed_out"] = True
        return HandlerResponse.respond(Summary(total=-1, weather="timeout"))
    PROBE.notes["planner_history"] = meta.history
    return HandlerResponse.respond(Summary(total=total.value, weather=forecast.text))


async def calculator(payload: Add, meta: HandlerMetadata) -> HandlerResponse:
    PROBE.record("calculator", payload, meta)
    return HandlerResponse.respond(Sum(value=payload.a + payload.b))


async def weather(payload: City, meta: HandlerMetadata):
    """Sunny, unless the city says otherwise: crash, silent, twice, slow, hang."""
    PROBE.record("weather", payload, meta)
    PROBE.notes["weather_call"] = meta.call_id
    if payload.name == "crash":
        raise RuntimeError("no weather today")
    if payload.name == "silent":
        return None
    if payload.name == "twice":
        return [HandlerResponse.respond(Forecast(text="first")), HandlerResponse.respond(Forecast(text="second"))]
    if payload.name == "slow":
        await asyncio.sleep(PROBE.notes.get("weather_seconds", 0.5))
    if payload.name == "hang":
        PROBE.event("weather-hangs").set()
        await asyncio.Event().wait()
    return HandlerResponse.respond(Forecast(text=f"sunny in {payload.name}"))


async def prober(payload: Task, meta: HandlerMetadata) -> HandlerResponse:
    """Asks a listener that is not its peer, then carries on with its real peer."""
    PROBE.record("prober", payload, meta)
    try:
        await meta.ask("weather", City(name="nowhere"))
    except PeerError as exc:
        PROBE.notes["peer_error"] = exc
    total = await meta.ask("calculator", Add(a=payload.a, b=payload.b))
    return HandlerResponse.respond(Summary(total=total.value, weather="not asked"))


async def coordinator(payload, meta: HandlerMetadata):
    """The returning style: sends to both peers, collects what comes back."""
    PROBE.record("coordinator", payload, meta)
    if isinstance(payload, Task):
        return [HandlerResponse(Add(a=payload.a, b=payload.b), to="calculator"),
                HandlerResponse(City(name=payload.city), to="weather")]
    PROBE.notes.setdefault("coordinator_got", []).append(payload)
    if len(PROBE.notes["coordinator_got"]) == 2:
        errors = [p for p in PROBE.notes["coordinator_got"] if isinstance(p, SystemError)]
        return HandlerResponse.respond(Summary(total=len(errors), weather=errors[0].peer if errors else ""))
    return None


def _link(name: str, next_name: str):
    async def handle(payload: Link, meta: HandlerMetadata) -> HandlerResponse:
        PROBE.record(name, payload, meta)
        if name in payload.path.split(">")[1:] or payload.path.count(">") >= 3:
            return HandlerResponse.respond(Link(path=f"{payload.path}>{name}!"))
        answer = await meta.ask(next_name, Link(path=f"{payload.path}>{name}"))
        return HandlerResponse.respond(Link(path=f"{answer.path}<{name}"))

    handle.__name__ = f"link_{name}"
    return handle


link_a = _link("link_a", "link_b")
link_b = _link("link_b", "link_c")
link_c = _link("link_c", "link_a")
