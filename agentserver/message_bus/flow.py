"""Flow control: how much work the pump takes in, and when a handler may start.

Two pieces, each owned by one pump:

`Admission`: the bounded external intake, the fair queue of waiting units and the
admission room. `inject` waits for a place in the intake (a full intake stops the
server reading sockets), and waiting senders get places round-robin (`FairSemaphore`),
so one client with thousands of sends in flight cannot queue ahead of everyone else;
handler output is pushed without waiting, so feedback cannot deadlock the pump. `batches()` hands the pipeline what is ready, fair across clients
and conversations, with at most `room` units between admission and their handler's
start. An external unit keeps its intake place until its handler starts, so a
backlog for a slow listener still pushes back on its client. It waits on an event;
it never polls.

`HandlerSlots`: the global cap (`max_concurrent_handlers`) and each listener's cap.
A unit that cannot start now is parked, per listener, in a fair queue (round-robin by
client, then conversation) and started when a slot frees: the pipeline never waits
for a slot, so refusals, replies and other listeners' units keep flowing while every
slot is busy, and a listener at its cap holds back nobody else. Pure bookkeeping: the
caller starts the units it is handed.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator, Hashable

from agentserver.message_bus.message_state import MessageState, Ticket
from agentserver.message_bus.scheduler import FairScheduler

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.counters import Counters, ListenerCounters
    from agentserver.message_bus.listeners import Routes
    from agentserver.message_bus.thread_registry import Conversation

__all__ = ["Admission", "HandlerSlots", "FairSemaphore", "PumpClosed", "BATCH"]

BATCH = 64  # most units taken from the queue for one pass through the pipeline


class PumpClosed(RuntimeError):
    """The pump is shutting down and takes no new messages."""


class FairSemaphore:
    """A semaphore whose waiters are served round-robin by key, FIFO within a key."""

    def __init__(self, value: int) -> None:
        self.value = value
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}
        self._ring: deque[Hashable] = deque()

    async def acquire(self, key: Hashable) -> None:
        if self.value > 0 and not self._ring:
            self.value -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(key)
        if queue is None:
            queue = self._waiting[key] = deque()
            self._ring.append(key)
        queue.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as it was cancelled: pass it on
                self.release()
            else:
                self._forget(key, future)
            raise

    def release(self) -> None:
        while self._ring:
            key = self._ring.popleft()
            queue = self._waiting[key]
            future = queue.popleft()
            if queue:
                self._ring.append(key)
            else:
                del self._waiting[key]
            if not future.done():
                future.set_result(None)  # the place goes straight to this waiter
                return
        self.value += 1

    def _forget(self, key: Hashable, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[key]
                self._ring.remove(key)


class Admission:
    def __init__(self, intake_capacity: int, room: int, depth_first: bool = False) -> None:
        self.queue: FairScheduler[MessageState] = FairScheduler(depth_first)
        self.room = room  # units that may be admitted now
        self.closing = False  # the intake takes nothing more
        self.stopping = False  # nothing more is admitted; batches() ends once nothing is left
        self._intake_space = FairSemaphore(intake_capacity)
        self._work = asyncio.Event()

    async def enter_intake(self, sender: Hashable) -> None:
        """Wait for a place in the bounded intake (given back by the unit's intake ticket);
        waiting senders are served round-robin. Raises PumpClosed once `closing`."""
        if self.closing:
            raise PumpClosed("the pump is shutting down")
        await self._intake_space.acquire(sender)
        if self.closing:
            self._intake_space.release()
            raise PumpClosed("the pump is shutting down")

    def push(self, state: MessageState, outer: Hashable, inner: Hashable = None, *, intake: bool = False) -> None:
        self.queue.push(outer, state, inner=inner, intake=intake)
        self._work.set()

    def wake(self) -> None:
        self._work.set()

    async def batches(self) -> AsyncIterator[list[MessageState]]:
        """Batches of units in fair order: what is ready, within the admission room.

        Ends when `stopping` is set and nothing is queued."""
        while True:
            batch = self._take()
            while not batch:
                if self.stopping:
                    return
                self._work.clear()  # set again by a push or by a freed admission place
                await self._work.wait()
                batch = self._take()
            yield batch

    def _take(self) -> list[MessageState]:
        batch: list[MessageState] = []
        while self.room and len(batch) < BATCH:
            popped = self.queue.pop()
            if popped is None:
                break
            state, from_intake = popped
            if from_intake:
                state.intake_ticket = Ticket(self._intake_space.release)
            state.ticket = Ticket(self._freed)
            self.room -= 1
            batch.append(state)
        return batch

    def _freed(self) -> None:
        self.room += 1
        if self.room == 1:
            self._work.set()

    def drain(self) -> list[MessageState]:
        """Everything still queued (shutdown); their intake places are given back."""
        items = []
        while (popped := self.queue.pop()) is not None:
            state, from_intake = popped
            if from_intake:
                self._intake_space.release()
            items.append(state)
        return items


class Resume:
    """A handler that awaited a peer (meta.ask) and waits for a slot to continue."""

    __slots__ = ("future", "lane", "inner")

    def __init__(self, lane: Hashable, inner: Hashable) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lane, self.inner = lane, inner


Parked = MessageState | Resume


class HandlerSlots:
    def __init__(self, total: int, routes: "Routes", counters: "Counters", depth_first: bool = False,
                 remote: bool = False) -> None:
        # remote: handlers run on whichever member of the organism takes them (DESIGN.md §15); JetStream
        # holds what waits and the members apply the caps, so here a unit waiting for a worker holds nothing
        self.total = sys.maxsize if remote else total
        self.busy = 0  # handlers running, all listeners
        self._cap = {name: sys.maxsize if remote and not listener.system else listener.concurrency
                     for name, listener in routes.by_name.items()}
        self._stats: dict[str, ListenerCounters] = {name: counters.listener(name) for name in routes.by_name}
        self._parked: dict[str, FairScheduler[Parked]] = {name: FairScheduler(depth_first) for name in self._cap}
        self._ring: deque[str] = deque()  # listeners with parked units, each once, in turn order

    def _free_slot(self, name: str) -> bool:
        return self._stats[name].running < self._cap[name] and self.busy < self.total

    def _occupy(self, name: str) -> None:
        self._stats[name].running += 1
        self.busy += 1

    def _park(self, name: str, item: Parked, outer: Hashable, inner: Hashable) -> None:
        parked = self._parked[name]
        if not parked:
            self._ring.append(name)
        parked.push(outer, item, inner=inner)
        self._stats[name].waiting += 1

    def take(self, name: str, unit: MessageState, outer: Hashable, inner: Hashable) -> bool:
        """True: a slot is taken and `unit` may start now. False: `unit` is parked."""
        if self._free_slot(name):
            self._occupy(name)
            return True
        self._park(name, unit, outer, inner)
        return False

    async def resume(self, name: str, outer: Hashable, inner: Hashable) -> None:
        """Take a slot for a handler of `name` that waited without one: now, or once its
        turn comes (fairly, among the units parked for the listener)."""
        if self._free_slot(name):
            self._occupy(name)
            return
        resume = Resume(outer, inner)
        self._park(name, resume, outer, inner)
        await resume.future  # cancelled: the parked entry is skipped when its turn comes

    def retake(self, name: str) -> None:
        """Take a slot at once, over the caps if need be: for a handler that is ending
        (cancelled while it waited without one) and gives it back right away."""
        self._occupy(name)

    def free(self, name: str) -> list[MessageState]:
        """A handler of `name` ended, or waits without a slot: give the slots to what is
        parked, round-robin across listeners; returns the units to start now (their
        slots are taken). A parked resume is woken instead of returned."""
        self._stats[name].running -= 1
        self.busy -= 1
        started: list[MessageState] = []
        while self.busy < self.total and self._ring:
            item = self._next()
            if item is None:
                break
            if isinstance(item, MessageState):
                started.append(item)
        return started

    def _next(self) -> Parked | None:
        turns = len(self._ring)  # each listener in the ring gets a look; skipped resumes do not count
        while turns > 0 and self._ring:
            name = self._ring.popleft()
            parked = self._parked[name]
            if self._stats[name].running >= self._cap[name]:
                self._ring.append(name)
                turns -= 1
                continue
            popped = parked.pop()
            assert popped is not None  # a listener is in the ring only while it has parked units
            if parked:
                self._ring.append(name)
            self._stats[name].waiting -= 1
            item = popped[0]
            if isinstance(item, Resume):
                if item.future.done():  # its handler was cancelled while it waited: skip it
                    turns = len(self._ring)
                    continue
                item.future.set_result(None)
            self._occupy(name)
            return item
        return None

    def take_out(self, conversation: "Conversation") -> list[MessageState]:
        """Remove and return the parked units of `conversation` (it was ended)."""
        taken: list[MessageState] = []
        for name, parked in self._parked.items():
            if not parked:
                continue
            items = parked.drain()
            for item in items:
                if isinstance(item, MessageState) and item.conversation is conversation:
                    taken.append(item)
                elif isinstance(item, Resume):
                    parked.push(item.lane, item, inner=item.inner)
                else:
                    lane = item.conversation.lane if item.conversation is not None else None
                    parked.push(lane, item, inner=item.conversation.id if item.conversation is not None else None)
            self._stats[name].waiting -= len(items) - len(parked)
            if not parked:
                self._ring = deque(n for n in self._ring if n != name)
        return taken

    def drain(self) -> list[MessageState]:
        """Every parked unit (shutdown); parked resumes are cancelled (their handlers are too)."""
        units: list[MessageState] = []
        for name, parked in self._parked.items():
            taken = parked.drain()
            self._stats[name].waiting -= len(taken)
            for item in taken:
                if isinstance(item, Resume):
                    item.future.cancel()
                else:
                    units.append(item)
        self._ring.clear()
        return units

    def parked(self) -> int:
        return sum(len(parked) for parked in self._parked.values())

    def parked_units(self) -> list[tuple[Hashable, str]]:
        """(conversation key, listener) of every parked unit or resume, for `status`."""
        return [(inner, name) for name, parked in self._parked.items() for inner in parked.inner_keys()]
