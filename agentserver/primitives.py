"""Payloads the pump itself defines: errors, the boot message and the todo primitives.

They are ordinary `@xmlify` dataclasses, so they travel and validate like any payload.

- `SystemError` is what a listener receives when something it sent, or something it
  called, went wrong. `code` is one of the short codes of `agentserver.codes`; `message` is
  canned text (the full reason stays in the server's log and dead letters).
- `Boot` is broadcast by `system` once when the pump starts; any listener whose
  payload class is `Boot` receives it (the built-in `system.boot` logs it).
- `TodoUntil` / `TodoComplete` are returned by agents like any response; the pump
  hands them to its todo registry, which watches the agent's own thread and nudges
  the agent (HandlerMetadata.todo_nudge) once the awaited payload has arrived.
"""


from dataclasses import dataclass

from xmlable import xmlify

from agentserver.codes import canned

__all__ = ["SystemError", "Boot", "TodoUntil", "TodoComplete", "system_error"]

@xmlify
@dataclass
class SystemError:  # noqa: A001 - the contract's name (DESIGN.md §2); shadows the builtin on purpose
    code: str
    message: str
    call_id: str = ""  # the call that failed (every message a listener sends makes or answers one)
    peer: str = ""  # whom that call was to


def system_error(code: str, call_id: str = "", peer: str = "") -> SystemError:
    """The canned SystemError for `code`, naming the call that failed and its peer."""
    return SystemError(code=str(code), message=canned(code), call_id=call_id, peer=peer)


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
