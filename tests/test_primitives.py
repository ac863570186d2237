"""primitives.py: the pump's own payloads; system_error carries only canned text."""

from dataclasses import fields

from agentserver.codes import CANNED, ErrorCode
from agentserver.message_bus.codec import Codec
from agentserver.primitives import Boot, SystemError, TodoComplete, TodoUntil, system_error


def test_system_error_is_the_canned_sentence_for_its_code():
    error = system_error(ErrorCode.TIMEOUT, "call-1", "worker")
    assert error == SystemError(code="timeout", message=CANNED[ErrorCode.TIMEOUT], call_id="call-1", peer="worker")
    assert type(error.code) is str  # a plain string, not the enum


def test_system_error_defaults_and_unknown_codes():
    assert system_error("whatever") == SystemError(code="whatever", message="Error.", call_id="", peer="")


def test_the_payloads_travel_as_xml():
    for payload in (system_error("hops", "c", "p"), Boot("org", "2026-01-01T00:00:00+00:00", 3),
                    TodoUntil("t1", "Report", "worker", "n"), TodoComplete("t1")):
        codec = Codec.of(type(payload))
        element = codec.to_element(payload)
        assert element.tag == type(payload).__name__
        assert codec.from_element(element) == payload


def test_todo_until_optional_fields():
    todo = TodoUntil(todo_id="t", wait_for="Report")
    assert (todo.from_listener, todo.note) == ("", "")
    assert [f.name for f in fields(TodoComplete)] == ["todo_id"]
