"""What the pump hands to external clients, and what `ask` gives back or raises.

Both the in-process client and the socket server receive `Outbound` frames from the
pump: a reply addressed to the client, or a `<huh>` about one of its own messages.
`envelope` is the exact frame a socket client receives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Outbound", "Reply", "AskError", "HuhError", "RemoteError", "AskTimeout"]


@dataclass(frozen=True, slots=True)
class Outbound:
    kind: str  # "reply" or "huh"
    thread_id: str  # the thread id the client used
    sender: str  # the listener that answered, or "system"
    envelope: bytes  # the whole frame
    payload: Any = None  # replies: the payload object (in-process only)
    payload_xml: bytes = b""  # replies: the payload element
    code: str = ""  # huh: the short reason code
    message: str = ""  # huh: the canned text


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to an `ask`: the payload object, who sent it, and the thread id."""

    payload: Any
    sender: str
    thread_id: str
    xml: bytes = b""


class AskError(Exception):
    """An `ask` ended without a normal reply."""


class HuhError(AskError):
    """The server refused the message (`<huh>`). `code` is the short reason."""

    def __init__(self, code: str, message: str, thread_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.thread_id = code, message, thread_id


class RemoteError(AskError):
    """The conversation ended in a SystemError (a handler failed, a hop limit, ...)."""

    def __init__(self, code: str, message: str, thread_id: str = "", sender: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.thread_id, self.sender = code, message, thread_id, sender


class AskTimeout(AskError, TimeoutError):
    """No reply arrived in time."""
