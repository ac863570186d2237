"""The envelope: its namespace, its schema, and how envelopes are built and read.

Envelopes are always built with lxml (every value escaped) and always with a
*prefixed* envelope namespace, so an unqualified payload keeps meaning "no namespace"
when the bytes are read back (a default-namespace envelope would swallow it).

    <env:message xmlns:env="https://xml-pipeline.org/ns/envelope/v1">
      <env:meta><env:from>client</env:from><env:to>greeter</env:to>
        <env:thread>UUID</env:thread><env:id>UUID</env:id><env:call>UUID</env:call></env:meta>
      <Greeting><Name>Ada</Name></Greeting>
    </env:message>

`<id>` is the message's own id and `<call>` the call it makes (a message to a listener)
or answers (a `respond()`): both UUIDs, both optional for external senders.

A `<huh>` is an envelope from `system` whose payload is `<huh code="...">text</huh>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from lxml import etree

ENVELOPE_NS = "https://xml-pipeline.org/ns/envelope/v1"
PREFIX = "env"
NIL_THREAD = "00000000-0000-0000-0000-000000000000"

_E = "{%s}" % ENVELOPE_NS
MESSAGE = _E + "message"
META = _E + "meta"
FROM = _E + "from"
TO = _E + "to"
THREAD = _E + "thread"
ID = _E + "id"
CALL = _E + "call"
HUH = "huh"
_NSMAP = {PREFIX: ENVELOPE_NS}

__all__ = [
    "ENVELOPE_NS",
    "NIL_THREAD",
    "Meta",
    "load_envelope_schema",
    "build_envelope",
    "build_huh",
    "read_meta",
    "read_huh",
    "payload_elements",
]


def load_envelope_schema() -> etree.XMLSchema:
    """The packaged envelope.xsd, read with importlib.resources (never from the cwd)."""
    data = resources.files("agentserver").joinpath("schemas/envelope.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(data))


@dataclass(frozen=True, slots=True)
class Meta:
    sender: str
    to: str | None
    thread: str
    message_id: str | None = None
    call: str | None = None


def read_meta(root: etree._Element) -> Meta:
    """The routing fields of an envelope that passed the envelope schema."""
    meta = root[0]
    sender = to = thread = message_id = call = None
    for child in meta.iterchildren():
        tag = child.tag
        if tag == FROM:
            sender = child.text
        elif tag == TO:
            to = child.text
        elif tag == THREAD:
            thread = child.text
        elif tag == ID:
            message_id = child.text
        elif tag == CALL:
            call = child.text
    return Meta(sender or "", to, thread or "", message_id, call)


def payload_elements(root: etree._Element) -> list[etree._Element]:
    """The payload children of an envelope (everything after `<meta>`)."""
    return [child for child in root.iterchildren() if child.tag != META and isinstance(child.tag, str)]


def build_envelope(
    payloads: etree._Element | list[etree._Element],
    *,
    sender: str,
    thread: str,
    to: str | None = None,
    message_id: str | None = None,
    call: str | None = None,
    factory: Any = None,
) -> etree._Element:
    """An envelope tree around one or more payload elements (which are moved, not copied).

    `factory` makes the root element (a parser's `makeelement`, so the tree gets that
    parser's element classes); lxml's default otherwise.
    """
    root = (factory or etree.Element)(MESSAGE, nsmap=_NSMAP)
    meta = etree.SubElement(root, META)
    etree.SubElement(meta, FROM).text = sender
    if to is not None:
        etree.SubElement(meta, TO).text = to
    etree.SubElement(meta, THREAD).text = thread
    if message_id is not None:
        etree.SubElement(meta, ID).text = message_id
    if call is not None:
        etree.SubElement(meta, CALL).text = call
    for payload in payloads if isinstance(payloads, list) else [payloads]:
        root.append(payload)
    return root


def build_huh(*, to: str, thread: str | None, code: str, message: str, seq: int | None = None) -> bytes:
    """The bytes of a `<huh>` frame telling an external sender its message was refused
    (`seq`: the refused envelope's number on the connection, when it has one)."""
    huh = etree.Element(HUH, code=code)
    if seq is not None:
        huh.set("seq", str(seq))
    huh.text = message
    root = build_envelope(huh, sender="system", to=to, thread=thread or NIL_THREAD)
    return etree.tostring(root)


def read_huh(payload: etree._Element) -> tuple[str, str] | None:
    """(code, message) when the payload is a `<huh>`, else None."""
    if payload.tag != HUH:
        return None
    return payload.get("code", "error"), payload.text or ""


def huh_seq(payload: etree._Element) -> int | None:
    """The envelope number a `<huh>` refers to, if it says."""
    seq = payload.get("seq", "")
    return int(seq) if seq.isascii() and seq.isdigit() else None
