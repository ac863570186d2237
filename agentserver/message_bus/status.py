"""What `status` reports about one pump: counters, queues, clients, open conversations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["pump_status"]

MAX_CONVERSATIONS_SHOWN = 50


def pump_status(pump: "StreamPump") -> dict[str, Any]:
    snapshot = pump.counters.snapshot()
    stores = pump.stores
    snapshot.update(
        organism=pump.config.name,
        queued=len(pump.admission.queue),
        parked=pump.slots.parked(),
        queued_intake=pump.admission.queue.intake_size,
        threads=len(stores.threads),
        conversations=stores.threads.conversations,
        context_threads=len(stores.history),
        todos=len(stores.todos),
        dead_letters=pump.dead_letters.total,
        clients=list(pump.mailboxes),
        llm=pump.handlers.llm.status() if pump.handlers.llm is not None else None,
        open_conversations=[
            {"id": c.id, "client": c.client, "external_thread": c.external_id, "pending": c.pending, "hops": c.hops}
            for c in stores.threads.open_conversations()[:MAX_CONVERSATIONS_SHOWN]
        ],
    )
    return snapshot
