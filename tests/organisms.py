"""Payload classes and handlers the test organisms are built from.

Configurations refer to them as `tests.organisms.X`. No `from __future__ import
annotations` here: xmlable reads the dataclass annotations as real types.

Handlers report to `PROBE`, which a conftest fixture resets before every test: what
each listener saw (payload and metadata), named events the tests wait on instead of
sleeping, and counters.
"""

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse, SystemError, TodoComplete, TodoUntil


# ---------------------------------------------------------------------- the probe
@dataclass
class Seen:
    listener: str
    payload: Any
    meta: HandlerMetadata


class Probe:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen: list[Seen] = []
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.notes: dict[str, Any] = {}
        self._events: dict[str, asyncio.Event] = {}

    def event(self, name: str) -> asyncio.Event:
        event = self._events.get(name)
        if event is None:
            event = self._events[name] = asyncio.Event()
        return event

    def record(self, listener: str, payload: Any, meta: HandlerMetadata) -> None:
        self.seen.append(Seen(listener, payload, meta))
        self.counts[listener] += 1

    def of(self, listener: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.listener == listener]


PROBE = Probe()


# ---------------------------------------------------------------------- payloads
@xmlify
@dataclass
class Echo:
    text: str


@xmlify
@dataclass
class EchoReply:
    text: str


@xmlify
@dataclass
class Order:
    """Tells the `relay` handler what to do (see `relay`)."""

    action: str
    arg: str


@xmlify
@dataclass
class Report:
    text: str


@xmlify
@dataclass
class Strict:
    """Valid against its XSD for any integer, but refuses negative counts when read."""

    count: int

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")


@xmlify
@dataclass
class Typed:
    text: str
    flag: bool
    number: int


@xmlify
@dataclass
class Hop:
    trail: str


@xmlify
@dataclass
class News:
    text: str
    hops: int


@xmlify
@dataclass
class Item:
    n: int


@xmlify
@dataclass
class Start:
    count: int


@xmlify
@dataclass
class Spam:
    n: int


@xmlify
@dataclass
class Ball:
    n: int
    limit: int


@xmlify
@dataclass
class Req:
    token: str


@xmlify
@dataclass
class Job:
    token: str


@xmlify
@dataclass
class JobDone:
    token: str


@xmlify
@dataclass
class Task:
    goal: str


@xmlify
@dataclass
class Gated:
    n: int


class NotXml:
    """Not an @xmlify dataclass: a handler returning it returned the wrong type."""


