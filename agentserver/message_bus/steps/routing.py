"""Step 8, routing (fan-out): one payload -> one state per destination.

Returns a list of states, each with `target` (a Listener, or the name of an external
client) and `delivery_thread` (where the target handles it). The rules, DESIGN.md §5:

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

from agentserver.message_bus.listeners import Listener
from agentserver.message_bus.message_state import MessageState, OriginKind
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.primitives import SystemError


def route(state: MessageState, ctx: PipelineContext) -> list[MessageState]:
    if state.error is not None:
        return [state]
    targets = _targets(state, ctx)
    if not targets:  # _targets set the error
        return [state]
    conversation = state.thread.conversation
    conversation.hops += len(targets)
    if conversation.hops > ctx.limits.max_thread_hops:
        conversation.ended = True
        return [state.fail("hops", f"{conversation.hops} hops, limit {ctx.limits.max_thread_hops}", "routing")]
    states = [state] + [state.fork() for _ in targets[1:]]
    for each, target in zip(states, targets):
        each.target = target
        if isinstance(target, str) or state.thread.owner == target.name:
            each.delivery_thread = state.thread
        else:
            each.delivery_thread = ctx.threads.extend(state.thread, target.name)
    return states


def _targets(state: MessageState, ctx: PipelineContext) -> list[Listener | str]:
    kind = state.origin.kind
    routes = ctx.routes
    tag = state.root_tag
    sender = routes.by_name.get(state.sender) if kind is OriginKind.LISTENER else None
    if state.to is not None:
        listener = routes.by_name.get(state.to)
        if listener is None:
            thread = state.thread
            if kind is not OriginKind.EXTERNAL and thread.parent is None and thread.owner == state.to:
                return [state.to]  # a respond() that reaches the conversation's root: a client (or system)
            state.fail("no-route", f"<to>{state.to}</to> is not a listener", "routing")
            return []
        if kind is OriginKind.SYSTEM and state.payload_type.cls is SystemError:
            return [listener]
        if listener.system and kind is not OriginKind.SYSTEM:
            state.fail("no-route", f"{listener.name!r} is a system listener", "routing")
            return []
        returning = kind is not OriginKind.EXTERNAL and state.thread.owner == listener.name
        if returning:
            return [listener]  # a respond() (or self-call): the caller takes any payload type
        if listener.root_tag != tag:
            state.fail("no-route", f"{listener.name!r} does not accept <{tag}>", "routing")
            return []
        if sender is not None and not sender.may_send_to(listener.name):
            state.fail("routing", f"peer violation: {sender.name} -> {listener.name}", "routing")
            return []
        return [listener]
    candidates = [
        listener
        for listener in routes.by_tag.get(tag, ())
        if listener.name != state.sender and (kind is OriginKind.SYSTEM or not listener.system)
    ]
    if not candidates:
        state.fail("no-route", f"no listener for <{tag}>", "routing")
        return []
    if sender is not None:
        allowed = [listener for listener in candidates if sender.may_send_to(listener.name)]
        if not allowed:
            state.fail("routing", f"peer violation: {sender.name} -> broadcast <{tag}>", "routing")
            return []
        return allowed
    return candidates
