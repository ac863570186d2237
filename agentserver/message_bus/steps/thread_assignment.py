"""Step 5, thread assignment: which conversation and thread the message belongs to.

Yields the state with `thread` (the *sender's* thread) set and bound to its
conversation. For an external sender this also settles identity: `<from>` must be the
connection's own name (when it has one) and may not name a listener or a reserved name
(`forbidden-sender`); the client's thread id opens or continues a conversation of that
client's session (a later connection with the same name has conversations of its own). Messages the pump built (handler output, system messages) already carry
their thread. A conversation that was ended (over `max_thread_hops`, over its budget,
past its deadline, cancelled) takes no more messages: they fail with the code that
ended it, silently (its root caller has been told once).
"""

from __future__ import annotations

from agentserver.limits import is_reserved
from agentserver.codes import ErrorCode as E
from agentserver.message_bus.message_state import MessageState, OriginKind
from agentserver.message_bus.pipeline_context import PipelineContext


def assign_thread(state: MessageState, ctx: PipelineContext) -> MessageState:
    if state.error is not None:
        return state
    thread = state.thread
    if thread is None:
        if state.origin.kind is not OriginKind.EXTERNAL:
            thread = ctx.threads.get(state.thread_ref)
            if thread is None:
                return state.fail(E.UNKNOWN_THREAD, f"thread {state.thread_ref} is not known", "threads")
        else:
            sender = state.sender
            claimed = state.origin.name
            if claimed is not None and sender != claimed:
                return state.fail(E.FORBIDDEN_SENDER, f"<from>{sender}</from> on a connection named {claimed!r}", "threads")
            if is_reserved(sender) or sender in ctx.routes.by_name:
                return state.fail(E.FORBIDDEN_SENDER, f"external sender may not call itself {sender!r}", "threads")
            thread = ctx.threads.open(sender, state.thread_ref, session=state.session, now=ctx.clock())
        state.thread = thread
    state.bind(thread.conversation)
    ended = thread.conversation.ended
    if ended is not None:
        return state.fail(ended, f"the conversation was ended ({ended})", "threads")
    return state
