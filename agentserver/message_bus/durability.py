"""What the pump asks of its journal (DESIGN.md §14), and the same without one.

`Volatile` (no `organism.journal`): nothing is kept; an ack goes out at once; a unit cut
off by shutdown is dropped.

`Journaled`: every unit is written before it is processed and deleted when done, so a
restart replays exactly what was not done:

- `accept(state)`: a new unit (an external frame, a SystemError the pump sends) is
  written ahead; a fan-out copy shares its envelope's entry (`parts`);
- `handled(state, outputs)`: a handler returned: its outputs are written in the same
  transaction that deletes its own unit (the last part of it), so a crash keeps both
  or neither;
- `ended(state)`: the last part of a unit ended: its entry goes, unless the unit was
  cut off by shutdown (deferred: it stays and runs again at the next start);
- `when_durable(state, then)`: acks wait until the frame is on disk; processing never
  waits for it;
- `settled(state)`: a handler's slot is freed once its unit's end is on disk, so a
  crash redoes at most one finished-but-unrecorded unit per handler slot;
- `start()`: the writer starts, and the units not done last time come back, rebuilt
  on their conversations (threads, history, todos, awaited calls), marked
  `redelivered`. An answer to a call a handler awaited before the restart is late:
  that handler runs again from the start and makes its calls again.
- `adopt(snapshot)`: the same for another journal's open conversations (a member of an
  organism on NATS that is gone: agentserver.transport), which become this one's own.

Open conversations' threads, history and todos are written by the stores (stores.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from lxml import etree

from agentserver.codes import ErrorCode
from agentserver.journal import JournalError, Record, Snapshot, WriteAhead
from agentserver.message_bus.message_state import (
    SYSTEM_ORIGIN,
    HistoryEntry,
    MessageState,
    Origin,
    OriginKind,
)
from agentserver.primitives import TodoComplete, TodoUntil

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.calls import Call, Calls
    from agentserver.message_bus.pipeline_context import PipelineContext
    from agentserver.message_bus.stores import Stores

__all__ = ["Volatile", "Journaled", "Entry", "durability_for"]

log = logging.getLogger("agentserver.journal")


class Entry:
    """A unit's place in the journal, shared by the fan-out copies of one envelope."""

    __slots__ = ("seq", "write", "parts", "finished")

    def __init__(self, seq: int, write: int = 0) -> None:
        self.seq = seq
        self.write = write  # the journal write that holds it (for `when_durable`)
        self.parts = 0  # copies alive (fan-out, broadcast)
        self.finished = False  # deleted together with its handler's outputs


def durability_for(journal: WriteAhead | None, ctx: "PipelineContext", stores: "Stores", calls: "Calls",
                   transport: Any = None) -> "Volatile | Journaled":
    """The pump's durability: its transport's (organism.transport), Journaled with a
    journal, Volatile otherwise."""
    if transport is not None:
        return transport.durability(ctx, stores, calls)
    return Journaled(journal, ctx, stores, calls) if journal is not None else Volatile()


class Volatile:
    """No journal: nothing survives the process."""

    deferring = False
    journal: WriteAhead | None = None

    def accept(self, state: MessageState) -> None:
        return None

    def handled(self, state: MessageState, outputs: list[MessageState]) -> None:
        return None

    def ended(self, state: MessageState) -> None:
        return None

    def when_durable(self, state: MessageState, then: Callable[[], object]) -> None:
        then()

    async def settled(self, state: MessageState | None = None) -> None:
        return None

    def start(self) -> list[MessageState]:
        return []

    async def close(self) -> None:
        return None

    def status(self) -> dict[str, Any] | None:
        return None


