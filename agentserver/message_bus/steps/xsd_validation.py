"""Step 6, XSD validation of the payload against its listener's schema.

Yields the state with `payload_type` set: the class and compiled schema registered for
the payload's root tag (listeners' payload classes, the pump's primitives, and classes
handlers have emitted). Refusals: `no-route` (nobody knows that root tag) and
`invalid-payload` (the validator's message goes to the log only).
"""

from __future__ import annotations

from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext


def validate_payload(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None:
        return state
    payload_type = ctx.routes.payload_types.get(state.root_tag)
    if payload_type is None:
        return state.fail("no-route", f"no listener or type for root tag <{state.root_tag}>", "xsd")
    schema = payload_type.schema
    if not schema.validate(state.payload_element):
        error = schema.error_log.last_error
        return state.fail("invalid-payload", f"<{state.root_tag}>: {error.message if error else 'invalid'}", "xsd")
    state.payload_type = payload_type
    return state
