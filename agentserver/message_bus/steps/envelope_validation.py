"""Step 3, envelope validation against the packaged envelope.xsd.

Yields the state with `sender`, `to` and `thread_ref` read from `<meta>`, and its
`message_id` (the sender's `<id>`, or a new one) and `call_id` (its `<call>`, or its id).
A message whose sender gave it an id already accepted lately is a `duplicate`: it is
acked again and not processed a second time (dedupe.py); a unit replayed from the
journal keeps the id it was given the first time. Refusal:
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
    if state.redelivered:  # replayed from the journal: the id it had, and it is no duplicate of itself
        state.message_id = meta.message_id or state.message_id
        state.call_id = meta.call or state.message_id
        state.client_id = meta.message_id is not None
        return state
    state.message_id = meta.message_id or state.message_id or ctx.ids.new()  # (a journal names it on arrival)
    state.call_id = meta.call or state.message_id
    if meta.message_id is not None:
        state.client_id = True
        if ctx.dedupe.seen(state.origin.name or meta.sender, meta.message_id):
            return state.fail(E.DUPLICATE, f"message {meta.message_id} was accepted already", "envelope")
    return state
