"""The bench's workloads on autogen-core's `SingleThreadedAgentRuntime`, for `bench.py --peers`.

    sink     Ping  -> None                          (one hop)
    relay    Relay -> publishes Ping to sink        (two hops)
    echo     Echo  -> returns Echoed                (closed-loop request/response)
    sleeper  Nap   -> asyncio.sleep(0.010), None    (500 x 10 ms handlers)

The messages are plain dataclasses: autogen-core hands the object itself to the
agent, with no serialization and no validation, where the pump parses, canonicalizes
and validates every message as XML. That difference is what the comparison is for.

How each workload is run, as close to the pump's as its API allows:

- a one-way message is `publish_message` to a topic one agent type subscribes to
  (`TypeSubscription`): like `inject`, it returns once the message is queued, and it is
  the cheaper of autogen-core's two ways (a `send_message` per message, each awaited in
  a task of its own, measured here at about 1.4x the time of `publish_message`);
- the relay forwards with `publish_message` too, without waiting for the sink;
- a run ends when `stop_when_idle()` returns (the queue is joined: every handler,
  and everything it published, has ended); each handler counts its calls and a run
  that handled fewer than it sent raises;
- request/response is `send_message`, which returns the handler's return value
  (their RPC), one request in flight, against the pump's in-process `client.ask`;
- the runtime has no cap on running handlers: 500 naps run at once.

The runtime runs with its defaults (no tracer provider, its loggers at WARNING).
Importing this module imports autogen-core: `bench.py` treats an ImportError of
`autogen_core` as "not installed" (`pip install -e '.[bench]'`).
"""

import asyncio
import functools
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Awaitable, Callable

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    TopicId,
    TypeSubscription,
    message_handler,
)

__all__ = ["VERSION", "Peer", "PeerError"]

VERSION = version("autogen-core")
TEXT = "hello, bench"
NAP_S = 0.010


class PeerError(RuntimeError):
    """autogen-core did not handle what the bench sent it."""


@dataclass
class Ping:
    seq: int
    text: str


@dataclass
class Relay:
    seq: int
    text: str


@dataclass
class Echo:
    seq: int
    text: str


@dataclass
class Echoed:
    seq: int
    text: str


@dataclass
class Nap:
    seq: int


class Tally:
    """Handler calls, by agent type, so a run can check that everything was handled."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"sink": 0, "relay": 0, "echo": 0, "sleeper": 0}


class Sink(RoutedAgent):
    def __init__(self, tally: Tally) -> None:
        super().__init__("returns nothing")
        self.tally = tally

    @message_handler
    async def on_ping(self, message: Ping, ctx: MessageContext) -> None:
        self.tally.calls["sink"] += 1


class Relayer(RoutedAgent):
    def __init__(self, tally: Tally) -> None:
        super().__init__("forwards once to sink")
        self.tally = tally

    @message_handler
    async def on_relay(self, message: Relay, ctx: MessageContext) -> None:
        self.tally.calls["relay"] += 1
        await self.publish_message(Ping(seq=message.seq, text=message.text), TopicId("sink", self.id.key))


class Echoer(RoutedAgent):
    def __init__(self, tally: Tally) -> None:
        super().__init__("answers")
        self.tally = tally

    @message_handler
    async def on_echo(self, message: Echo, ctx: MessageContext) -> Echoed:
        self.tally.calls["echo"] += 1
        return Echoed(seq=message.seq, text=message.text)


class Sleeper(RoutedAgent):
    def __init__(self, tally: Tally) -> None:
        super().__init__("naps 10 ms")
        self.tally = tally

    @message_handler
    async def on_nap(self, message: Nap, ctx: MessageContext) -> None:
        await asyncio.sleep(NAP_S)
        self.tally.calls["sleeper"] += 1


class Peer:
    """One runtime with the four agents, kept across rounds (`async with Peer() as peer:`)."""

    def __init__(self) -> None:
        self.runtime = SingleThreadedAgentRuntime()
        self.tally = Tally()

    async def __aenter__(self) -> "Peer":
        agents: tuple[tuple[str, Any], ...] = (("sink", Sink), ("relay", Relayer), ("echo", Echoer), ("sleeper", Sleeper))
        for agent_type, cls in agents:
            await cls.register(self.runtime, agent_type, functools.partial(cls, self.tally))  # a factory of no arguments
            await self.runtime.add_subscription(TypeSubscription(topic_type=agent_type, agent_type=agent_type))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.runtime.close()

    async def warm(self, n: int) -> None:
        """Instantiate the agents and warm every path once (`n` messages each)."""
        await self.one_way("sink", [Ping(seq=i, text=TEXT) for i in range(n)], {"sink": n})
        await self.one_way("relay", [Relay(seq=i, text=TEXT) for i in range(n)], {"relay": n, "sink": n})
        await self.latency(n)
        await self.one_way("sleeper", [Nap(seq=i) for i in range(n)], {"sleeper": n})

    async def one_way(self, agent_type: str, messages: list[Any], expected: dict[str, int]) -> float:
        """Publish `messages` to `agent_type` and wait until the runtime is idle: seconds."""
        topic = TopicId(agent_type, "default")
        publish = self.runtime.publish_message
        return await self._run(expected, lambda: _publish_all(publish, messages, topic))

    async def latency(self, n: int) -> list[int]:
        """`n` request/responses to echo, one in flight: nanoseconds each."""
        samples: list[int] = []
        echo = AgentId("echo", "default")
        send = self.runtime.send_message
        clock = time.perf_counter_ns

        async def asks() -> None:
            for i in range(n):
                start = clock()
                reply = await send(Echo(seq=i, text=TEXT), echo)
                samples.append(clock() - start)
                if reply.seq != i:
                    raise PeerError(f"echo answered {reply!r} to seq {i}")

        await self._run({"echo": n}, asks)
        return samples

    async def _run(self, expected: dict[str, int], work: Callable[[], Awaitable[None]]) -> float:
        before = dict(self.tally.calls)
        self.runtime.start()
        start = time.perf_counter()
        await work()
        await self.runtime.stop_when_idle()
        elapsed = time.perf_counter() - start
        handled = {name: self.tally.calls[name] - before[name] for name in expected}
        if handled != expected:
            raise PeerError(f"autogen-core handled {handled}, expected {expected}")
        return elapsed


async def _publish_all(publish: Callable[..., Awaitable[None]], messages: list[Any], topic: TopicId) -> None:
    for message in messages:
        await publish(message, topic)
