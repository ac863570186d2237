"""The control namespace: frames between a client and the server itself.

Control frames are elements in CONTROL_NS; they are answered by the server and never
routed into the organism.

    <ctl:hello name="me" token="..."/>    -> <ctl:welcome name="me" max-frame="N"/> | <ctl:error code=...>
    <ctl:status/>                         -> <ctl:result verb="status">{json}</ctl:result>
    <ctl:deadletters limit="20"/>         -> <ctl:result verb="deadletters">{json}</ctl:result>

Everything here is pure: build frames, read frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lxml import etree

__all__ = ["CONTROL_NS", "ControlRequest", "read_control", "hello", "request", "welcome", "error", "result", "is_control"]

CONTROL_NS = "https://xml-pipeline.org/ns/control/v1"
_C = "{%s}" % CONTROL_NS
_NSMAP = {"ctl": CONTROL_NS}
_MARK = CONTROL_NS.encode()


@dataclass(frozen=True, slots=True)
class ControlRequest:
    verb: str  # the local name: hello, status, deadletters, welcome, error, result
    attrs: dict[str, str]
    text: str


def is_control(frame: bytes) -> bool:
    """Cheap pre-check: could this frame be a control frame? (confirmed by read_control)"""
    return _MARK in frame[:512]


def read_control(root: etree._Element) -> ControlRequest | None:
    """The control request in a parsed frame, or None if the frame is not a control frame."""
    tag = root.tag
    if not isinstance(tag, str) or not tag.startswith(_C):
        return None
    return ControlRequest(tag[len(_C):], {str(k): str(v) for k, v in root.attrib.items()}, root.text or "")


def _frame(local_name: str, text: str | None = None, **attrs: str | None) -> bytes:
    element = etree.Element(_C + local_name, nsmap=_NSMAP)
    for key, value in attrs.items():
        if value is not None:
            element.set(key, str(value))
    if text is not None:
        element.text = text
    return etree.tostring(element)


def hello(name: str, token: str | None = None) -> bytes:
    return _frame("hello", name=name, token=token)


def request(verb: str, **attrs: str) -> bytes:
    return _frame(verb, **attrs)


def welcome(name: str, max_frame: int) -> bytes:
    """Accepted; frames larger than `max_frame` bytes will be refused."""
    return _frame("welcome", **{"name": name, "max-frame": str(max_frame)})


def error(code: str, message: str) -> bytes:
    return _frame("error", message, code=code)


def result(verb: str, data: object) -> bytes:
    return _frame("result", json.dumps(data, default=str, sort_keys=True), verb=verb)
