"""Payloads the pump itself defines: errors, the boot message and the todo primitives.

They are ordinary `@xmlify` dataclasses, so they travel and validate like any payload.

- `SystemError` is what a listener receives when something it sent, or something it
  called, went wrong. `code` is one of the short codes in `ERROR_CODES`; `message` is
  canned text (the full reason stays in the server's log and dead letters).
- `Boot` is broadcast by `system` once when the pump starts; any listener whose
  payload class is `Boot` receives it (the built-in `system.boot` logs it).
- `TodoUntil` / `TodoComplete` are returned by agents like any response; the pump
  hands them to its todo registry, which watches the agent's own thread and nudges
  the agent (HandlerMetadata.todo_nudge) once the awaited payload has arrived.
"""


import builtins
from dataclasses import dataclass

from xmlable import xmlify

__all__ = ["SystemError", "Boot", "TodoUntil", "TodoComplete", "ERROR_CODES", "ROUTING_ERROR"]

# code -> the canned text a sender is told. Full reasons are logged, never sent.
ERROR_CODES: dict[str, str] = {
    "malformed": "The message is not well-formed XML.",
    "too-large": "The message is larger than this server accepts.",
    "forbidden-dtd": "DTDs and entity declarations are not accepted.",
    "invalid-envelope": "The envelope is not valid.",
    "forbidden-sender": "That sender name is not allowed.",
    "no-route": "No listener accepts this message.",
    "invalid-payload": "The payload does not match the listener's schema.",
    "unreadable-payload": "The payload could not be read into its type.",
    "unknown-thread": "That thread is not known.",
    "routing": "That destination is not reachable from here.",
    "handler": "The handler failed.",
    "timeout": "The handler did not finish in time.",
    "wrong-type": "The handler returned something it may not return.",
    "hops": "The conversation exceeded its hop limit and was ended.",
    "shutdown": "The server shut down before the message was handled.",
    "undeliverable": "The recipient is gone.",
    "overloaded": "The server is overloaded.",
}


@xmlify
@dataclass
class SystemError:  # noqa: A001 - the contract's name (DESIGN.md §2); shadows the builtin on purpose
    code: str
    message: str


# Kept for code that wants Python's own SystemError next to ours.
PySystemError = builtins.SystemError


def system_error(code: str) -> SystemError:
    """The canned SystemError for `code`."""
    return SystemError(code=code, message=ERROR_CODES.get(code, "Error."))


ROUTING_ERROR = system_error("routing")


@xmlify
@dataclass
class Boot:
    organism_name: str
    timestamp: str
    listener_count: int


@xmlify
@dataclass
class TodoUntil:
    """Watch my thread until a `wait_for` payload (root tag) arrives, from `from_listener` if set."""

    todo_id: str
    wait_for: str
    from_listener: str = ""
    note: str = ""


@xmlify
@dataclass
class TodoComplete:
    """Close my todo `todo_id` (it stops nudging)."""

    todo_id: str
