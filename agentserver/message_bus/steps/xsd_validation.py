"""Step 6, XSD validation of the payload against its listener's schema.

Yields the state with `payload_type` set: the class and compiled schema registered for
the payload's root tag (listeners' payload classes, the pump's primitives, and classes
handlers have emitted). Refusals: `no-route` (nobody knows that root tag) and
`invalid-payload` (the validator's message goes to the log only).
"""

from __future__ import annotations

from agentserver.codes import ErrorCode as E
from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.xmlsafe import schema_error


def validate_payload(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None:
        return state
    payload_type = ctx.routes.payload_types.get(state.root_tag)
    if payload_type is None:
        return state.fail(E.NO_ROUTE, f"no listener or type for root tag <{state.root_tag}>", "xsd")
    element = state.payload_element
    assert element is not None  # extraction found it
    schema = payload_type.schema
    if not schema.validate(element):
        return state.fail(E.INVALID_PAYLOAD, f"<{state.root_tag}>: {schema_error(schema)}", "xsd")
    state.payload_type = payload_type
    return state
