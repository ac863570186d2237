"""The organism `scripts/soak.py` runs: an echo and a slow echo, nothing else.

    echo  <Echo>  -> HandlerResponse.respond(<Echo>)                 (one reply per message)
    slow  <Slow>  -> asyncio.sleep(seconds), respond(<Echo>)         (handlers that take a while)

No `from __future__ import annotations` (xmlable reads the annotations as types). The
soak starts the server with this directory on PYTHONPATH, so `soak_organism.X` resolves.
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
class Slow:
    seconds: float
    text: str


async def handle_echo(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Echo(text=payload.text))


async def handle_slow(payload: Slow, meta: HandlerMetadata) -> HandlerResponse:
    await asyncio.sleep(payload.seconds)
    return HandlerResponse.respond(Echo(text=payload.text))
