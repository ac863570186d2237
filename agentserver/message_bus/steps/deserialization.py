"""Step 7, deserialization: the payload element -> an instance of its @xmlify class.

Yields the state with `payload` set, read by `Cls.parse` from the objectified element
(or by the class's fast codec, which reads it by the same rules: codec.py). Refusal:
`unreadable-payload` (valid XML that the class still cannot take). The codec reads only
elements its class's schema has just accepted, so a codec that fails is a bug in
agentserver, not in the message: `internal`, logged with its traceback.
"""

from __future__ import annotations

from lxml import etree, objectify

from agentserver.codes import ErrorCode as E
from agentserver.message_bus.codec import Refused
from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext


def deserialize(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None:
        return state
    element = state.payload_element
    payload_type = state.payload_type
    assert element is not None and payload_type is not None  # set by the steps before
    if payload_type.codec is not None:
        try:
            state.payload = payload_type.codec.from_element(element)
        except Refused as exc:
            return state.fail(E.UNREADABLE_PAYLOAD, f"<{state.root_tag}>: {exc}", "deserialize")
        except Exception as exc:
            return state.fail(E.INTERNAL, f"<{state.root_tag}>: the codec failed on a valid payload: {exc!r}", "deserialize", exc)
        return state
    if not isinstance(element, objectify.ObjectifiedElement):
        # built outside the pump's parser (a stale proxy): read it back through it
        element = ctx.xml.fragment(etree.tostring(element))[0]
    try:
        state.payload = payload_type.cls.parse(element)  # type: ignore[attr-defined]
    except Exception as exc:  # xmlable raises many kinds; all mean "cannot read"
        return state.fail(E.UNREADABLE_PAYLOAD, f"<{state.root_tag}>: {type(exc).__name__}: {exc}", "deserialize")
    return state
