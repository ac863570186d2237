"""Threads: opaque UUIDs standing for positions in a conversation's call tree.

A *conversation* starts when an external client sends on a new thread id (or when
`system` starts one, e.g. Boot). Its root thread's chain is `(client,)`. Delivering a
message to listener L from a thread whose chain does not end in L opens a child thread
with chain `(..., L)`; L handles the message there. `respond()` from a thread goes to
its parent: the chain pruned by one hop, ending in the caller. Chains are tuples of
names, so names may contain dots, and two conversations over the same path never share
a thread: every child thread gets a fresh UUID.

A conversation counts the units of work alive in it (`hold`/`release`). When the count
reaches zero it is finished: its owner (the pump) then `forget`s it with all its
threads; `forget_idle` drops conversations nobody touched for a long time. So the
registry stays bounded under endless traffic. No I/O: time is passed in.

An external conversation belongs to the session (connection) that started it: the key
is (session, the client's thread id), so a later connection that reuses a client's
name starts conversations of its own and never continues, or hears, an earlier one's.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
import time
from typing import TYPE_CHECKING, Any, Hashable

from agentserver.codes import ErrorCode
from agentserver.ids import IdSource

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.mailboxes import Session

__all__ = ["Thread", "Conversation", "ThreadRegistry"]


class Thread:
    __slots__ = ("id", "chain", "parent", "conversation", "call_id")

    def __init__(self, id: str, chain: tuple[str, ...], parent: "Thread | None", conversation: "Conversation",
                 call_id: str | None = None) -> None:
        self.id = id
        self.chain = chain
        self.parent = parent
        self.conversation = conversation
        self.call_id = call_id  # the call that opened it: a respond() from this thread answers it

    @property
    def owner(self) -> str:
        """The name this thread belongs to (the last hop of its chain)."""
        return self.chain[-1]

    @property
    def caller(self) -> str | None:
        """Who called the owner on this thread, or None at the root."""
        return self.chain[-2] if len(self.chain) > 1 else None

    def __repr__(self) -> str:
        return f"Thread({self.id[:8]}, {'/'.join(self.chain)})"


class Conversation:
    __slots__ = ("id", "key", "root", "external_id", "session", "pending", "units", "hops", "ended", "told", "started",
                 "last_active", "threads", "awaited", "closed_calls")

    def __init__(self, id: int, external_id: str | None, session: "Session | None", now: float, key: str = "") -> None:
        self.id = id  # internal key, never on the wire
        self.key = key  # a UUID: what the journal knows it by, across restarts
        self.external_id = external_id  # the id the client used, echoed on replies
        self.session = session  # the connection that started it: replies go there and nowhere else
        self.pending = 0  # units alive now
        self.units = 0  # units in its whole life
        self.hops = 0
        self.ended: ErrorCode | None = None  # why it was ended (hops, budget, deadline, cancel): the rest is refused
        self.told = False  # its root caller has been told it ended
        self.started = now
        self.last_active = now
        self.awaited = 0  # calls its handlers await now (meta.ask)
        self.closed_calls: dict[str, str] = {}  # awaited calls that ended -> the asker's thread (late answers)
        self.threads: list[str] = []
        self.root: Thread  # set by the registry

    def hold(self) -> None:
        """One more unit of it is alive."""
        self.pending += 1
        self.units += 1

    def release(self) -> bool:
        """One unit of it ended; True when that was the last one (the conversation is over)."""
        self.pending -= 1
        return self.pending <= 0

    @property
    def client(self) -> str:
        return self.root.chain[0]

    @property
    def lane(self) -> "Session | str":
        """Whose work this is, for fair queues: the session that started it (or the name)."""
        return self.session or self.client


class ThreadRegistry:
    """Maps thread UUIDs to threads; owns the conversations they belong to."""

    def __init__(self, journal: Any = None) -> None:
        self._journal = journal  # agentserver.journal.Journal: new conversations and threads are written ahead
        self._threads: dict[str, Thread] = {}
        self._external: dict[tuple[Hashable, str], Conversation] = {}
        self._conversations: OrderedDict[int, Conversation] = OrderedDict()  # oldest activity first
        self.forgotten = 0
        self._ids = IdSource()  # thread ids and conversation keys: random UUIDs
        self._conversation_numbers = itertools.count(1)

    # -- lookups -------------------------------------------------------------
    def get(self, thread_id: str) -> Thread | None:
        return self._threads.get(thread_id)

    def __len__(self) -> int:
        return len(self._threads)

    @property
    def conversations(self) -> int:
        return len(self._conversations)

    def open_conversations(self) -> list[Conversation]:
        return list(self._conversations.values())

    # -- conversations -----------------------------------------------------------
    def open(self, client: str, external_id: str | None = None, *, session: "Session | None" = None, now: float = 0.0) -> Thread:
        """The root thread of `client`'s conversation `external_id`, starting it if new.

        With a `session`, the conversation belongs to that session (connection)."""
        key: tuple[Hashable, str] | None = None
        if external_id is not None:
            key = (session.id if session is not None else client, external_id)
            known = self._external.get(key)
            if known is not None:
                self.touch(known, now)
                return known.root
        conversation = Conversation(next(self._conversation_numbers), external_id, session, now, self._ids.new())
        if self._journal is not None and client != "system":  # the pump's own (Boot) are made again at start
            self._journal.conversation(conversation.key, client, external_id, time.time())
        root = self._new_thread((client,), None, conversation)
        conversation.root = root
        self._conversations[conversation.id] = conversation
        if key is not None:
            self._external[key] = conversation
        return root

    def extend(self, thread: Thread, name: str, call_id: str | None = None) -> Thread:
        """A fresh child thread where `name` handles the call `call_id` made from `thread`."""
        return self._new_thread(thread.chain + (name,), thread, thread.conversation, call_id)

    def prune(self, thread: Thread) -> Thread | None:
        """Where `respond()` from `thread` goes: its parent (chain minus one hop), or None."""
        return thread.parent

    def find(self, session: "Session | None", client: str, external_id: str) -> Conversation | None:
        """The conversation `client` (of `session`) started with its thread id `external_id`."""
        return self._external.get((session.id if session is not None else client, external_id))

    def touch(self, conversation: Conversation, now: float) -> None:
        """The conversation is active at `now` (the pump calls this on every delivery)."""
        conversation.last_active = now
        if conversation.id in self._conversations:
            self._conversations.move_to_end(conversation.id)

    def idle_conversations(self, now: float, idle_s: float) -> list[Conversation]:
        """Conversations nobody touched for longer than `idle_s`, oldest first."""
        idle = []
        for conversation in self._conversations.values():
            if now - conversation.last_active <= idle_s:
                break
            idle.append(conversation)
        return idle

    def restore(self, conversations: list[dict[str, Any]], threads: list[dict[str, Any]], now: float) -> dict[str, Conversation]:
        """Rebuild open conversations and their threads from a journal (parents first); they
        belong to no session (their clients' connections ended with the old process).
        Returns the conversations by key."""
        restored: dict[str, Conversation] = {}
        for found in conversations:
            conversation = Conversation(next(self._conversation_numbers), found["external_id"], None, now, found["key"])
            restored[conversation.key] = conversation
            self._conversations[conversation.id] = conversation
            if conversation.external_id is not None:
                self._external[(found["client"], conversation.external_id)] = conversation
        for found in threads:
            owner = restored.get(found["conversation"])
            parent = self._threads.get(found["parent"]) if found["parent"] else None
            if owner is None or (found["parent"] and parent is None):
                continue  # a thread of a conversation the journal does not hold (it ended)
            thread = Thread(found["id"], tuple(found["chain"]), parent, owner, found["call_id"])
            self._threads[thread.id] = thread
            owner.threads.append(thread.id)
            if parent is None:
                owner.root = thread
        for key, conversation in list(restored.items()):
            if not hasattr(conversation, "root"):  # its root thread never made it to the journal
                self._conversations.pop(conversation.id, None)
                del restored[key]
        return restored

    def forget(self, conversation: Conversation) -> list[str]:
        """Drop `conversation` and its threads; returns the ids of the threads dropped.

        Also when it was forgotten as idle while a unit was still out: the threads it
        made since then go too."""
        if self._conversations.pop(conversation.id, None) is not None:
            self.forgotten += 1
        if conversation.external_id is not None:
            session = conversation.session
            key = (session.id if session is not None else conversation.client, conversation.external_id)
            if self._external.get(key) is conversation:
                del self._external[key]
        for thread_id in conversation.threads:
            self._threads.pop(thread_id, None)
        if self._journal is not None:
            self._journal.forget(conversation.key)
        return conversation.threads

    # -- internals -----------------------------------------------------------------
    def _new_thread(self, chain: tuple[str, ...], parent: Thread | None, conversation: Conversation,
                    call_id: str | None = None) -> Thread:
        thread = Thread(self._ids.new(), chain, parent, conversation, call_id)
        if self._journal is not None and chain[0] != "system":
            self._journal.thread(conversation.key, thread.id, chain, parent.id if parent else None, call_id)
        self._threads[thread.id] = thread
        conversation.threads.append(thread.id)
        return thread

