"""Counters the pump keeps: every unit of work is accepted once and ends once.

    accepted == handled + errored + deferred + in_flight      (always)

`deferred`: with a journal, units cut off by shutdown, kept to run at the next start.

`handled`: a handler returned normally, a reply reached a client's mailbox, or a
branch ended by design. `errored` is kept by reason code. Per-listener figures count
deliveries to that listener.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

DURATIONS_KEPT = 1024  # handler durations kept per listener, for p50/p99
# upper bounds (seconds) of the cumulative handler-duration histogram (/metrics); the last bucket is +Inf
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

__all__ = ["Counters", "ListenerCounters", "DURATION_BUCKETS"]


@dataclass(slots=True)
class ListenerCounters:
    delivered: int = 0
    handled: int = 0
    errored: int = 0
    running: int = 0
    waiting: int = 0
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=DURATIONS_KEPT))
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))  # not cumulative
    duration_sum: float = 0.0

    def ended(self, ok: bool, seconds: float = 0.0) -> None:
        """A handler call ended, well (`ok`) or in an error, after `seconds` (waits included)."""
        if ok:
            self.handled += 1
        else:
            self.errored += 1
        self.durations.append(seconds)
        self.duration_buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds

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
