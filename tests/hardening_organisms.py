"""Payloads and handlers for the hardening tests: bombs, hangs, blockers, a busy listener.

No `from __future__ import annotations` here: xmlable reads the annotations as types.
"""

import asyncio
import time
from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse
from tests.organisms import PROBE, Report


@xmlify
@dataclass
class Bomb:
    copies: int


@xmlify
@dataclass
class Hang:
    tag: str


@xmlify
@dataclass
class Block:
    seconds: float


@xmlify
@dataclass
class Work:
    n: int


async def bomb(payload: Bomb, meta: HandlerMetadata) -> list[HandlerResponse]:
    """Sends `copies` copies of itself back to itself: a fan-out bomb."""
    PROBE.counts["bomb"] += 1
    return [HandlerResponse(Bomb(copies=payload.copies), to="bomb") for _ in range(payload.copies)]


async def hang(payload: Hang, meta: HandlerMetadata) -> HandlerResponse:
    """Waits until cancelled (or until PROBE event `release` is set); notes either way."""
    PROBE.counts["hang-started"] += 1
    PROBE.notes["hang-peak"] = max(PROBE.notes.get("hang-peak", 0), PROBE.counts["hang-started"] - PROBE.counts["hang-ended"])
    PROBE.event(f"hang-{payload.tag}").set()
    if PROBE.counts["hang-started"] == PROBE.notes.get("hang-expect"):
        PROBE.event("hang-all").set()
    try:
        await PROBE.event("release").wait()
    except asyncio.CancelledError:
        PROBE.counts["hang-cancelled"] += 1
        raise
    finally:
        PROBE.counts["hang-ended"] += 1
    return HandlerResponse.respond(Report(text=f"released {payload.tag}"))


async def block(payload: Block, meta: HandlerMetadata) -> HandlerResponse:
    """Blocks the event loop (a bug users make): time.sleep instead of asyncio.sleep."""
    time.sleep(payload.seconds)
    return HandlerResponse.respond(Report(text="blocked"))


async def busy(payload: Work, meta: HandlerMetadata) -> HandlerResponse:
    """A millisecond of real waiting per message."""
    await asyncio.sleep(0.001)
    return HandlerResponse.respond(Report(text=f"done {payload.n}"))
