"""outcomes.py: the pure `decide()` table (who hears of a failure, how loudly) and ShutdownReport."""

import logging

import pytest

from agentserver.codes import ErrorCode as E
from agentserver.message_bus.counters import Counters
from agentserver.message_bus.outcomes import CONNECTION_CODES, HANDLER_STEP, NOTIFY, Notify, Outcome, ShutdownReport, decide

REFUSALS = [E.MALFORMED, E.TOO_LARGE, E.FORBIDDEN_DTD, E.INVALID_ENVELOPE, E.FORBIDDEN_SENDER, E.NO_ROUTE,
            E.INVALID_PAYLOAD, E.UNREADABLE_PAYLOAD, E.UNKNOWN_THREAD, E.ROUTING]
HANDLER_FAILURES = [E.TIMEOUT, E.WRONG_TYPE, E.BUDGET, E.LLM_ERROR, E.LLM_UNAVAILABLE, E.LLM_TOO_LARGE,
                    E.LLM_CONFIG, E.LLM_INVALID]
CONVERSATION_ENDS = [E.HOPS, E.CONVERSATION_BUDGET, E.CONVERSATION_TIMEOUT, E.CANCELLED]
SILENT = [E.SHUTDOWN, E.UNDELIVERABLE, E.OVERLOADED, E.NO_ANSWER]


def d(code, step="routing", *, report=False, told=False):
    return decide(code, step, is_error_report=report, root_told=told)


def test_every_code_a_unit_can_fail_with_is_in_the_table():
    assert set(NOTIFY) | CONNECTION_CODES == set(E)
    assert not set(NOTIFY) & CONNECTION_CODES


@pytest.mark.parametrize("code", REFUSALS)
def test_a_refusal_tells_the_sender_at_warning(code):
    assert d(code) == Outcome(Notify.SENDER, logging.WARNING)


@pytest.mark.parametrize("code", HANDLER_FAILURES)
def test_a_handler_failure_tells_the_caller_at_warning(code):
    assert d(code, HANDLER_STEP) == Outcome(Notify.CALLER, logging.WARNING)


def test_a_handler_crash_is_a_bug_to_fix_and_logged_as_an_error():
    assert d(E.HANDLER, HANDLER_STEP) == Outcome(Notify.CALLER, logging.ERROR)


@pytest.mark.parametrize("code", REFUSALS + HANDLER_FAILURES + [E.HANDLER])
def test_a_failed_error_report_is_never_answered(code):
    outcome = d(code, report=True)
    assert outcome.notify is Notify.NOBODY
    assert outcome.level == d(code).level  # logged as loudly as any other


def test_internal_tells_the_sender_or_in_a_handler_the_caller_always_at_error():
    assert d(E.INTERNAL, "xsd") == Outcome(Notify.SENDER, logging.ERROR)
    assert d(E.INTERNAL, HANDLER_STEP) == Outcome(Notify.CALLER, logging.ERROR)
    # a bug is reported even about an error report (as the table says: except the above)
    assert d(E.INTERNAL, "xsd", report=True) == Outcome(Notify.SENDER, logging.ERROR)


@pytest.mark.parametrize("code", CONVERSATION_ENDS)
def test_the_root_is_told_once_even_about_an_error_report(code):
    assert d(code) == Outcome(Notify.ROOT, logging.WARNING)
    assert d(code, report=True) == Outcome(Notify.ROOT, logging.WARNING)
    assert d(code, told=True) == Outcome(Notify.NOBODY, logging.DEBUG)
    assert d(code, report=True, told=True) == Outcome(Notify.NOBODY, logging.DEBUG)


@pytest.mark.parametrize("code", [E.LATE, E.DUPLICATE])
def test_expected_now_and_then_nobody_hears_at_info(code):
    assert d(code) == Outcome(Notify.NOBODY, logging.INFO)
    assert d(code, report=True) == Outcome(Notify.NOBODY, logging.INFO)


@pytest.mark.parametrize("code", SILENT)
def test_nobody_can_be_told(code):
    assert d(code) == Outcome(Notify.NOBODY, logging.WARNING)


def test_a_code_outside_the_table_falls_back_to_the_sender():
    assert d(E.BAD_TOKEN) == Outcome(Notify.SENDER, logging.WARNING)


def test_shutdown_report_of_counters_counts_only_this_shutdowns_drops():
    counters = Counters(accepted=10, handled=6, deferred=1)
    for code in (E.SHUTDOWN, E.SHUTDOWN, E.SHUTDOWN, E.HANDLER):
        counters.error(code)
    report = ShutdownReport.of(counters, dropped_before=1, clean=False)
    assert report == ShutdownReport(handled=6, errored=4, dropped=2, clean=False, deferred=1)
    assert str(report) == "handled=6 errored=4 dropped=2 deferred=1 (deadline reached)"
    assert str(ShutdownReport(1, 0, 0, True)).endswith("deferred=0 (clean)")
