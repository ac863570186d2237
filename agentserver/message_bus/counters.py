"""Counters the pump keeps: every unit of work is accepted once and ends once.

    accepted == handled + errored + in_flight      (always)

`handled`: a handler returned normally, a reply reached a client's mailbox, or a
branch ended by design. `errored` is kept by reason code. Per-listener figures count
deliveries to that listener.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Counters", "ListenerCounters"]


@dataclass(slots=True)
class ListenerCounters:
    delivered: int = 0
    handled: int = 0
    errored: int = 0
    running: int = 0
    waiting: int = 0

    def ended(self, ok: bool) -> None:
        """A handler call ended: well (`ok`) or in an error."""
        if ok:
            self.handled += 1
        else:
            self.errored += 1


@dataclass(slots=True)
class Counters:
    accepted: int = 0
    handled: int = 0
    errored: Counter = field(default_factory=Counter)
    errored_total: int = 0
    listeners: dict[str, ListenerCounters] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return self.accepted - self.handled - self.errored_total

    def listener(self, name: str) -> ListenerCounters:
        counters = self.listeners.get(name)
        if counters is None:
            counters = self.listeners[name] = ListenerCounters()
        return counters

    def error(self, code: str) -> None:
        self.errored[code] += 1
        self.errored_total += 1

    def snapshot(self) -> dict:
        return {
            "accepted": self.accepted,
            "handled": self.handled,
            "errored": self.errored_total,
            "errored_by_reason": dict(self.errored),
            "in_flight": self.in_flight,
            "listeners": {
                name: {
                    "delivered": c.delivered,
                    "handled": c.handled,
                    "errored": c.errored,
                    "running": c.running,
                    "waiting": c.waiting,
                }
                for name, c in sorted(self.listeners.items())
            },
        }
