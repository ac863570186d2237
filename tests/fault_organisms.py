"""Payloads and handlers for the hostile-input, property and fault tests.

Configurations name them as `tests.fault_organisms.X`. No `from __future__ import
annotations` here: xmlable reads the dataclass annotations as real types. No module
state: the tests read what happened from the pump's own counters.
"""

import asyncio
from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse


@xmlify
@dataclass
class Echo:
    text: str


@xmlify
@dataclass
class Sunk:
    text: str


@xmlify
@dataclass
class Boom:
    text: str


@xmlify
@dataclass
class Nap:
    seconds: float


@xmlify
@dataclass
class Odd:
    kind: str


@xmlify
@dataclass
class Burst:
    count: int


@xmlify
@dataclass
class Crumb:
    n: int


@xmlify
@dataclass
class Volley:
    n: int


class NotAPayload:
    """A plain class: returning it is returning the wrong type."""


async def echo(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Echo(text=payload.text))


async def sink(payload: Sunk, meta: HandlerMetadata) -> None:
    return None


async def boom(payload: Boom, meta: HandlerMetadata) -> HandlerResponse:
    raise RuntimeError(f"boom: {payload.text}")


async def nap(payload: Nap, meta: HandlerMetadata) -> HandlerResponse:
    await asyncio.sleep(payload.seconds)
    return HandlerResponse.respond(Echo(text=f"slept {payload.seconds}"))


async def odd(payload: Odd, meta: HandlerMetadata):
    """Returns what `kind` names; none of it is a valid handler result."""
    if payload.kind == "int":
        return 42
    if payload.kind == "str":
        return "<Echo><Text>a str is not bytes</Text></Echo>"
    if payload.kind == "dict":
        return {"payload": Echo(text="x")}
    if payload.kind == "plain-object":
        return HandlerResponse.respond(NotAPayload())
    if payload.kind == "list-with-int":
        return [HandlerResponse.respond(Echo(text="fine")), 7]
    raise AssertionError(f"unknown kind {payload.kind!r}")


async def burst(payload: Burst, meta: HandlerMetadata) -> list[HandlerResponse]:
    """Emits `count` Crumbs to `crumbs` at once."""
    return [HandlerResponse(Crumb(n=n), to="crumbs") for n in range(payload.count)]


async def crumbs(payload: Crumb, meta: HandlerMetadata) -> None:
    return None


def _player(other: str):
    async def handle(payload: Volley, meta: HandlerMetadata) -> HandlerResponse:
        return HandlerResponse(Volley(n=payload.n + 1), to=other)  # forever

    return handle


ping = _player("pong")
pong = _player("ping")


def organism(*listeners: tuple[str, str, str], limits: dict | None = None, name: str = "fault-organism") -> str:
    """The YAML of an organism; each listener is (name, payload class, handler) in this module."""
    lines = [f"organism:\n  name: {name}\n"]
    if limits:
        lines.append("limits: {" + ", ".join(f"{key}: {value}" for key, value in limits.items()) + "}\n")
    lines.append("listeners:\n")
    for listener_name, payload_class, handler in listeners:
        lines.append(
            f"  - name: {listener_name}\n"
            f"    payload_class: tests.fault_organisms.{payload_class}\n"
            f"    handler: tests.fault_organisms.{handler}\n"
        )
    return "".join(lines)
