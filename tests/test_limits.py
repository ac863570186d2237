"""limits.py: the reserved names, the name pattern and the defaults of Limits."""

import pytest

from agentserver.limits import NAME_PATTERN, RESERVED_NAMES, Limits, is_reserved


@pytest.mark.parametrize("name", ["system", "core", "system.boot", "core.x.y"])
def test_system_core_and_everything_under_them_are_reserved(name):
    assert is_reserved(name)


@pytest.mark.parametrize("name", ["systems", "my.system", "coremark", "echo", "system_boot"])
def test_other_names_are_not_reserved(name):
    assert not is_reserved(name)


def test_reserved_names_are_exactly_system_and_core():
    assert RESERVED_NAMES == {"system", "core"}


@pytest.mark.parametrize("name", ["a", "_x", "echo.v2", "a-b_c.d9", "A" * 200])
def test_name_pattern_accepts(name):
    assert NAME_PATTERN.match(name)


@pytest.mark.parametrize("name", ["", "9lives", ".dot", "-dash", "has space", "A" * 201, "a\n", "é"])
def test_name_pattern_refuses(name):
    assert not NAME_PATTERN.match(name)


def test_defaults_hold_a_max_size_frame_in_a_connection_buffer():
    limits = Limits()
    assert limits.max_connection_buffer_bytes > limits.max_message_bytes
    assert limits.max_fanout <= limits.max_conversation_in_flight
    assert Limits(max_thread_hops=3).max_thread_hops == 3 and Limits().max_thread_hops == 1000
