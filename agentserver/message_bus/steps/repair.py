"""Step 1, repair: bytes -> parsed envelope tree (`state.root`).

Yields the state with `root` set, parsed strictly by the pump's safe parser. Input the
strict parser rejects is re-read by libxml2's recovering parser; the result is kept
only if the routing fields `<from>`, `<to>` and `<thread>`
read back exactly as they stand in the original bytes: repair may drop damage in a
payload, never change who a message is from, for, or on which thread. A repaired
message is validated by the later steps like any other. Refusals: `too-large`,
`forbidden-dtd`, `malformed`.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

from lxml import etree

from agentserver.envelope import META, read_meta
from agentserver.codes import ErrorCode as E
from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.xmlsafe import UnsafeXml

_META_REGION = re.compile(rb"<(?:[\w.-]+:)?meta[\s>].*?</(?:[\w.-]+:)?meta\s*>", re.S)


def repair(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None or state.root is not None:
        return state
    try:
        state.root = ctx.xml.parse(state.raw)
        return state
    except UnsafeXml as exc:
        return state.fail(exc.code, exc.detail, "repair")
    except etree.XMLSyntaxError as exc:
        strict_error = str(exc)
    recovered = ctx.xml.recover(state.raw)
    if recovered is None or not _meta_intact(recovered, state.raw):
        return state.fail(E.MALFORMED, f"not well-formed and not repairable: {strict_error}", "repair")
    state.root = recovered
    return state


def _meta_intact(root: etree._Element, raw: bytes) -> bool:
    """True when the recovered routing fields appear verbatim in the original bytes."""
    if len(root) == 0 or root[0].tag != META:
        return False
    region = _META_REGION.search(raw)
    if region is None:
        return False
    text = region.group(0).decode("utf-8")
    meta = read_meta(root)
    for tag, value in (("from", meta.sender), ("to", meta.to), ("thread", meta.thread)):
        if value is None:
            continue
        if not re.search(rf"<(?:[\w.-]+:)?{tag}>{re.escape(escape(value))}</(?:[\w.-]+:)?{tag}>", text):
            return False
    return True
