"""What the pump hands to external clients, and what `ask` gives back or raises.

Both the in-process client and the socket server receive `Outbound` frames from the
pump: a reply addressed to the client, or a `<huh>` about one of its own messages.
`envelope` is the exact frame a socket client receives.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable

from lxml import etree

__all__ = ["Outbound", "OutboundKind", "Reply", "AskError", "HuhError", "RemoteError", "AskTimeout"]

CONTROL_NS = "https://xml-pipeline.org/ns/control/v1"  # the control namespace (control.py)


class OutboundKind(str, Enum):
    REPLY = "reply"  # a payload addressed to the client (an answer, or a SystemError)
    HUH = "huh"  # the server refused one of the client's own messages
    STREAM = "stream"  # a piece of the answering agent's text, as its model writes it (`message`)
    ACK = "ack"  # the client's envelope numbered `seq` was accepted (`message`: its message id)

    def __str__(self) -> str:
        return self.value


class Outbound:
    """One frame for a client. `envelope` and `payload_xml` are computed on first use:
    the in-process client never needs the bytes, the socket server always does."""

    __slots__ = ("kind", "thread_id", "sender", "payload", "code", "message", "seq", "_envelope", "_payload_xml")

    def __init__(
        self,
        kind: OutboundKind,
        thread_id: str,  # the thread id the client used
        sender: str,  # the listener that answered, or "system"
        envelope: bytes | Callable[[], bytes],  # the whole frame, or how to make it
        payload: Any = None,  # replies: the payload object (in-process) or element (socket)
        payload_xml: bytes | etree._Element = b"",  # replies: the payload element or its bytes
        code: str = "",  # huh: the short reason code
        message: str = "",  # huh: the canned text
        seq: int | None = None,  # huh, ack: the client's envelope this confirms or refuses
    ) -> None:
        self.kind, self.thread_id, self.sender, self.payload = kind, thread_id, sender, payload
        self.code, self.message, self.seq = code, message, seq
        self._envelope, self._payload_xml = envelope, payload_xml

    @classmethod
    def stream(cls, thread_id: str, sender: str, text: str) -> "Outbound":
        """A piece of an agent's answer for the client that asked on `thread_id` to see it
        stream; on the wire a control frame `<ctl:tokens thread=.. from=..>text</ctl:tokens>`."""

        def frame() -> bytes:
            element = etree.Element(f"{{{CONTROL_NS}}}tokens", nsmap={"ctl": CONTROL_NS})
            element.set("thread", thread_id)
            element.set("from", sender)
            element.text = text
            return etree.tostring(element)

        return cls(OutboundKind.STREAM, thread_id, sender, frame, message=text)

    @classmethod
    def ack(cls, seq: int, thread_id: str, message_id: str) -> "Outbound":
        """The client's envelope numbered `seq` was accepted; on the wire `<ctl:ack>`."""

        def frame() -> bytes:
            element = etree.Element(f"{{{CONTROL_NS}}}ack", nsmap={"ctl": CONTROL_NS})
            element.set("seq", str(seq))
            element.set("thread", thread_id)
            element.set("message", message_id)
            return etree.tostring(element)

        return cls(OutboundKind.ACK, thread_id, "system", frame, message=message_id, seq=seq)

    @property
    def envelope(self) -> bytes:
        if callable(self._envelope):
            self._envelope = self._envelope()
        return self._envelope

    @property
    def payload_xml(self) -> bytes:
        if not isinstance(self._payload_xml, bytes):
            self._payload_xml = etree.tostring(self._payload_xml, method="c14n", exclusive=True)
        return self._payload_xml

    def __repr__(self) -> str:
        return f"Outbound({self.kind}, thread={self.thread_id}, sender={self.sender}, code={self.code!r})"


class Reply:
    """The answer to an `ask`, the same in-process and over a socket: `payload` is the
    payload object (over a socket: when the client knows its class, given to `connect`
    or learned from the organism's config; else the lxml element), `xml` the payload's
    canonical XML as text, `element` the lxml element; and who sent it, on which thread."""

    __slots__ = ("payload", "sender", "thread_id", "_frame")

    def __init__(self, payload: Any, sender: str, thread_id: str, frame: "Outbound | None" = None) -> None:
        self.payload, self.sender, self.thread_id, self._frame = payload, sender, thread_id, frame

    @property
    def xml(self) -> str:
        return self._frame.payload_xml.decode("utf-8") if self._frame is not None else ""

    @property
    def element(self) -> "etree._Element | None":
        frame = self._frame
        if frame is None:
            return None
        if isinstance(frame.payload, etree._Element):
            return frame.payload
        return etree.fromstring(frame.payload_xml) if frame.payload_xml else None

    def __repr__(self) -> str:
        return f"Reply(payload={self.payload!r}, sender={self.sender!r}, thread_id={self.thread_id!r})"


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
