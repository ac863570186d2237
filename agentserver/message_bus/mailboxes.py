"""Client mailboxes: where the pump puts what an external client should receive.

An external sender (a socket connection, an in-process client) is *attached* under a
name and gets a `Session`. The session is the identity replies follow: a
conversation belongs to the session that started it, and its replies and refusals go
to that session's mailbox only. A session that has detached receives nothing; what
was meant for it is undeliverable (a dead letter), even if a later connection took
the same name.

A mailbox is a callable that takes an `Outbound` and returns False when it cannot
(the client is gone or has stopped reading); it must never wait.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Callable, Iterator

from agentserver.outbound import Outbound

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.dedupe import Dedupe
    from agentserver.message_bus.message_state import MessageState

__all__ = ["Session", "Mailboxes", "Mailbox", "acknowledge"]

log = logging.getLogger("agentserver.pump")

Mailbox = Callable[[Outbound], bool]


class Session:
    """One attached external sender. Identity is the object (and its `id`), not the name."""

    __slots__ = ("id", "name", "_mailbox", "attached", "streaming")

    def __init__(self, id: int, name: str, mailbox: Mailbox) -> None:
        self.id = id
        self.name = name
        self._mailbox = mailbox
        self.attached = True
        self.streaming: set[str] = set()  # thread ids whose answering agent's text the client wants as it streams

    def deliver(self, outbound: Outbound) -> bool:
        """Hand `outbound` to this session's mailbox; False if it is gone or full."""
        if not self.attached:
            return False
        try:
            return bool(self._mailbox(outbound))
        except Exception:  # a client's callback must not break the pump
            log.exception("mailbox of %s failed", self.name)
            return False

    def __repr__(self) -> str:
        return f"Session({self.id}, {self.name!r}{'' if self.attached else ', detached'})"


def acknowledge(state: "MessageState", dedupe: "Dedupe", when_durable: Callable[["MessageState", Callable[[], object]], None]) -> None:
    """The envelope of `state` was accepted: its sender gets its one ack (if it came over a
    connection that numbers envelopes), once it is durable; a message id of the sender's
    own is remembered for dedupe."""
    ack = state.ack
    if ack is None or ack.done:
        return
    ack.done = True
    session = state.session
    if session is None:
        return
    outbound = Outbound.ack(ack.seq, state.thread_ref or state.thread_hint or "", state.message_id)
    when_durable(state, lambda: session.deliver(outbound))
    if state.client_id and not (state.error is not None and state.error.code == "duplicate"):
        dedupe.remember(session.name, state.message_id)


class Mailboxes:
    """The sessions attached to one pump, by name (a name is held by one session at a time)."""

    def __init__(self, forbidden: Callable[[str], bool] = lambda name: False) -> None:
        self._by_name: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self._forbidden = forbidden  # names no client may take (listeners, reserved names)

    def attach(self, name: str, mailbox: Mailbox) -> Session:
        """A new session for `name`. Raises ValueError if the name is taken or forbidden."""
        if self._forbidden(name):
            raise ValueError(f"{name!r} names a listener or a reserved name; pick another client name")
        if name in self._by_name:
            raise ValueError(f"a client named {name!r} is already attached")
        session = self._by_name[name] = Session(next(self._ids), name, mailbox)
        return session

    def detach(self, session: Session) -> None:
        session.attached = False
        if self._by_name.get(session.name) is session:
            del self._by_name[session.name]

    def named(self, name: str | None) -> Session | None:
        return self._by_name.get(name) if name is not None else None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)
