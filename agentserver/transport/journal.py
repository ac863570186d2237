"""A member's journal, kept in JetStream where every member can read it (DESIGN.md §15).

The owner of a conversation writes the same operations a SQLite journal would
(agentserver.journal: units written ahead and done, conversations, threads, history,
todos, awaited calls), but publishes them: one subject per open conversation,
`<prefix>.journal.<member>.<conversation>`, on the stream `..._JOURNAL`. A conversation
that ends is purged from the stream, so what is kept is what is open.

When a member is gone (its heartbeat lapsed, or it stopped with conversations still
open), another member *adopts* them: it reads the gone member's subjects, folds them as
a restart folds its journal, and runs the units that were not done on the rebuilt
conversations, flagged `redelivered`; then they are its own, written to its own
journal. Their clients were connected to the member that is gone: what would have
gone to them is a dead letter (undeliverable) on the adopter, as after a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
from typing import TYPE_CHECKING, Any

from agentserver.journal import BATCH, Snapshot, WriteAhead, coalesce
from agentserver.transport.wire import by_conversation, encode_ops

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.transport.member import Member

__all__ = ["SharedJournal"]

log = logging.getLogger("agentserver.transport")

MAX_MESSAGE = 512 * 1024  # journal messages stay well under NATS's 1 MiB max_payload


class SharedJournal(WriteAhead):
    """The journal of one member: written by a task of the member (`start`, `close`)."""

    def __init__(self, member: "Member") -> None:
        super().__init__()
        self.member = member
        self.path = f"nats:{member.names.journal_stream}/{member.id}"
        self._units: dict[int, str] = {}  # a journaled unit's number -> its conversation's key
        self._open: set[str] = set()  # conversations with operations in the stream
        self._ready = asyncio.Event()
        self._batches = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    def load(self) -> Snapshot:
        """A member starts with nothing of its own: what a gone member left is adopted."""
        return Snapshot([], [], [], [], [], [], {})

    def _put(self, op: tuple[Any, ...]) -> int:
        write = super()._put(op)
        self._ready.set()
        return write

    def start(self) -> None:
        self._task = self.member.spawn(self._write(), name=f"member:journal:{self.member.id}")

    async def _write(self) -> None:
        stop = False
        while not stop:
            await self._ready.wait()
            self._ready.clear()
            ops: list[tuple[Any, ...]] = []
            while len(ops) < BATCH:
                try:
                    op = self._ops.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                ops.append(op)
            if len(ops) == BATCH:
                self._ready.set()  # more are queued
            if not ops:
                continue
            try:
                await self._publish(ops)
            except Exception as exc:  # the member closed under it: nothing more can be promised
                log.error("journal %s: publishing failed: %s", self.path, exc)
                self.failure = exc
                self._wake(exc)
                return
            self._committed += len(ops)
            self.commits += 1
            self._wake(None)

    async def _publish(self, ops: list[tuple[Any, ...]]) -> None:
        """One batch: each conversation's operations on its subject (in order), at once."""
        batch = next(self._batches)
        member = self.member

        async def one(key: str, group: list[tuple[Any, ...]]) -> None:
            subject = member.names.journal(member.id, key)
            forgotten = [n for n, op in enumerate(group) if op[0] == "forget"]
            if forgotten:
                group = group[forgotten[-1] + 1:]
                if key in self._open:
                    self._open.discard(key)
                    await member.purge(subject)
            if not group:
                return
            self._open.add(key)
            for n, chunk in enumerate(_chunks(group)):
                await member.publish(subject, chunk, f"j.{member.id}.{batch}.{subject.rsplit('.', 1)[1]}.{n}")

        await asyncio.gather(*(one(key, group) for key, group in by_conversation(coalesce(ops), self._units).items()))

    @property
    def open(self) -> int:
        """Conversations this member has in the stream (another adopts them if it goes)."""
        return len(self._open)

    async def close(self) -> None:
        """Publish what is queued and stop the writer (within the shutdown deadline: with
        NATS away, what is still queued is lost, and said so)."""
        if self._task is not None:
            self._ops.put(None)
            self._ready.set()
            _, late = await asyncio.wait([self._task], timeout=self.member.config.limits.shutdown_timeout_s)
            if late:
                self._task.cancel()
                log.error("journal %s: %d operations not published before the shutdown deadline (NATS away?)",
                          self.path, self.lag)
            self._task = None

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "open_conversations": len(self._open), "lag": self.lag, "commits": self.commits,
                "failed": str(self.failure) if self.failure is not None else None}


def _chunks(group: list[tuple[Any, ...]]) -> list[bytes]:
    """`group` encoded as messages under MAX_MESSAGE each (one operation may be alone over it)."""
    data = encode_ops(group)
    if len(data) <= MAX_MESSAGE or len(group) == 1:
        return [data]
    half = len(group) // 2
    return _chunks(group[:half]) + _chunks(group[half:])