class Journaled:
    deferring = True  # a unit cut off by shutdown stays, and runs at the next start

    def __init__(self, journal: WriteAhead, ctx: "PipelineContext", stores: "Stores", calls: "Calls") -> None:
        self.journal = journal
        self.ctx = ctx
        self.stores = stores
        self.calls = calls
        self.replayed = 0
        self._replaying: set[int] = set()  # replayed units not ended yet: until then the organism catches up (/healthz)
        self._snapshot: Snapshot | None = journal.load()  # read before anything is written
        calls.on_open = self._awaited
        ctx.dedupe.on_remember = journal.seen  # accepted message ids of clients' own survive a restart

    # -- the life of a unit ------------------------------------------------------------
    def accept(self, state: MessageState) -> None:
        entry = state.journal
        if entry is not None:  # a fan-out copy, a handler's output written with its parent, a replayed unit
            entry.parts += 1
            return
        conversation = state.conversation
        if state.origin.kind is OriginKind.EXTERNAL:
            state.message_id = state.message_id or self.ctx.ids.new()  # its id from now on, replayed or not (unless it has its own)
            record = self._record(state, "external", state.raw, {"thread": state.thread_hint})
        elif conversation is not None and conversation.client != "system":  # Boot is made again at start
            record = self._record(state, "system", _envelope(state), self._context(state))
        else:
            return
        state.journal = Entry(record.seq, self.journal.append(record))
        state.journal.parts = 1

    def handled(self, state: MessageState, outputs: list[MessageState]) -> None:
        records = []
        for output in outputs:
            record = self._record(output, "listener", _envelope(output), self._context(output))
            output.journal = Entry(record.seq)
            records.append(record)
        entry = state.journal
        if entry is not None and entry.parts == 1 and not entry.finished:
            entry.finished = True
            write = self.journal.finish(entry.seq, records)
        else:  # its unit is not journaled, or another copy of it is still out: the outputs alone
            write = 0
            for record in records:
                write = self.journal.append(record)
        for output in outputs:
            assert output.journal is not None
            output.journal.write = write

    def ended(self, state: MessageState) -> None:
        entry = state.journal
        if entry is None:
            return
        entry.parts -= 1
        if entry.parts <= 0:
            self._replaying.discard(entry.seq)
        if entry.parts > 0 or entry.finished:
            return
        if state.error is not None and state.error.code is ErrorCode.SHUTDOWN:
            return  # deferred: it runs again at the next start
        entry.finished = True
        self.journal.done(entry.seq)

    def when_durable(self, state: MessageState, then: Callable[[], object]) -> None:
        entry = state.journal
        if entry is None:
            then()
        else:
            self.journal.when_durable(entry.write, then)

    async def settled(self, state: MessageState | None = None) -> None:
        """Wait until the end of `state`'s handler call is on disk (not if it was cut off):
        its slot is held until then, so a crash redoes at most one unit per slot. Without
        `state`: until everything written so far is on disk."""
        entry = state.journal if state is not None else None
        if state is not None and (entry is None or not entry.finished):
            return
        if self.journal.lag == 0:
            return
        try:
            await self.journal.durable()
        except JournalError:  # the writer failed: the pump hears of it where it writes next
            pass

    def _awaited(self, call: "Call") -> None:
        self.journal.awaited(call.thread.conversation.key, call.id, call.thread.id)

    def _record(self, state: MessageState, kind: str, envelope: bytes, context: dict[str, Any]) -> Record:
        conversation = state.conversation
        return Record(self.journal.new_seq(), conversation.key if conversation is not None else "", state.message_id,
                      kind, state.origin.name or state.sender, envelope, context)

    @staticmethod
    def _context(state: MessageState) -> dict[str, Any]:
        """What it takes to put a unit the pump built back on its threads."""
        return {"thread": state.thread.id if state.thread else state.thread_ref,
                "sender_thread": state.sender_thread.id if state.sender_thread else None,
                "to": state.to, "call_id": state.call_id, "error_report": state.is_error_report,
                "origin": state.origin.kind.value}

    # -- a restart ---------------------------------------------------------------------
    def start(self) -> list[MessageState]:
        """Start writing; return the units not done last time, on their rebuilt conversations."""
        self.journal.start()
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return []
        units = self._restore(snapshot)
        self.replayed = len(units)
        self._replaying = {record.seq for record in snapshot.units}
        if units:
            log.info("journal %s: %d units not done last time come back (redelivered), on %d open conversations",
                     self.journal.path, len(units), len(snapshot.conversations))
        return units

    def adopt(self, snapshot: Snapshot) -> list[MessageState]:
        """The open conversations of another journal (a member that is gone, DESIGN.md §15),
        rebuilt here and written to this journal as this one's own; returns their units not
        done, to run again (redelivered), written ahead here when they are pushed."""
        journal = self.journal
        for found in snapshot.conversations:
            journal.conversation(found["key"], found["client"], found["external_id"], found["started"])
        for found in snapshot.threads:
            journal.thread(found["conversation"], found["id"], tuple(found["chain"]), found["parent"], found["call_id"])
        for key, thread_id, entry in snapshot.history:
            journal.history(key, thread_id, entry)
        for key, thread_id, op in snapshot.todos:
            journal.todo(key, thread_id, op)
        for key, call_id, thread_id in snapshot.calls:
            journal.awaited(key, call_id, thread_id)
        units = self._restore(snapshot)
        for state in units:
            state.journal = None
        return units

    def _restore(self, snapshot: Snapshot) -> list[MessageState]:
        now = self.ctx.clock()
        conversations = self.stores.threads.restore(snapshot.conversations, snapshot.threads, now)
        self._restore_history(snapshot)
        for key, call_id, thread_id in snapshot.calls:
            if key in conversations:
                conversations[key].closed_calls[call_id] = thread_id  # its answer is late now
        for (sender, message_id), when in snapshot.seen.items():
            self.ctx.dedupe.remember(sender, message_id, when)
        return [self._unit(record, conversations, now) for record in snapshot.units]

    def _unit(self, record: Record, conversations: dict[str, Any], now: float) -> MessageState:
        conversation = conversations.get(record.conversation)
        if record.kind == "external":
            state = MessageState(raw=record.envelope, origin=Origin.external(record.sender),
                                 thread_hint=record.context.get("thread"))
            if conversation is None:  # its conversation never made it to the journal: open it now
                thread_hint = record.context.get("thread")
                if thread_hint:
                    conversation = self.stores.threads.open(record.sender, thread_hint, now=now).conversation
        else:
            context = record.context
            threads = self.stores.threads
            origin = SYSTEM_ORIGIN if context.get("origin") == "system" else Origin.listener(record.sender)
            state = MessageState(raw=b"", origin=origin, root=self.ctx.xml.parse(record.envelope), prebuilt=True,
                                 sender=record.sender, to=context.get("to"), thread_ref=context.get("thread") or "",
                                 thread=threads.get(context.get("thread") or ""),
                                 sender_thread=threads.get(context.get("sender_thread") or ""),
                                 call_id=context.get("call_id") or "", is_error_report=bool(context.get("error_report")))
        state.message_id = record.message_id
        state.redelivered = True
        state.journal = Entry(record.seq)
        if conversation is not None:
            state.bind(conversation)
        elif state.thread is not None:
            state.bind(state.thread.conversation)
        else:  # nothing to put it back on: it is accepted, and refused (unknown thread) as a dead letter
            state.bind(self.stores.threads.open("system", now=now).conversation)
            state.thread = None
        return state

    def _restore_history(self, snapshot: Snapshot) -> None:
        stores, payload_types = self.stores, self.ctx.routes.payload_types
        for _, thread_id, entry in snapshot.history:
            payload: Any = None
            payload_type = payload_types.get(entry.get("root_tag", ""))
            if payload_type is not None and entry.get("payload"):
                try:
                    payload = payload_type.from_element(self.ctx.xml.fragment(entry["payload"])[0])
                except Exception as exc:  # a class that changed since: the entry keeps its place, not its payload
                    log.warning("journal: a history entry of <%s> could not be read back: %s", entry.get("root_tag"), exc)
            stores.history.append(thread_id, HistoryEntry(entry["sender"], entry["to"], entry["root_tag"], payload,
                                                          entry["timestamp"], entry["message_id"], entry["call_id"]))
        for _, thread_id, op in snapshot.todos:
            kind = op.pop("type", "")
            issuer = op.pop("issuer", "")
            todo = TodoUntil(**op) if kind == "TodoUntil" else TodoComplete(**op)
            stores.todos.apply(todo, issuer, thread_id)

    async def close(self) -> None:
        await self.journal.close()

    def status(self) -> dict[str, Any]:
        return {**self.journal.status(), "replayed_at_start": self.replayed, "replaying": len(self._replaying)}


def _envelope(state: MessageState) -> bytes:
    assert state.root is not None  # the pump built it
    return etree.tostring(state.root)
