"""Step 7, deserialization: the payload element -> an instance of its @xmlify class.

Yields the state with `payload` set, read by `Cls.parse` from the objectified element.
Refusal: `unreadable-payload` (valid XML that the class still cannot take).
"""

from __future__ import annotations

from lxml import objectify

from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext


def deserialize(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None:
        return state
    element = state.payload_element
    if not isinstance(element, objectify.ObjectifiedElement):
        # built outside the pump's parser (a stale proxy): read it back through it
        from lxml import etree

        element = ctx.xml.fragment(etree.tostring(element))[0]
    try:
        state.payload = state.payload_type.cls.parse(element)
    except Exception as exc:  # xmlable raises many kinds; all mean "cannot read"
        return state.fail("unreadable-payload", f"<{state.root_tag}>: {type(exc).__name__}: {exc}", "deserialize")
    return state
