"""Todo watchers: an agent asks to be reminded when a payload arrives on its thread.

An agent returns `TodoUntil(todo_id, wait_for, from_listener)`; the pump registers a
watcher on the thread the agent was handling. Each later message delivered on that
thread is `observe`d; a matching watcher is *raised*. While raised and not completed,
the watcher appears in `nudge_for(thread, agent)`, the text the pump puts in that
agent's `HandlerMetadata.todo_nudge`. `TodoComplete(todo_id)` removes it.

Watchers live and die with their thread (`forget`), and a thread holds at most
`max_per_thread` of them. No I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from agentserver.primitives import TodoComplete, TodoUntil

__all__ = ["TodoRegistry", "Watcher", "TooManyTodos"]

log = logging.getLogger("agentserver.pump")


class TooManyTodos(Exception):
    pass


@dataclass(slots=True)
class Watcher:
    todo_id: str
    issuer: str
    wait_for: str
    from_listener: str
    note: str
    raised_by: str | None = None  # "RootTag from sender" once raised

    @property
    def raised(self) -> bool:
        return self.raised_by is not None


class TodoRegistry:
    def __init__(self, max_per_thread: int = 64) -> None:
        self.max_per_thread = max_per_thread
        self._by_thread: dict[str, dict[tuple[str, str], Watcher]] = {}

    def __len__(self) -> int:
        return sum(len(watchers) for watchers in self._by_thread.values())

    def add(self, thread_id: str, issuer: str, todo_id: str, wait_for: str, from_listener: str = "", note: str = "") -> Watcher:
        watchers = self._by_thread.setdefault(thread_id, {})
        key = (issuer, todo_id)
        if key not in watchers and len(watchers) >= self.max_per_thread:
            raise TooManyTodos(f"thread holds {len(watchers)} todos already")
        watcher = Watcher(todo_id, issuer, wait_for, from_listener, note)
        watchers[key] = watcher
        return watcher

    def apply(self, todo: TodoUntil | TodoComplete, issuer: str, thread_id: str) -> None:
        """What a handler returned as a todo primitive, on the thread it was handling.
        A thread over its todo limit refuses new ones (logged)."""
        if isinstance(todo, TodoComplete):
            self.complete(thread_id, issuer, todo.todo_id)
            return
        try:
            self.add(thread_id, issuer, todo.todo_id, todo.wait_for, todo.from_listener, todo.note)
        except TooManyTodos as exc:
            log.warning("todo refused issuer=%s thread=%s: %s", issuer, thread_id, exc)

    def complete(self, thread_id: str, issuer: str, todo_id: str) -> bool:
        watchers = self._by_thread.get(thread_id)
        if not watchers or watchers.pop((issuer, todo_id), None) is None:
            return False
        if not watchers:
            del self._by_thread[thread_id]
        return True

    def observe(self, thread_id: str, root_tag: str, sender: str) -> list[Watcher]:
        """A message `root_tag` from `sender` was delivered on `thread_id`: raise matches."""
        watchers = self._by_thread.get(thread_id)
        if not watchers:
            return []
        raised = []
        for watcher in watchers.values():
            if watcher.raised or watcher.wait_for != root_tag:
                continue
            if watcher.from_listener and watcher.from_listener != sender:
                continue
            watcher.raised_by = f"{root_tag} from {sender}"
            raised.append(watcher)
        return raised

    def nudge_for(self, thread_id: str, name: str) -> str:
        """The reminder text for `name` on `thread_id`; empty when nothing is raised."""
        watchers = self._by_thread.get(thread_id)
        if not watchers:
            return ""
        lines = [
            f"- todo '{w.todo_id}': {w.raised_by} has arrived" + (f" ({w.note})" if w.note else "")
            + f"; close it with TodoComplete(todo_id='{w.todo_id}')."
            for w in watchers.values()
            if w.issuer == name and w.raised
        ]
        if not lines:
            return ""
        return "Raised todos on this thread:\n" + "\n".join(lines)

    def forget(self, thread_ids: Iterable[str]) -> None:
        for thread_id in thread_ids:
            self._by_thread.pop(thread_id, None)
