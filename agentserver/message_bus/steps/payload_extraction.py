"""Step 4, payload extraction (fan-out): one envelope -> one state per payload.

Returns a list: one state per payload element after `<meta>`, each with
`payload_element` and `root_tag` set (the first reuses the incoming state, the others
are forks that share its holds). An errored state comes back alone. External senders
may put exactly one payload in an envelope; handler output may carry several (a legacy
`bytes` return), and those must be unqualified like every payload. Refusal:
`invalid-envelope`.
"""

from __future__ import annotations

from agentserver.envelope import payload_elements
from agentserver.codes import ErrorCode as E
from agentserver.message_bus.message_state import MessageState, OriginKind
from agentserver.message_bus.pipeline_context import PipelineContext


def extract_payloads(state: MessageState, ctx: PipelineContext) -> list[MessageState]:
    if state.error is not None:
        return [state]
    assert state.root is not None  # repair parsed it
    payloads = payload_elements(state.root)
    if not payloads:
        return [state.fail(E.INVALID_ENVELOPE, "envelope carries no payload", "extraction")]
    if len(payloads) > 1 and state.origin.kind is OriginKind.EXTERNAL:
        return [state.fail(E.INVALID_ENVELOPE, f"{len(payloads)} payloads; external senders send one per message", "extraction")]
    if state.prebuilt and any(p.tag[0] == "{" for p in payloads):  # external ones: envelope.xsd said so
        return [state.fail(E.INVALID_ENVELOPE, "payloads must be unqualified (xmlns=\"\")", "extraction")]
    first = payloads[0]
    states = [state.fork(payload_element=p, root_tag=p.tag) for p in payloads[1:]]
    state.payload_element, state.root_tag = first, first.tag
    return [state, *states]
