"""Helpers shared by the tests: organism configs, raw envelopes, the step harness,
and the counters invariant every pump test ends with."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import yaml

from agentserver import StreamPump, load_config
from agentserver.envelope import ENVELOPE_NS
from agentserver.message_bus.message_state import MessageState, Origin

HANG_GUARD = 30.0  # seconds; only ever a guard against hangs, never a measurement


def listener(name: str, payload_class: str, handler: str, **extra: Any) -> dict:
    """One listener entry; classes and handlers are looked up in tests.organisms."""
    return {
        "name": name,
        "payload_class": f"tests.organisms.{payload_class}",
        "handler": f"tests.organisms.{handler}",
        **extra,
    }


def organism(*listeners: dict, name: str = "test-organism", limits: dict | None = None, **top: Any) -> str:
    """The YAML text of an organism made of `listeners`."""
    document: dict[str, Any] = {"organism": {"name": name}}
    document.update(top)
    if limits:
        document["limits"] = limits
    document["listeners"] = list(listeners)
    return yaml.safe_dump(document, sort_keys=False)


def make_pump(text: str, path: str = "test-organism.yaml") -> StreamPump:
    return StreamPump(load_config(path, text=text))


def new_thread() -> str:
    return str(uuid.uuid4())


def envelope(payload: str, *, sender: str = "tester", to: str | None = None, thread: str | None = None) -> bytes:
    """Raw envelope bytes (a prefixed envelope namespace, so payloads stay unqualified).

    Built by hand on purpose: the tests also need bytes the pump's builder would never make.
    """
    to_xml = f"<env:to>{to}</env:to>" if to is not None else ""
    return (
        f'<env:message xmlns:env="{ENVELOPE_NS}"><env:meta><env:from>{sender}</env:from>{to_xml}'
        f"<env:thread>{thread or new_thread()}</env:thread></env:meta>{payload}</env:message>"
    ).encode()


def run_steps(pump: StreamPump, raw: bytes, *, origin: Origin | None = None, upto=None, state: MessageState | None = None) -> list[MessageState]:
    """Feed bytes through the pump's own pipeline, up to and including the step `upto` (all by default)."""
    states = [state or MessageState(raw=raw, origin=origin or Origin.external("tester"))]
    return pump.pipeline.feed(states, upto=upto)


async def settle(pump: StreamPump, timeout: float = HANG_GUARD) -> None:
    """Wait until nothing is in flight (the pump's own idle event; no polling)."""
    await asyncio.wait_for(pump.idle(), timeout)


def assert_counters(pump: StreamPump) -> None:
    """accepted == handled + errored + in_flight, in_flight == 0, listeners at rest."""
    counters = pump.counters
    status = pump.status()
    assert counters.in_flight == 0, status
    assert counters.accepted == counters.handled + counters.errored_total + counters.in_flight, status
    assert counters.errored_total == sum(counters.errored.values()), status
    numbers = status["counters"]
    assert numbers["in_flight"] == 0 and numbers["queued"] == 0 and numbers["queued_intake"] == 0, status
    assert numbers["parked"] == 0 and numbers["accepted"] == numbers["handled"] + numbers["errored"], status
    for name, stats in counters.listeners.items():
        assert stats.running == 0 and stats.waiting == 0, (name, stats)
        assert stats.delivered == stats.handled + stats.errored, (name, stats)


async def exchange(pump: StreamPump, client, raw: bytes):
    """Inject raw envelope bytes as `client` and return the next frame it receives."""
    await pump.inject(raw, from_id=client.name)
    return await asyncio.wait_for(client.receive(), HANG_GUARD)


def pump_for(*listeners: dict, **settings: Any) -> StreamPump:
    """A pump that is built but not run: its `ctx` is what the steps are fed with."""
    return make_pump(organism(*listeners, **settings))
