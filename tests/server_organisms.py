"""Listeners for the tests that run a real server in a subprocess."""

import asyncio
import os
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


@xmlify
@dataclass
class Entry:
    n: int


async def handle_record(payload: Entry, meta: HandlerMetadata) -> None:
    """Appends `n redelivered message-id` to the file $AGENTSERVER_TEST_RECORD (one write
    each: a kill -9 of the server cannot tear a line), after a moment's work."""
    await asyncio.sleep(0.001)
    line = f"{payload.n} {int(meta.redelivered)} {meta.message_id}\n".encode()
    fd = os.open(os.environ["AGENTSERVER_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return None
