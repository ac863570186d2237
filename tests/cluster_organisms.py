"""Handlers for the NATS transport tests (tests/test_nats_*.py): each records which
process ran it in the file named by $AS_RECORD, one line per call, so a test can see
which member handled what."""


import asyncio
import json
import os
import time
from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse


def record(**fields: object) -> None:
    path = os.environ.get("AS_RECORD")
    if path:
        with open(path, "a") as out:  # one short O_APPEND write per line: processes do not interleave
            out.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")


def spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


@xmlify
@dataclass
class Job:
    n: int
    spin_ms: int = 0
    sleep_ms: int = 0


@xmlify
@dataclass
class Capped:
    n: int
    spin_ms: int = 0
    sleep_ms: int = 0


@xmlify
@dataclass
class Done:
    n: int
    pid: int


async def handle_job(payload: Job | Capped, meta: HandlerMetadata) -> HandlerResponse:
    started = time.time()
    spin(payload.spin_ms)
    if payload.sleep_ms:
        await asyncio.sleep(payload.sleep_ms / 1000)
    record(n=payload.n, start=started, end=time.time(), message_id=meta.message_id, redelivered=meta.redelivered)
    return HandlerResponse.respond(Done(n=payload.n, pid=os.getpid()))


@xmlify
@dataclass
class Question:
    n: int


@xmlify
@dataclass
class Number:
    value: int


@xmlify
@dataclass
class Doubled:
    value: int
    pid: int


@xmlify
@dataclass
class Answer:
    n: int
    doubled: int
    asker_pid: int
    doubler_pid: int


async def handle_question(payload: Question, meta: HandlerMetadata) -> HandlerResponse:
    doubled = await meta.ask("doubler", Number(value=payload.n), timeout=30)
    record(role="asker", n=payload.n, doubler_pid=doubled.pid)
    return HandlerResponse.respond(Answer(n=payload.n, doubled=doubled.value, asker_pid=os.getpid(), doubler_pid=doubled.pid))


async def handle_number(payload: Number, meta: HandlerMetadata) -> HandlerResponse:
    spin(5)
    record(role="doubler", n=payload.value)
    return HandlerResponse.respond(Doubled(value=payload.value * 2, pid=os.getpid()))


@xmlify
@dataclass
class Crash:
    n: int


async def handle_crash(payload: Crash, meta: HandlerMetadata) -> HandlerResponse:
    record(role="crash", n=payload.n)
    raise ValueError(f"boom {payload.n} in {os.getpid()}")


@xmlify
@dataclass
class Chain:
    n: int
    step: int
    last: int
    sleep_ms: int = 0


async def handle_chain(payload: Chain, meta: HandlerMetadata) -> HandlerResponse:
    """A conversation of `last` hops, one step of it per call (to itself)."""
    await asyncio.sleep(payload.sleep_ms / 1000)
    record(role="chain", n=payload.n, step=payload.step, redelivered=meta.redelivered,
           conversation=meta.conversation_id)
    if payload.step < payload.last:
        return HandlerResponse(Chain(n=payload.n, step=payload.step + 1, last=payload.last, sleep_ms=payload.sleep_ms),
                               to="chain")
    return HandlerResponse.respond(Done(n=payload.n, pid=os.getpid()))