# ---------------------------------------------------------------------- handlers
async def echo(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    PROBE.record("echo", payload, meta)
    return HandlerResponse.respond(EchoReply(text=payload.text))


async def typed_echo(payload: Typed, meta: HandlerMetadata) -> HandlerResponse:
    PROBE.record("typed", payload, meta)
    return HandlerResponse.respond(Typed(text=payload.text, flag=payload.flag, number=payload.number))


async def strict(payload: Strict, meta: HandlerMetadata) -> HandlerResponse:
    PROBE.record("strict", payload, meta)
    return HandlerResponse.respond(Report(text=f"count={payload.count}"))


async def relay(payload: Any, meta: HandlerMetadata) -> Any:
    """Does what an Order says; turns what comes back into a Report for its caller.

    actions: raise, wrong-type, not-xml, hang (waits on PROBE event `arg`; then raises if
    PROBE.notes["raise_when_released"]),
    forward (an Echo to listener `arg`), bytes (returns `arg` encoded),
    big (returns an Echo of `arg` bytes), call (`target:action:arg`: an Order to target),
    fanout-bytes, fanout-list, fanout-respond (three Items).
    """
    PROBE.record("relay", payload, meta)
    if isinstance(payload, SystemError):
        return HandlerResponse.respond(Report(text=f"error:{payload.code}"))
    if isinstance(payload, (Report, EchoReply)):
        return HandlerResponse.respond(Report(text=f"{meta.from_id} said {payload.text}"))
    action, arg = payload.action, payload.arg
    if action == "raise":
        raise RuntimeError(f"relay exploded: {arg}")
    if action == "wrong-type":
        return 42
    if action == "not-xml":
        return HandlerResponse.respond(NotXml())
    if action == "hang":
        PROBE.event(f"{arg}-started").set()
        try:
            await PROBE.event(arg).wait()
        except asyncio.CancelledError:
            PROBE.notes["cancelled"] = arg
            raise
        if PROBE.notes.get("raise_when_released"):
            raise RuntimeError(f"released {arg}, and failed")
        return HandlerResponse.respond(Report(text=f"released {arg}"))
    if action == "forward":
        return HandlerResponse(Echo(text="relayed"), to=arg)
    if action == "bytes":
        return arg.encode()
    if action == "big":
        return b"<Echo><Text>" + b"x" * int(arg) + b"</Text></Echo>"
    if action == "call":
        target, _, rest = arg.partition(":")
        inner_action, _, inner_arg = rest.partition(":")
        return HandlerResponse(Order(action=inner_action, arg=inner_arg), to=target)
    if action == "fanout-bytes":
        return b"<Item><N>1</N></Item>\n<Item><N>2</N></Item><Item><N>3</N></Item>"
    if action == "fanout-list":
        return [HandlerResponse(Item(n=n), to="collector") for n in (1, 2, 3)]
    if action == "fanout-respond":
        return [HandlerResponse.respond(Item(n=n)) for n in (1, 2, 3)]
    raise ValueError(f"unknown action {action!r}")


async def collector(payload: Item, meta: HandlerMetadata) -> None:
    PROBE.record("collector", payload, meta)
    if PROBE.counts["collector"] == PROBE.notes.get("expect_items", 3):
        PROBE.event("collected").set()
    return None


async def fragile(payload: Any, meta: HandlerMetadata) -> Any:
    """Forwards to a listener that does not exist, and raises on the SystemError it gets."""
    PROBE.record("fragile", payload, meta)
    if isinstance(payload, SystemError):
        raise RuntimeError("fragile cannot cope with errors")
    return HandlerResponse(Echo(text="into the void"), to="nobody")


async def stubborn(payload: Any, meta: HandlerMetadata) -> Any:
    """Answers every SystemError by sending to a listener that does not exist, again."""
    PROBE.record("stubborn", payload, meta)
    return HandlerResponse(Echo(text="again"), to="nobody")


def _newsroom(name: str):
    async def handle(payload: News, meta: HandlerMetadata) -> HandlerResponse | None:
        PROBE.record(name, payload, meta)
        if payload.hops == 0:
            return HandlerResponse(News(text=f"{name} heard {payload.text}", hops=1))  # broadcast
        return None

    handle.__name__ = f"news_{name}"
    return handle


news_a = _newsroom("news_a")
news_b = _newsroom("news_b")


def _chain(name: str, next_name: str | None):
    """A link of a call chain: forwards a Hop on, and passes the answer back up."""

    async def handle(payload: Hop, meta: HandlerMetadata) -> HandlerResponse:
        PROBE.record(name, payload, meta)
        if next_name is not None and meta.from_id != next_name:
            return HandlerResponse(Hop(trail=f"{payload.trail}>{name}"), to=next_name)
        return HandlerResponse.respond(Hop(trail=f"{payload.trail}<{name}"))

    handle.__name__ = f"chain_{name}"
    return handle


chain_a = _chain("chain_a", "chain_b")
chain_b = _chain("chain_b", "chain_c")
chain_c = _chain("chain_c", None)


async def front(payload: Any, meta: HandlerMetadata) -> HandlerResponse:
    """Req -> a Job for `back`; back's JobDone -> the answer to the client."""
    PROBE.record("front", payload, meta)
    if isinstance(payload, Req):
        return HandlerResponse(Job(token=payload.token), to="back")
    return HandlerResponse.respond(Report(text=payload.token))


async def back(payload: Job, meta: HandlerMetadata) -> HandlerResponse:
    """Answers a Job once `PROBE.notes['back_wait']` Jobs have arrived (default 1)."""
    PROBE.record("back", payload, meta)
    if PROBE.counts["back"] >= PROBE.notes.get("back_wait", 1):
        PROBE.event("back").set()
    await PROBE.event("back").wait()
    return HandlerResponse.respond(JobDone(token=payload.token))


async def worker(payload: Job, meta: HandlerMetadata) -> HandlerResponse:
    PROBE.record("worker", payload, meta)
    return HandlerResponse.respond(JobDone(token=f"{payload.token} done"))


async def outsider(payload: Job, meta: HandlerMetadata) -> HandlerResponse:
    PROBE.record("outsider", payload, meta)
    return HandlerResponse.respond(JobDone(token="outsider should never run"))


async def picky_agent(payload: Any, meta: HandlerMetadata) -> Any:
    """An agent with peers [worker]: tries `outsider` first, then its real peer."""
    PROBE.record("picky", payload, meta)
    if isinstance(payload, Task):
        return HandlerResponse(Job(token=payload.goal), to="outsider")
    if isinstance(payload, SystemError):
        return HandlerResponse(Job(token=f"after {payload.code}"), to="worker")
    return HandlerResponse.respond(Report(text=payload.token))


async def planner(payload: Any, meta: HandlerMetadata) -> Any:
    """An agent that sets a todo, waits for its worker, then closes the todo."""
    PROBE.record("planner", payload, meta)
    if isinstance(payload, Task):
        return [
            TodoUntil(todo_id="t1", wait_for="JobDone", from_listener="worker", note="the first job"),
            HandlerResponse(Job(token="first"), to="worker"),
        ]
    if isinstance(payload, JobDone) and payload.token == "first done":
        return [TodoComplete(todo_id="t1"), HandlerResponse(Job(token="second"), to="worker")]
    return HandlerResponse.respond(Report(text=payload.token))


async def spammer(payload: Start, meta: HandlerMetadata) -> list[HandlerResponse]:
    PROBE.record("spammer", payload, meta)
    PROBE.notes["spam_total"] = payload.count
    return [HandlerResponse(Spam(n=n), to="sink") for n in range(payload.count)]


async def sink(payload: Spam, meta: HandlerMetadata) -> None:
    PROBE.counts["sink"] += 1
    if PROBE.counts["sink"] == 1:
        PROBE.event("sink-started").set()
    if PROBE.counts["sink"] == PROBE.notes.get("spam_total"):
        PROBE.event("sink-done").set()
    return None


async def quiet(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    """Notes how far the chatty conversations were when it ran."""
    PROBE.notes["sink_at_quiet"] = PROBE.counts["sink"]
    PROBE.notes["rally_at_quiet"] = PROBE.counts["rally"]
    return HandlerResponse.respond(EchoReply(text=f"quiet {payload.text}"))


def _player(name: str, other: str):
    async def handle(payload: Ball, meta: HandlerMetadata) -> HandlerResponse | None:
        PROBE.counts["rally"] = payload.n
        if "clock" in PROBE.notes:  # a test's fake clock: every hop takes `hop_seconds`
            PROBE.notes["clock"].now += PROBE.notes["hop_seconds"]
        if payload.n == 5:
            PROBE.event("rally-started").set()
        if payload.n >= payload.limit:
            PROBE.event("rally-done").set()
            return None
        return HandlerResponse(Ball(n=payload.n + 1, limit=payload.limit), to=other)

    handle.__name__ = f"player_{name}"
    return handle


ping = _player("ping", "pong")
pong = _player("pong", "ping")


async def gated(payload: Gated, meta: HandlerMetadata) -> HandlerResponse:
    """Waits for the PROBE event 'open'; notes how many run at once."""
    PROBE.counts["gated-running"] += 1
    PROBE.notes["gated-peak"] = max(PROBE.notes.get("gated-peak", 0), PROBE.counts["gated-running"])
    PROBE.event("gated-started").set()
    try:
        await PROBE.event("open").wait()
    finally:
        PROBE.counts["gated-running"] -= 1
    PROBE.counts["gated-done"] += 1
    return HandlerResponse.respond(Report(text=f"gated {payload.n}"))


async def sweeper(payload: Item, meta: HandlerMetadata) -> TodoUntil:
    """One hop, ends the branch; leaves a todo watcher on its thread (must be forgotten)."""
    return TodoUntil(todo_id=f"t{payload.n}", wait_for="Item")


async def remember(payload: Any, meta: HandlerMetadata) -> HandlerResponse:
    """An agent that notes its metadata and answers at once."""
    PROBE.record("remember", payload, meta)
    return HandlerResponse.respond(Report(text="noted"))


def sync_handler(payload: Echo, meta: HandlerMetadata) -> None:  # refused at load time
    return None


NOT_CALLABLE = 42


async def selfie(payload: Task, meta: HandlerMetadata) -> HandlerResponse:
    """An agent that calls itself once before it answers."""
    PROBE.record("selfie", payload, meta)
    if payload.goal == "start":
        return HandlerResponse(Task(goal="again"), to=meta.own_name)
    return HandlerResponse.respond(Report(text=f"{payload.goal} self={meta.is_self_call}"))


async def boot_watcher(payload: Any, meta: HandlerMetadata) -> None:
    PROBE.record("boot_watcher", payload, meta)
    PROBE.event("booted").set()
    return None


async def ledger(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    """Records what it saw (meta.message_id, meta.redelivered); with PROBE.notes['ledger_hold'],
    waits for the PROBE event 'ledger-open' first."""
    PROBE.record("ledger", payload, meta)
    if PROBE.notes.get("ledger_hold"):
        PROBE.event("ledger-started").set()
        await PROBE.event("ledger-open").wait()
    PROBE.counts["ledger-done"] += 1
    return HandlerResponse.respond(EchoReply(text=f"noted {payload.text}"))


async def asker(payload: Echo, meta: HandlerMetadata) -> HandlerResponse:
    """Awaits `ledger` (meta.ask) and answers with what it said."""
    PROBE.record("asker", payload, meta)
    answer = await meta.ask("ledger", Echo(text=payload.text))
    return HandlerResponse.respond(EchoReply(text=f"asked: {answer.text}"))
