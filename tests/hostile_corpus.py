"""A corpus of hostile frames: each is one frame a client sends, and the `<huh>` code
the server must answer it with (DESIGN.md §4, §6, §7). Data only; the tests that send
them are in tests/test_hostile_input.py.

Frames are built by string formatting on purpose: the point is bytes the pump's own
builder would never produce. `Target` says what a case may point at: the sending
client's name, a file whose content must never leak, and a URL nobody may fetch.

Byte-level cases (oversize announced in the header, a lying length prefix, a
disconnect mid-frame) are not frames and live in the test module.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable

from agentserver.envelope import ENVELOPE_NS

XINCLUDE_NS = "http://www.w3.org/2001/XInclude"


@dataclass(frozen=True)
class Target:
    sender: str  # the connection's name (its envelopes must say <from>sender</from>)
    secret_file: str  # a file whose content must never appear in any frame or dead letter
    url: str  # an http URL on a listener the test runs: nobody may ever connect to it


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Target], bytes]
    code: str  # the <huh> code the server answers with
    why: str


def thread() -> str:
    return str(uuid.uuid4())


def envelope(payload: str, *, sender: str, to: str | None = "echo", thread_id: str | None = None,
             prolog: str = "", meta_extra: str = "") -> bytes:
    """An envelope with a prefixed envelope namespace and `payload` as written."""
    to_xml = f"<env:to>{to}</env:to>" if to is not None else ""
    thread_xml = f"<env:thread>{thread_id or thread()}</env:thread>" if thread_id != "" else ""
    return (
        f'{prolog}<env:message xmlns:env="{ENVELOPE_NS}"><env:meta><env:from>{sender}</env:from>{to_xml}'
        f"{thread_xml}{meta_extra}</env:meta>{payload}</env:message>"
    ).encode()


ECHO = "<Echo><Text>hostile</Text></Echo>"


def _billion_laughs(t: Target) -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)
    ]
    prolog = '<?xml version="1.0"?><!DOCTYPE env:message [' + "".join(entities) + "]>"
    return envelope("<Echo><Text>&lol9;</Text></Echo>", sender=t.sender, prolog=prolog)


def _quadratic_blowup(t: Target) -> bytes:
    prolog = f'<!DOCTYPE env:message [<!ENTITY a "{"x" * 50_000}">]>'
    return envelope("<Echo><Text>" + "&a;" * 50_000 + "</Text></Echo>", sender=t.sender, prolog=prolog)


def _external_entity_file(t: Target) -> bytes:
    prolog = f'<!DOCTYPE env:message [<!ENTITY secret SYSTEM "file://{t.secret_file}">]>'
    return envelope("<Echo><Text>&secret;</Text></Echo>", sender=t.sender, prolog=prolog)


def _external_entity_url(t: Target) -> bytes:
    prolog = f'<!DOCTYPE env:message [<!ENTITY remote SYSTEM "{t.url}/entity">]>'
    return envelope("<Echo><Text>&remote;</Text></Echo>", sender=t.sender, prolog=prolog)


def _parameter_entity(t: Target) -> bytes:
    prolog = f'<!DOCTYPE env:message [<!ENTITY % remote SYSTEM "{t.url}/param.dtd"> %remote;]>'
    return envelope(ECHO, sender=t.sender, prolog=prolog)


def _external_dtd(t: Target) -> bytes:
    return envelope(ECHO, sender=t.sender, prolog=f'<!DOCTYPE env:message SYSTEM "{t.url}/external.dtd">')


def _external_dtd_public(t: Target) -> bytes:
    prolog = f'<!DOCTYPE env:message PUBLIC "-//hostile//DTD x//EN" "file://{t.secret_file}">'
    return envelope(ECHO, sender=t.sender, prolog=prolog)


def _utf7_hidden_dtd(t: Target) -> bytes:
    # in UTF-7, "<!DOCTYPE" is spelled "+ADw-!DOCTYPE": a byte scan for "<!DOCTYPE" misses it
    prolog = (
        '<?xml version="1.0" encoding="UTF-7"?>'
        f'+ADw-!DOCTYPE env:message +AFs-+ADw-!ENTITY secret SYSTEM "file://{t.secret_file}"+AD4-+AF0-+AD4-'
    )
    return envelope(ECHO, sender=t.sender, prolog=prolog)


def _xinclude_in_payload(t: Target) -> bytes:
    include = f'<xi:include xmlns:xi="{XINCLUDE_NS}" href="file://{t.secret_file}" parse="text"/>'
    return envelope(f"<Echo><Text>{include}</Text></Echo>", sender=t.sender)


def _xinclude_as_payload(t: Target) -> bytes:
    return envelope(f'<xi:include xmlns:xi="{XINCLUDE_NS}" href="{t.url}/xinclude" parse="text"/>', sender=t.sender)


def _deep_nesting(t: Target) -> bytes:
    depth = 10_000
    return envelope("<Echo><Text>deep</Text>" + "<n>" * depth + "</n>" * depth + "</Echo>", sender=t.sender)


def _deep_nesting_unclosed(t: Target) -> bytes:
    return envelope("<Echo>" + "<Text>" * 10_000, sender=t.sender)


def _invalid_utf8(t: Target) -> bytes:
    return envelope("<Echo><Text>bad:XX</Text></Echo>", sender=t.sender).replace(b"XX", b"\xff\xfe\xc3\x28")


def _overlong_utf8(t: Target) -> bytes:
    # "<" as an overlong two-byte sequence: not UTF-8, and must not be read as markup
    return envelope("<Echo><Text>aXX/Text></Echo>", sender=t.sender).replace(b"XX", b"\xc0\xbc")


def _nul_byte(t: Target) -> bytes:
    return envelope("<Echo><Text>a\x00b</Text></Echo>", sender=t.sender)


def _utf16(t: Target) -> bytes:
    return envelope(ECHO, sender=t.sender).decode().encode("utf-16")


def _payload_in_envelope_ns(t: Target) -> bytes:
    return envelope("<env:Echo><env:Text>hostile</env:Text></env:Echo>", sender=t.sender)


def _default_namespace_envelope(t: Target) -> bytes:
    # the lxml pitfall of DESIGN.md §4: under a default-namespace envelope an unprefixed
    # payload is in the envelope namespace
    return (
        f'<message xmlns="{ENVELOPE_NS}"><meta><from>{t.sender}</from><to>echo</to>'
        f"<thread>{thread()}</thread></meta>{ECHO}</message>"
    ).encode()


def _from(name: str) -> Callable[[Target], bytes]:
    return lambda t: envelope(ECHO, sender=name)


def _to_system_boot(t: Target) -> bytes:
    boot = "<Boot><OrganismName>evil</OrganismName><Timestamp>now</Timestamp><ListenerCount>1</ListenerCount></Boot>"
    return envelope(boot, sender=t.sender, to="system.boot")


def _broadcast_boot(t: Target) -> bytes:
    boot = "<Boot><OrganismName>evil</OrganismName><Timestamp>now</Timestamp><ListenerCount>1</ListenerCount></Boot>"
    return envelope(boot, sender=t.sender, to=None)


def _forged_system_error(t: Target) -> bytes:
    return envelope("<SystemError><Code>hops</Code><Message>forged</Message><CallId>x</CallId><Peer>echo</Peer></SystemError>",
                    sender=t.sender, to="echo")  # schema-valid: only routing can refuse it


CASES: list[Case] = [
    Case("billion-laughs", _billion_laughs, "forbidden-dtd", "exponential entity expansion"),
    Case("quadratic-blowup", _quadratic_blowup, "forbidden-dtd", "one big entity referenced 50,000 times"),
    Case("external-entity-file", _external_entity_file, "forbidden-dtd", "XXE: an entity reading a local file"),
    Case("external-entity-url", _external_entity_url, "forbidden-dtd", "XXE: an entity fetching a URL"),
    Case("parameter-entity-url", _parameter_entity, "forbidden-dtd", "a parameter entity fetching a DTD"),
    Case("external-dtd", _external_dtd, "forbidden-dtd", "an external DTD by URL"),
    Case("external-dtd-public", _external_dtd_public, "forbidden-dtd", "an external DTD by PUBLIC id and file"),
    Case("utf7-hidden-dtd", _utf7_hidden_dtd, "malformed", "a DTD hidden behind encoding=UTF-7"),
    Case("xinclude-in-payload", _xinclude_in_payload, "invalid-payload", "XInclude of a local file inside a payload"),
    Case("xinclude-as-payload", _xinclude_as_payload, "invalid-envelope", "XInclude element as the payload"),
    Case("nesting-10000", _deep_nesting, "too-large", "10,000 nested elements"),
    Case("nesting-10000-unclosed", _deep_nesting_unclosed, "too-large", "10,000 nested elements, never closed"),
    Case("invalid-utf8", _invalid_utf8, "malformed", "bytes that are not UTF-8"),
    Case("overlong-utf8", _overlong_utf8, "malformed", "an overlong UTF-8 encoding of '<'"),
    Case("nul-byte", _nul_byte, "malformed", "a NUL byte"),
    Case("utf16", _utf16, "malformed", "UTF-16 with a BOM"),
    Case("empty-frame", lambda t: b"", "malformed", "a frame with no bytes"),
    Case("not-xml", lambda t: b"hello, server", "malformed", "plain text"),
    Case("payload-in-envelope-ns", _payload_in_envelope_ns, "invalid-envelope", "payload in the envelope namespace"),
    Case("default-ns-envelope", _default_namespace_envelope, "invalid-envelope", "unprefixed payload under a default-ns envelope"),
    Case("from-listener", _from("echo"), "forbidden-sender", "<from> naming a listener"),
    Case("from-system", _from("system"), "forbidden-sender", "<from> naming system"),
    Case("from-system-boot", _from("system.boot"), "forbidden-sender", "<from> naming a system listener"),
    Case("from-core", _from("core"), "forbidden-sender", "<from> naming core"),
    Case("from-other-client", _from("someone-else"), "forbidden-sender", "<from> not the connection's name"),
    Case("to-system-boot", _to_system_boot, "no-route", "<to> naming a system listener"),
    Case("broadcast-boot", _broadcast_boot, "no-route", "a Boot broadcast from outside"),
    Case("forged-system-error", _forged_system_error, "no-route", "a SystemError from outside"),
    Case("thread-not-uuid", lambda t: envelope(ECHO, sender=t.sender, thread_id="not-a-uuid"), "invalid-envelope",
         "a thread id that is not a UUID"),
    Case("thread-padded", lambda t: envelope(ECHO, sender=t.sender, thread_id=f" {thread()} "), "invalid-envelope",
         "a thread id with spaces around it"),
    Case("missing-thread", lambda t: envelope(ECHO, sender=t.sender, thread_id=""), "invalid-envelope", "no <thread>"),
    Case("two-threads", lambda t: envelope(ECHO, sender=t.sender, meta_extra=f"<env:thread>{thread()}</env:thread>"),
         "invalid-envelope", "two <thread>s"),
    Case("two-payloads", lambda t: envelope(ECHO + ECHO, sender=t.sender), "invalid-envelope",
         "two payloads from an external sender"),
    Case("no-payload", lambda t: envelope("", sender=t.sender), "invalid-envelope", "no payload"),
    Case("unknown-root-tag", lambda t: envelope("<Nobody><Text>x</Text></Nobody>", sender=t.sender, to=None), "no-route",
         "a root tag no listener takes"),
    Case("unknown-listener", lambda t: envelope(ECHO, sender=t.sender, to="nobody"), "no-route", "<to> naming nobody"),
    Case("to-itself", lambda t: envelope(ECHO, sender=t.sender, to=t.sender), "no-route", "<to> naming the client itself"),
    Case("wrong-payload-for-listener", lambda t: envelope(ECHO, sender=t.sender, to="slow"), "no-route",
         "a listener that does not take that root tag"),
    Case("schema-invalid", lambda t: envelope("<Echo><Wrong>x</Wrong></Echo>", sender=t.sender), "invalid-payload",
         "a payload its schema refuses"),
    Case("float-not-a-number", lambda t: envelope("<Slow><Seconds>soon</Seconds></Slow>", sender=t.sender, to="slow"),
         "invalid-payload", "a float field that is not a number"),
    Case("text-in-envelope", lambda t: envelope("junk" + ECHO, sender=t.sender), "invalid-envelope", "text beside the payload"),
]
