"""One OpenTelemetry span per hop (the `[otel]` extra: `pip install 'agentserver[otel]'`).

    from agentserver.otel import trace_hops
    stop = trace_hops(pump)                      # the global TracerProvider
    stop = trace_hops(pump, tracer_provider=tp)  # or your own (Jaeger, Langfuse, ... exporters)

Made from the pump's hop events (events.py), so the hot path pays nothing more than an
observer call. A span per unit that ended: named `SENDER -> TO <Tag>`, from acceptance
to outcome, with the conversation id and the rest of the hop as attributes, and status
ERROR (the code as its description) when it was refused or failed. Every hop of one
conversation lands in one trace: the trace id is derived from the conversation id, so a
tracing UI shows a conversation as one trace whatever the process that sent it.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Callable

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from agentserver.message_bus.events import HopEvent

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["trace_hops", "trace_id_of"]


def trace_id_of(conversation: str) -> int:
    """The 128-bit trace id of a conversation (stable: the same id gives the same trace)."""
    return int.from_bytes(hashlib.sha256(conversation.encode()).digest()[:16], "big") or 1


def trace_hops(pump: "StreamPump", *, tracer_provider: trace.TracerProvider | None = None) -> Callable[[], None]:
    """Emit a span for every hop from now on; returns how to stop."""
    from agentserver import __version__

    tracer = trace.get_tracer("agentserver", __version__, tracer_provider=tracer_provider)
    organism = pump.config.name

    def span(event: HopEvent) -> None:
        conversation = event.conversation or f"refused:{event.message_id}"
        parent = SpanContext(trace_id=trace_id_of(conversation), span_id=random.getrandbits(64) or 1, is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
        end = int(event.time * 1e9)
        hop = tracer.start_span(
            f"{event.sender} -> {event.to} <{event.root_tag}>", context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.INTERNAL, start_time=end - int(event.duration_s * 1e9),
            attributes={"agentserver.organism": organism, "agentserver.conversation_id": conversation,
                        "agentserver.thread": event.thread, "agentserver.sender": event.sender, "agentserver.to": event.to,
                        "agentserver.root_tag": event.root_tag, "agentserver.bytes": event.bytes,
                        "agentserver.outcome": event.outcome, "agentserver.message_id": event.message_id,
                        "agentserver.call_id": event.call_id})
        if event.outcome != "handled":
            hop.set_status(Status(StatusCode.ERROR, event.outcome))
        hop.end(end_time=end)

    return pump.events.subscribe(span)
