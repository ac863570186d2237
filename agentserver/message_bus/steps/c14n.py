"""Step 2, exclusive C14N: `state.canonical` = the envelope's exclusive canonical bytes.

Yields the state with `canonical` set: one stable byte form per message whatever the
sender's attribute order, whitespace inside tags, comments, character references or
unused namespace declarations (C14N keeps namespace prefixes as the sender wrote
them). It is what dead letters and logs keep. The tree itself is not re-parsed.
Envelopes the pump built itself skip this step; a dead letter canonicalizes one on
demand.
"""

from __future__ import annotations

from lxml import etree

from agentserver.codes import ErrorCode as E
from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext


def canonicalize(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None or state.prebuilt:
        return state  # the pump's own envelopes: canonical bytes are made only if needed
    assert state.root is not None  # repair parsed it
    try:
        state.canonical = etree.tostring(state.root, method="c14n", exclusive=True)
    except (etree.C14NError, ValueError) as exc:  # e.g. relative namespace URIs
        return state.fail(E.MALFORMED, f"cannot canonicalize: {exc}", "c14n")
    return state
