"""Counters the pump keeps: every unit of work is accepted once and ends once.

    accepted == handled + errored + in_flight      (always)

`handled`: a handler returned normally, a reply reached a client's mailbox, or a
branch ended by design. `errored` is kept by reason code. Per-listener figures count
deliveries to that listener.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

DURATIONS_KEPT = 1024  # handler durations kept per listener, for p50/p99

__all__ = ["Counters", "ListenerCounters"]


@dataclass(slots=True)
class ListenerCounters:
    delivered: int = 0
    handled: int = 0
    errored: int = 0
    running: int = 0
    waiting: int = 0
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=DURATIONS_KEPT))

    def ended(self, ok: bool, seconds: float = 0.0) -> None:
        """A handler call ended, well (`ok`) or in an error, after `seconds` (waits included)."""
        if ok:
            self.handled += 1
        else:
            self.errored += 1
        self.durations.append(seconds)

    def percentile_ms(self, q: float) -> float | None:
        """The q-th percentile (nearest rank) of the recent handler durations, in ms."""
        if not self.durations:
            return None
        ordered = sorted(self.durations)
        return round(ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)] * 1e3, 3)


@dataclass(slots=True)
class Counters:
    accepted: int = 0
    handled: int = 0
    errored: Counter = field(default_factory=Counter)
    errored_total: int = 0
    deferred: int = 0  # cut off by shutdown and kept in the journal: they run at the next start
    listeners: dict[str, ListenerCounters] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return self.accepted - self.handled - self.errored_total - self.deferred

    def listener(self, name: str) -> ListenerCounters:
        counters = self.listeners.get(name)
        if counters is None:
            counters = self.listeners[name] = ListenerCounters()
        return counters

    def error(self, code: str) -> None:
        self.errored[code] += 1
        self.errored_total += 1
