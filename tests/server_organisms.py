"""Listeners for the tests that run a real server in a subprocess."""

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
class Slow:
    seconds: float


async def handle_echo(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Echo(text=payload.text))


async def handle_slow(payload: Slow, meta: HandlerMetadata) -> HandlerResponse:
    await asyncio.sleep(payload.seconds)
    return HandlerResponse.respond(Echo(text=f"slept {payload.seconds}"))
