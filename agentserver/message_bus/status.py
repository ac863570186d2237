"""What `status` reports about one pump: one JSON document, one schema (README: "Status").

    {
      "organism": "hello-world", "version": "0.2.0", "uptime_s": 12.5,
      "counters": {"accepted", "handled", "errored", "errored_by_reason", "in_flight",
                   "queued", "queued_intake", "parked", "dead_letters", "late"},
      "listeners": {"greeter": {"kind", "concurrency", "delivered", "handled", "errored",
                                "running", "waiting", "p50_ms", "p99_ms"}, ...},
      "conversations": {"open": 1, "shown": [{"id", "client", "age_s", "idle_s", "units",
                        "pending", "hops", "waiting_on": ["running greeter", ...]}]},
      "registries": {"threads", "context_threads", "todos"},
      "clients": ["me"],
      "llm": {"backends": {...}, "agents": {...}} | null,
      "journal": null | {"path", "lag", "commits", "failed", ...: the journal's, or a member's on NATS},
      "members": null | {"transport", "member", "connected", "executed", "running", "adopted",
                         "members": [...], "listeners": {...}}: on NATS JetStream (DESIGN.md §15)
    }

Every listener is listed, idle ones too. `accepted == handled + errored + in_flight`
always. Later capabilities extend it under their own keys; the server adds `server`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Hashable

from agentserver.message_bus.events import conversation_id

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["pump_status", "MAX_CONVERSATIONS_SHOWN"]

MAX_CONVERSATIONS_SHOWN = 50


def pump_status(pump: "StreamPump") -> dict[str, Any]:
    from agentserver import __version__

    counters = pump.counters
    stores = pump.stores
    return {
        "organism": pump.config.name,
        "version": __version__,
        "uptime_s": round(time.time() - pump.started, 3),
        "counters": {
            "accepted": counters.accepted,
            "handled": counters.handled,
            "errored": counters.errored_total,
            "errored_by_reason": {str(code): n for code, n in sorted(counters.errored.items())},
            "in_flight": counters.in_flight,
            "queued": len(pump.admission.queue),
            "queued_intake": pump.admission.queue.intake_size,
            "parked": pump.slots.parked(),
            "dead_letters": pump.dead_letters.total,
            "late": pump.calls.late,
            "deferred": counters.deferred,
        },
        "listeners": _listeners(pump),
        "conversations": _conversations(pump),
        "registries": {"threads": len(stores.threads), "context_threads": len(stores.history), "todos": len(stores.todos)},
        "clients": list(pump.mailboxes),
        "llm": pump.handlers.llm.status() if pump.handlers.llm is not None else None,
        "journal": pump.durability.status(),
        "members": pump.handlers.transport.status() if pump.handlers.transport is not None else None,
    }


def _listeners(pump: "StreamPump") -> dict[str, Any]:
    listeners = {}
    for name, listener in sorted(pump.routes.by_name.items()):
        stats = pump.counters.listener(name)
        kind = "system" if listener.system else "llm-agent" if listener.llm is not None and listener.llm.prompt else \
            "agent" if listener.agent else "handler"
        listeners[name] = {
            "kind": kind, "concurrency": listener.concurrency, "delivered": stats.delivered, "handled": stats.handled,
            "errored": stats.errored, "running": stats.running, "waiting": stats.waiting,
            "p50_ms": stats.percentile_ms(50), "p99_ms": stats.percentile_ms(99),
        }
    return listeners


def _conversations(pump: "StreamPump") -> dict[str, Any]:
    """Open conversations, oldest activity first, with what each waits on."""
    waiting: defaultdict[Hashable, list[str]] = defaultdict(list)
    for state in pump.handlers.running_units():
        if state.conversation is not None and state.route is not None:
            waiting[state.conversation.id].append(f"running {getattr(state.route, 'listener').name}")
    for conversation, listener in pump.slots.parked_units():
        waiting[conversation].append(f"a slot for {listener}")
    for call in pump.calls.awaited():
        waiting[call.thread.conversation.id].append(f"an answer from {call.peer} (to {call.thread.owner})")
    now = pump.ctx.clock()
    open_conversations = pump.stores.threads.open_conversations()
    return {
        "open": len(open_conversations),
        "shown": [
            {"id": conversation_id(c), "client": c.client, "age_s": round(now - c.started, 3),
             "idle_s": round(now - c.last_active, 3), "units": c.units, "pending": c.pending, "hops": c.hops,
             "ended": str(c.ended) if c.ended else None, "waiting_on": sorted(waiting.get(c.id, []))}
            for c in open_conversations[:MAX_CONVERSATIONS_SHOWN]
        ],
    }
