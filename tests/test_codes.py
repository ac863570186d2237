"""codes.py: one canned sentence per code, and nothing else reaches a sender."""

from agentserver.codes import CANNED, ErrorCode, canned


def test_every_code_has_its_own_canned_sentence():
    assert set(CANNED) == set(ErrorCode)
    assert all(text.strip() for text in CANNED.values())


def test_a_code_reads_as_its_short_text():
    assert ErrorCode.NO_ROUTE == "no-route"
    assert str(ErrorCode.NO_ROUTE) == "no-route" and f"{ErrorCode.TOO_LARGE}" == "too-large"
    assert ErrorCode("hello-timeout") is ErrorCode.HELLO_TIMEOUT


def test_canned_takes_a_code_or_its_text():
    assert canned("no-route") == CANNED[ErrorCode.NO_ROUTE] == canned(ErrorCode.NO_ROUTE)


def test_an_unknown_code_gets_a_generic_sentence():
    assert canned("no-such-code") == "Error."
    assert canned("") == "Error."
