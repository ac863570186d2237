"""Where the pump keeps conversation state: three small store interfaces and a bundle.

The pump is given a `Stores` (in memory by default) and reaches its threads, their
history and their todos only through these interfaces, so a journal or a store
shared between processes can stand in for the in-memory registries. Each interface
says what the pump needs, no more. No I/O in the defaults; with a journal, what changes
an open conversation (a new thread, a message recorded, a todo) is also written ahead
to it (journal.py), so that a restart rebuilds the open conversations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from lxml import etree

from agentserver.message_bus.context_buffer import ContextBuffer
from agentserver.message_bus.thread_registry import ThreadRegistry
from agentserver.message_bus.todo_registry import TodoRegistry

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.limits import Limits
    from agentserver.message_bus.mailboxes import Session
    from agentserver.message_bus.message_state import HistoryEntry
    from agentserver.message_bus.thread_registry import Conversation, Thread
    from agentserver.message_bus.todo_registry import Watcher
    from agentserver.primitives import TodoComplete, TodoUntil

__all__ = ["ThreadStore", "HistoryStore", "TodoStore", "Stores"]


class ThreadStore(Protocol):
    """Threads and the conversations they belong to (thread_registry.py)."""

    def get(self, thread_id: str) -> "Thread | None": ...
    def open(self, client: str, external_id: str | None = None, *, session: "Session | None" = None, now: float = 0.0) -> "Thread": ...
    def extend(self, thread: "Thread", name: str, call_id: str | None = None) -> "Thread": ...
    def prune(self, thread: "Thread") -> "Thread | None": ...
    def find(self, session: "Session | None", client: str, external_id: str) -> "Conversation | None": ...
    def restore(self, conversations: list[dict[str, Any]], threads: list[dict[str, Any]], now: float) -> dict[str, "Conversation"]: ...
    def touch(self, conversation: "Conversation", now: float) -> None: ...
    def forget(self, conversation: "Conversation") -> list[str]: ...
    def idle_conversations(self, now: float, idle_s: float) -> list["Conversation"]: ...
    def open_conversations(self) -> list["Conversation"]: ...
    def __len__(self) -> int: ...
    @property
    def conversations(self) -> int: ...


class HistoryStore(Protocol):
    """Each thread's messages, oldest first (context_buffer.py)."""

    def append(self, thread_id: str, entry: "HistoryEntry") -> None: ...
    def history(self, thread_id: str) -> tuple["HistoryEntry", ...]: ...
    def forget(self, thread_ids: Iterable[str]) -> None: ...
    def __len__(self) -> int: ...


class TodoStore(Protocol):
    """Todo watchers on threads (todo_registry.py)."""

    def add(self, thread_id: str, issuer: str, todo_id: str, wait_for: str, from_listener: str = "", note: str = "") -> "Watcher": ...
    def complete(self, thread_id: str, issuer: str, todo_id: str) -> bool: ...
    def apply(self, todo: "TodoUntil | TodoComplete", issuer: str, thread_id: str) -> None: ...
    def observe(self, thread_id: str, root_tag: str, sender: str) -> list["Watcher"]: ...
    def nudge_for(self, thread_id: str, name: str) -> str: ...
    def forget(self, thread_ids: Iterable[str]) -> None: ...
    def __len__(self) -> int: ...


@dataclass(slots=True)
class Stores:
    threads: ThreadStore
    history: HistoryStore
    todos: TodoStore
    idle_s: float = 3600.0  # a conversation untouched this long is forgotten by `sweep`
    journal: Any = None  # agentserver.journal.Journal: history and todos of open conversations are written ahead
    _last_sweep: float = 0.0

    @classmethod
    def in_memory(cls, limits: "Limits", journal: Any = None) -> "Stores":
        return cls(ThreadRegistry(journal), ContextBuffer(limits.context_slots, limits.context_threads), TodoRegistry(),
                   idle_s=limits.thread_idle_s, journal=journal)

    def forget(self, conversation: "Conversation") -> None:
        """The conversation is over (or idle too long): drop it, its threads, their history and todos."""
        thread_ids = self.threads.forget(conversation)
        self.history.forget(thread_ids)
        self.todos.forget(thread_ids)

    def record(self, thread: "Thread", entry: "HistoryEntry", now: float, element: Any = None) -> None:
        """A message is delivered on `thread`: its history and todo watchers see it, and
        its conversation is active (not forgotten as idle while it is busy). `element`:
        the payload as the pipeline read it (the journal keeps its bytes)."""
        self.threads.touch(thread.conversation, now)
        self.history.append(thread.id, entry)
        self.todos.observe(thread.id, entry.root_tag, entry.sender)
        if self.journal is not None:
            self.journal.history(thread.conversation.key, thread.id, {
                "sender": entry.sender, "to": entry.to, "root_tag": entry.root_tag, "timestamp": entry.timestamp,
                "message_id": entry.message_id, "call_id": entry.call_id,
                "payload": _payload_text(entry.payload, element)})

    def apply_todo(self, thread: "Thread", todo: "TodoUntil | TodoComplete", issuer: str) -> None:
        """A handler on `thread` returned a todo primitive."""
        self.todos.apply(todo, issuer, thread.id)
        if self.journal is not None:
            self.journal.todo(thread.conversation.key, thread.id, {"issuer": issuer, "type": type(todo).__name__,
                                                                  **dataclasses.asdict(todo)})

    def sweep(self, now: float) -> None:
        """At most once a second: forget conversations idle for longer than `idle_s`."""
        if now - self._last_sweep > 1.0:
            self._last_sweep = now
            for conversation in self.threads.idle_conversations(now, self.idle_s):
                self.forget(conversation)


def _payload_text(payload: Any, element: Any) -> str:
    if element is not None:
        return etree.tostring(element, encoding="unicode")
    return etree.tostring(payload.xml_value(), encoding="unicode") if hasattr(payload, "xml_value") else ""
