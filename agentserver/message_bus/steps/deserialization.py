"""Step 7, deserialization: the payload element -> an instance of its @xmlify class.

Yields the state with `payload` set, read by `Cls.parse` from the objectified element
(or by the class's fast codec, which reads it by the same rules: codec.py). Refusal:
`unreadable-payload` (valid XML that the class still cannot take).
"""

from __future__ import annotations

from lxml import etree, objectify

from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext


def deserialize(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None:
        return state
    element = state.payload_element
    payload_type = state.payload_type
    if payload_type.codec is None and not isinstance(element, objectify.ObjectifiedElement):
        # built outside the pump's parser (a stale proxy): read it back through it
        element = ctx.xml.fragment(etree.tostring(element))[0]
    try:
        state.payload = payload_type.from_element(element)
    except Exception as exc:  # xmlable raises many kinds; all mean "cannot read"
        return state.fail("unreadable-payload", f"<{state.root_tag}>: {type(exc).__name__}: {exc}", "deserialize")
    return state
