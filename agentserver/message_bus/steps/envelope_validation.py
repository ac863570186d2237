"""Step 3, envelope validation against the packaged envelope.xsd.

Yields the state with `sender`, `to` and `thread_ref` read from `<meta>`, and its
`message_id` (the sender's `<id>`, or a new one) and `call_id` (its `<call>`, or its id). Refusal:
`invalid-envelope` (the validator's message goes to the log, never to the sender).
Envelopes the pump built itself (`prebuilt`: handler output, system messages) were
made by `build_envelope` from values it checked, and carry those values already; only
their payloads are validated, by the XSD step.
"""

from __future__ import annotations

from agentserver.envelope import read_meta
from agentserver.codes import ErrorCode as E
from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.xmlsafe import schema_error


def validate_envelope(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None or state.prebuilt:
        return state
    root = state.root
    assert root is not None  # repair parsed it
    schema = ctx.envelope_schema
    if not schema.validate(root):
        return state.fail(E.INVALID_ENVELOPE, f"envelope: {schema_error(schema)}", "envelope")
    meta = read_meta(root)
    state.sender, state.to, state.thread_ref = meta.sender, meta.to, meta.thread
    state.message_id = meta.message_id or ctx.ids.new()
    state.call_id = meta.call or state.message_id
    return state
