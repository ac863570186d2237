"""counters.py: accepted == handled + errored + in_flight; per-listener figures and percentiles."""

from agentserver.codes import ErrorCode
from agentserver.message_bus.counters import DURATIONS_KEPT, Counters, ListenerCounters


def test_in_flight_is_what_has_not_ended():
    counters = Counters(accepted=5)
    counters.handled += 2
    counters.error(ErrorCode.HANDLER)
    counters.deferred += 1
    assert counters.in_flight == 1
    assert counters.accepted == counters.handled + counters.errored_total + counters.deferred + counters.in_flight


def test_errors_are_kept_by_code_and_in_total():
    counters = Counters()
    counters.error(ErrorCode.NO_ROUTE)
    counters.error(ErrorCode.NO_ROUTE)
    counters.error("timeout")
    assert counters.errored[ErrorCode.NO_ROUTE] == 2 and counters.errored["no-route"] == 2
    assert counters.errored["timeout"] == 1 and counters.errored_total == 3


def test_listener_counters_are_made_once_per_name():
    counters = Counters()
    echo = counters.listener("echo")
    assert counters.listener("echo") is echo and counters.listener("other") is not echo


def test_ended_counts_well_or_in_error_and_keeps_the_duration():
    stats = ListenerCounters()
    stats.ended(True, 0.5)
    stats.ended(False, 1.5)
    assert (stats.handled, stats.errored) == (1, 1)
    assert list(stats.durations) == [0.5, 1.5]


def test_percentiles_are_nearest_rank_in_ms():
    stats = ListenerCounters()
    assert stats.percentile_ms(50) is None
    for seconds in (0.004, 0.001, 0.003, 0.002):
        stats.ended(True, seconds)
    assert stats.percentile_ms(50) == 2.0
    assert stats.percentile_ms(99) == 4.0 and stats.percentile_ms(100) == 4.0
    assert stats.percentile_ms(0) == 1.0


def test_only_the_recent_durations_are_kept():
    stats = ListenerCounters()
    for i in range(DURATIONS_KEPT + 10):
        stats.ended(True, float(i))
    assert len(stats.durations) == DURATIONS_KEPT and stats.durations[0] == 10.0
    assert stats.handled == DURATIONS_KEPT + 10
