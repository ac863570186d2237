"""Calling a peer and awaiting its answer (DESIGN.md §11): `meta.ask`.

    total = await meta.ask("calculator", Add(a=1, b=2), timeout=10)

`CallDesk.ask` sends the payload exactly as `HandlerResponse(payload, to=peer)` would
(the same envelope, validation, peers rule, hop count, context buffer and child
thread), registers the call under its call id, gives the handler's slots back while
it waits (so chains of awaiting handlers cannot deadlock, even with one slot), and
takes a slot again, fairly, before the handler continues. Calls a handler makes at
once (`asyncio.gather`) give the slot back once, and the last to end takes it back.

`Calls` keeps the awaited calls of one pump. What ends a call:

- its answer: the peer's `respond()` carries the call id and is delivered on the
  asker's thread; the pump hands it to the waiter instead of starting a new call;
- a failure in its branch: the message refused, the peer's handler raising or timing
  out, the peers rule: the waiter gets `PeerError(code, peer, call_id)`;
- no answer: every unit of the call's branch (what the peer, and whoever it called in
  turn, sent on) has ended and none answered: `PeerError` code `no-answer`;
- the `timeout` argument (`TimeoutError`), or the waiting handler being cancelled
  (its own deadline, shutdown, the conversation's end): the call is abandoned.

An answer that arrives for a call no longer awaited is late: dropped, logged, counted.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from agentserver.codes import ErrorCode, canned
from agentserver.message_bus.message_state import Delivery, HandlerResponse, MessageState
from agentserver.message_bus.responses import WrongType, build_responses

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.flow import HandlerSlots
    from agentserver.message_bus.pipeline_context import PipelineContext
    from agentserver.message_bus.thread_registry import Thread

__all__ = ["PeerError", "Call", "Calls", "CallDesk"]


class PeerError(Exception):
    """An awaited call failed: `code` says how, `peer` is whom it was to, `call_id` which call."""

    def __init__(self, code: str, peer: str, call_id: str, message: str = "") -> None:
        super().__init__(f"{code}: call {call_id} to {peer!r}: {message or canned(code)}")
        self.code, self.peer, self.call_id = str(code), peer, call_id


class Call:
    """One awaited call: who asked (on which thread), whom, and the branch's live units."""

    __slots__ = ("id", "peer", "thread", "future", "live")

    def __init__(self, call_id: str, peer: str, thread: "Thread") -> None:
        self.id = call_id
        self.peer = peer
        self.thread = thread  # the asker's thread: the answer is delivered there
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.live = 0  # units of its branch in flight


class Calls:
    """The awaited calls of one pump, by call id. No I/O."""

    def __init__(self) -> None:
        self._open: dict[str, Call] = {}
        self.late = 0
        self.on_open: Callable[[Call], None] | None = None  # the journal keeps which calls are awaited

    def __len__(self) -> int:
        return len(self._open)

    def awaited(self) -> list[Call]:
        return list(self._open.values())

    def open(self, call_id: str, peer: str, thread: "Thread") -> Call:
        call = self._open[call_id] = Call(call_id, peer, thread)
        thread.conversation.awaited += 1
        if self.on_open is not None:
            self.on_open(call)
        return call

    def close(self, call: Call) -> None:
        """No longer awaited (answered, failed, timed out, abandoned): a later answer is late."""
        if self._open.pop(call.id, None) is not None:
            conversation = call.thread.conversation
            conversation.awaited -= 1
            conversation.closed_calls[call.id] = call.thread.id
            if not call.future.done():
                call.future.cancel()

    def enclosing(self, thread: "Thread | None") -> Call | None:
        """The innermost awaited call whose branch `thread` is part of, if any."""
        if thread is None or not thread.conversation.awaited:
            return None
        walker: Thread | None = thread
        while walker is not None:
            call = self._open.get(walker.call_id or "")
            if call is not None and walker is not call.thread:
                return call
            walker = walker.parent
        return None

    def answer(self, state: MessageState, route: Delivery) -> bool | None:
        """A delivery that answers an awaited call resumes its waiter (True); one that answers
        a call no longer awaited is late (False); anything else is a new call (None)."""
        call = self._open.get(state.call_id)
        if call is not None and route.thread is call.thread and state.sender_thread is not call.thread:
            if call.future.done():  # answered (or failed) already: a second respond() is late
                self.late += 1
                return False
            call.future.set_result(state.payload)
            return True
        if route.thread.conversation.closed_calls.get(state.call_id) == route.thread.id and state.sender_thread is not route.thread:
            self.late += 1
            return False
        return None

    def fail(self, call_id: str, code: ErrorCode, peer: str) -> bool:
        """A failure in the branch of `call_id`: raise it in its waiter. False if none waits."""
        call = self._open.get(call_id)
        if call is None:
            return False
        if not call.future.done():
            call.future.set_exception(PeerError(code, peer or call.peer, call_id))
        return True

    @staticmethod
    def unit_started(state: MessageState) -> None:
        if state.branch is not None:
            state.branch.live += 1

    def unit_ended(self, state: MessageState) -> None:
        """A unit ended; if it was the last of an awaited call's branch and none answered: no-answer."""
        call = state.branch
        if call is None:
            return
        call.live -= 1
        if call.live <= 0 and call.id in self._open and not call.future.done():
            call.future.set_exception(PeerError(ErrorCode.NO_ANSWER, call.peer, call.id))


class CallDesk:
    """What `meta.ask` does for one pump: send, wait without a slot, take a slot back."""

    def __init__(self, ctx: "PipelineContext", calls: Calls, slots: "HandlerSlots",
                 push: Callable[[MessageState], None], start: Callable[[MessageState], None]) -> None:
        self.ctx = ctx
        self.calls = calls
        self.slots = slots
        self.push = push  # the pump's: queue a unit it built
        self.start = start  # the pump's: start a unit's handler (a slot is taken for it)

    async def ask(self, unit: MessageState, route: Delivery, peer: str, payload: Any, timeout: float | None) -> Any:
        name = route.listener.name
        try:
            (message,) = build_responses(HandlerResponse(payload, to=peer), sender=name, thread=route.thread,
                                         ctx=self.ctx).states
        except WrongType as exc:
            raise TypeError(f"meta.ask({peer!r}, ...): {exc}") from None
        call = self.calls.open(message.call_id, peer, route.thread)
        message.branch = call
        self.push(message)
        unit.asking += 1
        if unit.asking == 1:  # its first call in flight: wait without holding a slot
            for parked in self.slots.free(name):
                self.start(parked)
        try:
            answer = await (asyncio.wait_for(call.future, timeout) if timeout is not None else call.future)
        except asyncio.CancelledError:
            self.calls.close(call)
            unit.asking -= 1
            if unit.asking == 0:
                self.slots.retake(name)  # the handler ends now: its unit gives back a slot it holds
            raise
        except BaseException:
            self.calls.close(call)
            await self._calls_done(unit, name)
            raise
        self.calls.close(call)
        await self._calls_done(unit, name)
        return answer

    async def _calls_done(self, unit: MessageState, name: str) -> None:
        """One of the unit's calls ended; the last to end takes a slot back (fairly) for it."""
        unit.asking -= 1
        if unit.asking == 0:
            await self._take_slot(unit, name)

    async def _take_slot(self, unit: MessageState, name: str) -> None:
        conversation = unit.conversation
        assert conversation is not None
        try:
            await self.slots.resume(name, conversation.lane, conversation.id)
        except asyncio.CancelledError:
            self.slots.retake(name)
            raise
