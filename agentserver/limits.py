"""Names and bounds every part of the server agrees on. Imports nothing heavy.

- `Limits`: every bound a client, a payload or a handler can run into, each a
  `limits:` key of organism.yaml with a default that users do not meet by accident;
- `NAME_PATTERN`: what a listener or client name may look like;
- `is_reserved`: `system`, `core` and everything under them belong to the pump.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Limits", "NAME_PATTERN", "RESERVED_NAMES", "is_reserved"]

RESERVED_NAMES = frozenset({"system", "core"})
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,199}\Z")


def is_reserved(name: str) -> bool:
    """`system`, `core` and everything under them (`system.boot`) belong to the pump."""
    return name in RESERVED_NAMES or name.split(".", 1)[0] in RESERVED_NAMES


@dataclass(slots=True)
class Limits:
    max_thread_hops: int = 1000
    handler_timeout_s: float = 60.0
    max_message_bytes: int = 1 << 20
    intake_capacity: int = 1000  # external messages waiting for the pipeline
    context_slots: int = 256  # history entries kept per thread
    context_threads: int = 10_000  # threads with history kept
    thread_idle_s: float = 3600.0  # a conversation untouched this long is forgotten
    dead_letters: int = 1000
    max_fanout: int = 1_000  # payloads one handler call may emit (at most max_conversation_in_flight)
    client_outbox: int = 1000  # frames queued for a slow client before dropping
    shutdown_timeout_s: float = 10.0
    # what one frame may hold (checked before C14N and schema validation, which are superlinear)
    max_elements: int = 100_000
    max_attributes: int = 2_000  # in the whole frame
    max_namespace_declarations: int = 100
    # what one conversation may spend
    max_conversation_in_flight: int = 1_000  # units alive at once (fan-out, broadcast, handler output)
    max_conversation_units: int = 100_000  # units in its whole life
    conversation_timeout_s: float = 600.0  # from its first message; announced to clients in the welcome
    # what one connection, and all of them together, may hold
    max_connections: int = 256
    max_connection_buffer_bytes: int = (1 << 20) + 4096  # an unfinished frame (a whole max-size frame fits)
    max_buffered_bytes: int = 64 << 20  # all connections together; past it the server stops reading
    hello_timeout_s: float = 10.0  # the hello (and over TCP the token) must arrive within this
    frame_timeout_s: float = 30.0  # a frame, once started, must be complete within this
    idle_timeout_s: float = 3600.0  # a connection with no traffic and nothing in flight is closed
    # the event loop
    loop_lag_warning_s: float = 0.5  # a handler that blocks the loop longer than this is named in the log
