"""Turning a handler's return value into outgoing messages. No I/O.

`build_responses` takes what a handler returned and gives back the envelopes the pump
re-injects (as `MessageState`s that already hold their tree and their conversation)
plus the todo operations to apply. The pump writes `<from>`, `<thread>`, `<id>` (a new
message id) and `<call>` (a new call id for a call; for a `respond()`, the id of the
call being answered); nothing a handler returns can set them.

- None: nothing;
- HandlerResponse(payload, to="x"): one envelope to x, on the handler's thread;
- HandlerResponse.respond(payload): one envelope to the caller, on the parent thread
  (the chain pruned by one hop); at the root there is nobody to answer and the branch
  ends;
- HandlerResponse(payload) without `to`: routed by root tag (broadcast);
- a list: each item as above, in order;
- bytes: one envelope carrying every payload element in them, routed by root tag;
- TodoUntil / TodoComplete (bare or wrapped): todo operations on the handler's thread.

Anything else raises WrongType.

`system_message` builds what the pump itself sends (Boot, SystemError) the same way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from agentserver.codes import ErrorCode
from agentserver.envelope import NIL_THREAD, build_envelope
from agentserver.message_bus.message_state import SYSTEM_ORIGIN, HandlerResponse, MessageState, Origin, ToClient
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.message_bus.thread_registry import Thread
from agentserver.primitives import TodoComplete, TodoUntil
from agentserver.outbound import Outbound, OutboundKind
from agentserver.xmlsafe import UnsafeXml

__all__ = ["build_responses", "Responses", "WrongType", "payload_element", "system_message", "reply_outbound", "deliver_reply"]


class WrongType(Exception):
    """The handler returned something it may not return."""


@dataclass(slots=True)
class Responses:
    states: list[MessageState] = field(default_factory=list)
    todos: list[TodoUntil | TodoComplete] = field(default_factory=list)


def payload_element(payload: Any, ctx: PipelineContext) -> etree._Element:
    """The XML element of an @xmlify payload object. Raises WrongType."""
    payload_type = ctx.routes.payload_types.for_class(type(payload))
    if payload_type is None:
        raise WrongType(f"{type(payload).__name__} is not an @xmlify dataclass")
    try:
        return payload_type.to_element(payload)
    except Exception as exc:  # xmlable's own errors: a field holds the wrong type
        raise WrongType(f"{type(payload).__name__} cannot be written as XML: {exc}") from None


def build_responses(result: Any, *, sender: str, thread: Thread, ctx: PipelineContext) -> Responses:
    out = Responses()
    items = result if isinstance(result, list) else [result]
    if len(items) > ctx.limits.max_fanout:
        raise WrongType(f"{len(items)} responses at once; limit is {ctx.limits.max_fanout}")
    for item in items:
        _one(item, sender, thread, ctx, out)
    return out


def _one(item: Any, sender: str, thread: Thread, ctx: PipelineContext, out: Responses) -> None:
    if item is None:
        return
    if isinstance(item, (TodoUntil, TodoComplete)):
        out.todos.append(item)
        return
    if isinstance(item, HandlerResponse):
        if isinstance(item.payload, (TodoUntil, TodoComplete)):
            out.todos.append(item.payload)
            return
        element = payload_element(item.payload, ctx)
        if item.is_response:
            parent = ctx.threads.prune(thread)
            if parent is None:
                return  # nobody above the root: this branch ends here
            out.states.append(_envelope([element], sender, parent.owner, parent, thread, ctx, thread.call_id))
        else:
            out.states.append(_envelope([element], sender, item.to, thread, thread, ctx, ctx.ids.new()))
        return
    if isinstance(item, (bytes, bytearray)):
        try:
            elements = ctx.xml.fragment(bytes(item))
        except (UnsafeXml, etree.XMLSyntaxError) as exc:
            state = MessageState(raw=bytes(item)[:4096], origin=Origin.listener(sender), sender=sender, thread=thread,
                                 sender_thread=thread, message_id=ctx.ids.new(), call_id=ctx.ids.new())
            state.bind(thread.conversation)
            # UnsafeXml carries our short code; XMLSyntaxError's `code` is libxml2's number
            code = exc.code if isinstance(exc, UnsafeXml) else ErrorCode.MALFORMED
            out.states.append(state.fail(code, f"handler bytes: {exc}", "responses"))
            return
        if len(elements) > ctx.limits.max_fanout:
            raise WrongType(f"{len(elements)} payloads at once; limit is {ctx.limits.max_fanout}")
        out.states.append(_envelope(elements, sender, None, thread, thread, ctx, ctx.ids.new()))
        return
    raise WrongType(f"handler returned {type(item).__name__}; expected None, HandlerResponse, a list of them, or bytes")


def system_message(ctx: PipelineContext, payload: Any, *, to: str | None, thread: Thread, call: str | None = None) -> MessageState:
    """A message from `system` (Boot, SystemError) on `thread`, to `to` or broadcast;
    `call` is the call a SystemError is about.

    A SystemError to someone is an error report: if it fails in turn, nobody is told."""
    message_id = ctx.ids.new()
    root = build_envelope(payload_element(payload, ctx), sender="system", to=to, thread=thread.id,
                          message_id=message_id, call=call, factory=ctx.xml.makeelement)
    state = MessageState(raw=b"", origin=SYSTEM_ORIGIN, root=root, prebuilt=True, sender="system", to=to,
                         thread_ref=thread.id, message_id=message_id, call_id=call or message_id, thread=thread,
                         is_error_report=to is not None)
    state.bind(thread.conversation)
    return state


def reply_outbound(state: MessageState, route: ToClient) -> Outbound:
    """What the client at the root of the conversation receives for a routed reply.

    The frame bytes are built only if a socket client needs them; the thread id is the
    one the client used."""
    thread_id = route.thread.conversation.external_id or NIL_THREAD
    element, sender, client = state.payload_element, state.sender, route.client
    assert element is not None  # a routed message has its payload

    message_id, call = state.message_id or None, state.call_id or None

    def frame() -> bytes:
        return etree.tostring(build_envelope(copy.deepcopy(element), sender=sender, to=client, thread=thread_id,
                                             message_id=message_id, call=call))

    return Outbound(OutboundKind.REPLY, thread_id, sender, frame, state.payload, element)


def deliver_reply(state: MessageState, route: ToClient) -> bool:
    """Hand a routed reply to the session of the client at the root of its conversation;
    False if that client is gone or not reading. A respond() at the root of the pump's
    own conversation (Boot's: no session) simply ends there."""
    session = route.thread.conversation.session
    if session is None:
        return route.client == "system"
    return session.deliver(reply_outbound(state, route))


def _envelope(elements: list[etree._Element], sender: str, to: str | None, thread: Thread, sender_thread: Thread,
              ctx: PipelineContext, call: str | None) -> MessageState:
    message_id = ctx.ids.new()
    root = build_envelope(elements, sender=sender, to=to, thread=thread.id, message_id=message_id, call=call,
                          factory=ctx.xml.makeelement)
    state = MessageState(raw=b"", origin=Origin.listener(sender), root=root, prebuilt=True, sender=sender, to=to,
                         thread_ref=thread.id, message_id=message_id, call_id=call or "", thread=thread,
                         sender_thread=sender_thread)
    state.bind(thread.conversation)
    return state
