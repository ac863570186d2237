"""Step 8, routing (fan-out): one payload -> one state per destination.

Returns a list of states, each with its `route`: a `Delivery` (a listener and the thread
it handles the message on) or a `ToClient` (a reply to the client, or `system`, at the
root of the conversation). The rules, DESIGN.md §5:

- with `<to>`: only that listener, which must accept the root tag, unless the message
  returns to it (a `respond()` or a self-call: a caller takes answers of any type); or
  the external client a `respond()` returns to;
- without `<to>`: every listener of the root tag (broadcast), never the sender itself;
- `system.*` listeners take only the pump's own messages; a SystemError from the pump
  reaches any listener;
- a listener with peers may forward only to them (and itself); an agent without peers
  may only respond (`routing`, told to the sender; its thread stays alive);
- every delivery is a hop of its conversation; past `max_thread_hops` the
  conversation is ended (`hops`).

A listener delivery continues its thread when the thread already belongs to the
target (a `respond()` or a self-call) and opens a child thread otherwise.
"""

from __future__ import annotations

from agentserver.codes import ErrorCode as E
from agentserver.message_bus.listeners import Listener
from agentserver.message_bus.message_state import Delivery, MessageState, OriginKind, ToClient
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.message_bus.thread_registry import Thread
from agentserver.primitives import SystemError


def route(state: MessageState, ctx: PipelineContext) -> list[MessageState]:
    if state.error is not None:
        return [state]
    thread = state.thread
    assert thread is not None and state.payload_type is not None  # set by the steps before
    targets = _targets(state, thread, ctx)
    if not targets:  # _targets set the error
        return [state]
    conversation = thread.conversation
    conversation.hops += len(targets)
    if conversation.hops > ctx.limits.max_thread_hops:
        conversation.ended = E.HOPS
        return [state.fail(E.HOPS, f"{conversation.hops} hops, limit {ctx.limits.max_thread_hops}", "routing")]
    states = [state] + [state.fork() for _ in targets[1:]]
    for each, target in zip(states, targets):
        if target is None:
            each.route = ToClient(thread)
        elif thread.owner == target.name:
            each.route = Delivery(target, thread)
        else:
            each.route = Delivery(target, ctx.threads.extend(thread, target.name, state.call_id))
    return states


def _targets(state: MessageState, thread: Thread, ctx: PipelineContext) -> list[Listener | None]:
    """The listeners to deliver to; [None] for a reply to the root; [] (error set) for none."""
    kind = state.origin.kind
    routes = ctx.routes
    tag = state.root_tag
    sender = routes.by_name.get(state.sender) if kind is OriginKind.LISTENER else None
    if state.to is not None:
        listener = routes.by_name.get(state.to)
        if listener is None:
            if kind is not OriginKind.EXTERNAL and thread.parent is None and thread.owner == state.to:
                return [None]  # a respond() that reaches the conversation's root: a client (or system)
            state.fail(E.NO_ROUTE, f"<to>{state.to}</to> is not a listener", "routing")
            return []
        if kind is OriginKind.SYSTEM and state.payload_type is not None and state.payload_type.cls is SystemError:
            return [listener]
        if listener.system and kind is not OriginKind.SYSTEM:
            state.fail(E.NO_ROUTE, f"{listener.name!r} is a system listener", "routing")
            return []
        returning = kind is not OriginKind.EXTERNAL and thread.owner == listener.name
        if returning:
            return [listener]  # a respond() (or self-call): the caller takes any payload type
        if listener.root_tag != tag:
            state.fail(E.NO_ROUTE, f"{listener.name!r} does not accept <{tag}>", "routing")
            return []
        if sender is not None and not sender.may_send_to(listener.name):
            state.fail(E.ROUTING, f"peer violation: {sender.name} -> {listener.name}", "routing")
            return []
        return [listener]
    candidates: list[Listener | None] = [
        listener
        for listener in routes.by_tag.get(tag, ())
        if listener.name != state.sender and (kind is OriginKind.SYSTEM or not listener.system)
    ]
    if not candidates:
        state.fail(E.NO_ROUTE, f"no listener for <{tag}>", "routing")
        return []
    if sender is not None:
        allowed: list[Listener | None] = [listener for listener in candidates if listener and sender.may_send_to(listener.name)]
        if not allowed:
            state.fail(E.ROUTING, f"peer violation: {sender.name} -> broadcast <{tag}>", "routing")
            return []
        return allowed
    return candidates
