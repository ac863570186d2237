"""The control vocabulary: frames between a client and the server itself.

Control frames are single elements in CONTROL_NS; the server answers them and never
routes them into the organism. Every request carries an `id`; its answer (`welcome`,
`result` or `error`) echoes it, and nothing else the server sends carries one.

    client -> server                                       server -> client
    <ctl:hello id="1" name="me" versions="1" token="T"/>   <ctl:welcome id="1" name="me" version="1"
                                                             max-frame="N" conversation-timeout="600"/>
    <ctl:status id="2"/>                                   <ctl:result id="2" verb="status">{json}</ctl:result>
    <ctl:deadletters id="3" limit="20"/>                   <ctl:result id="3" verb="deadletters">[json]</ctl:result>
    <ctl:cancel id="4" thread="UUID"/>                     <ctl:result id="4" verb="cancel">{"cancelled": true}</ctl:result>
    (a request refused)                                    <ctl:error id="3" code="bad-argument">text</ctl:error>
    (the connection refused or ended)                      <ctl:error code="idle-timeout" close="true">text</ctl:error>

Since protocol version 2, every envelope a client sends is confirmed: it gets exactly
one `<ctl:ack seq="7" thread="UUID" message="UUID"/>` (seq: the envelope's number on the
connection, from 1) or one `<huh seq="7" ...>`, in the order the envelopes were sent.
An ack carries no `id`, so a client can never take it for the answer to a request.
After a `<ctl:watch id="4"/>` is answered, the server sends every hop event as
`<ctl:hop watch="4">JSON</ctl:hop>` (a TCP client: only its own conversations'), and
drops, rather than queues without bound, what a client does not read.

Everything here is pure: build frames, read frames. The state machine that decides
which frame may come when is agentserver/protocol.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lxml import etree

__all__ = ["CONTROL_NS", "ControlFrame", "is_control", "read_control", "hello", "request", "welcome", "error",
           "result", "ack", "hop"]

CONTROL_NS = "https://xml-pipeline.org/ns/control/v1"
_C = "{%s}" % CONTROL_NS
_NSMAP = {"ctl": CONTROL_NS}
_MARK = CONTROL_NS.encode()


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """One control element as read: its local name, attributes and text."""

    kind: str  # the local name: hello, status, deadletters, cancel, welcome, result, error, ...
    attrs: dict[str, str]
    text: str


def is_control(frame: bytes) -> bool:
    """Cheap pre-check: could this frame be a control frame? (confirmed by read_control)"""
    return frame.find(_MARK, 0, 512) >= 0


def read_control(root: etree._Element) -> ControlFrame | None:
    """The control frame in a parsed frame, or None if its root is not a control element."""
    tag = root.tag
    if not isinstance(tag, str) or not tag.startswith(_C):
        return None
    return ControlFrame(tag[len(_C):], {str(k): str(v) for k, v in root.attrib.items()}, root.text or "")


def _frame(kind: str, text: str | None = None, **attrs: str | None) -> bytes:
    element = etree.Element(_C + kind, nsmap=_NSMAP)
    for key, value in attrs.items():
        if value is not None:
            element.set(key.replace("_", "-"), value)
    if text is not None:
        element.text = text
    return etree.tostring(element)


def hello(request_id: str, name: str, versions: tuple[int, ...], token: str | None = None) -> bytes:
    """The client names itself, offers protocol versions and (over TCP) presents the token."""
    return _frame("hello", id=request_id, name=name, versions=" ".join(map(str, versions)), token=token)


def request(verb: str, request_id: str, **attrs: str) -> bytes:
    """A control request other than hello: `<ctl:VERB id=... attrs/>`."""
    return _frame(verb, id=request_id, **attrs)


def welcome(request_id: str, name: str, version: int, max_frame: int, conversation_timeout_s: float) -> bytes:
    """The hello is accepted: the version chosen, the largest frame taken, the conversation deadline."""
    return _frame("welcome", id=request_id, name=name, version=str(version), max_frame=str(max_frame),
                  conversation_timeout=f"{conversation_timeout_s:g}")


def error(code: str, message: str, *, request_id: str | None = None, close: bool = False) -> bytes:
    """A refusal: of the request `request_id`, or (without one) of the connection's frame or
    of the connection itself; `close` says the server closes the connection after it."""
    return _frame("error", message, id=request_id, code=code, close="true" if close else None)


def ack(seq: int, thread: str, message_id: str) -> bytes:
    """The envelope numbered `seq` on this connection was accepted (and, with a journal, is on disk)."""
    return _frame("ack", seq=str(seq), thread=thread, message=message_id)


def hop(watch_id: str, data: object) -> bytes:
    """One hop event for the `watch` request `watch_id` (JSON). It carries no `id`: it is
    never an answer."""
    return _frame("hop", json.dumps(data, default=str, sort_keys=True), watch=watch_id)


def result(request_id: str, verb: str, data: object) -> bytes:
    """The answer to a request: `data` as JSON."""
    return _frame("result", json.dumps(data, default=str, sort_keys=True), id=request_id, verb=verb)
