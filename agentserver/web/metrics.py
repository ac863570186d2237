"""`/metrics`: a prometheus_client Collector that reads the pump when scraped.

Nothing is counted twice: every number comes from the pump's own counters (the same
reading `status` makes), so a scrape and `status` taken together agree. Labels stay
bounded: listener names, error codes, LLM agents and backends; a conversation id is
never a label.

    agentserver_messages_accepted_total                 counter
    agentserver_messages_handled_total                  counter
    agentserver_messages_errored_total{code}            counter
    agentserver_messages_in_flight                      gauge
    agentserver_queued_messages                         gauge   (admission queue)
    agentserver_parked_messages                         gauge   (waiting for a handler slot)
    agentserver_dead_letters_total                      counter
    agentserver_open_conversations                      gauge
    agentserver_handler_duration_seconds{listener}      histogram
    agentserver_listener_delivered_total{listener}      counter
    agentserver_listener_errored_total{listener}        counter
    agentserver_listener_running{listener}              gauge
    agentserver_listener_waiting{listener}              gauge
    agentserver_llm_tokens_total{agent,backend,kind}    counter (kind: prompt, completion;
        per agent with backend="", per backend with agent="": the router counts them apart)
    agentserver_live_events_dropped_total               counter (hops a slow /events reader missed)
    agentserver_uptime_seconds                          gauge
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agentserver.message_bus.counters import DURATION_BUCKETS

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["PumpCollector"]


class PumpCollector(Collector):
    def __init__(self, pump: "StreamPump", events_dropped: Callable[[], int]) -> None:
        self.pump = pump
        self.events_dropped = events_dropped

    def collect(self) -> Iterator[Metric]:
        status = self.pump.status()
        counters = status["counters"]
        yield _counter("agentserver_messages_accepted", "Units of work accepted (external and handler output).",
                       counters["accepted"])
        yield _counter("agentserver_messages_handled", "Units that ended well.", counters["handled"])
        errored = CounterMetricFamily("agentserver_messages_errored", "Units that ended in an error, by code.",
                                      labels=["code"])
        for code, n in counters["errored_by_reason"].items():
            errored.add_metric([code], n)
        yield errored
        yield _gauge("agentserver_messages_in_flight", "Units accepted and not yet ended.", counters["in_flight"])
        yield _gauge("agentserver_queued_messages", "Units waiting in the admission queue.", counters["queued"])
        yield _gauge("agentserver_parked_messages", "Units waiting for a handler slot.", counters["parked"])
        yield _counter("agentserver_dead_letters", "Dead letters recorded.", counters["dead_letters"])
        yield _gauge("agentserver_open_conversations", "Conversations open now.", status["conversations"]["open"])
        yield from self._listeners(status["listeners"])
        yield from _llm(status.get("llm"))
        yield _counter("agentserver_live_events_dropped", "Hop events a slow /events reader did not get.",
                       self.events_dropped())
        yield _gauge("agentserver_uptime_seconds", "Seconds since the pump started.", status["uptime_s"])

    def _listeners(self, listeners: dict[str, Any]) -> Iterator[Metric]:
        histogram = HistogramMetricFamily("agentserver_handler_duration_seconds",
                                          "Handler call durations (waits for answers included), by listener.",
                                          labels=["listener"])
        families = {key: (GaugeMetricFamily if key in ("running", "waiting") else CounterMetricFamily)(
            f"agentserver_listener_{key}", f"Per listener: {text}.", labels=["listener"])
            for key, text in (("delivered", "units delivered to its handler"), ("errored", "handler calls that failed"),
                              ("running", "handler calls running now"), ("waiting", "units waiting for its slots"))}
        for name, figures in listeners.items():
            stats = self.pump.counters.listener(name)
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, DURATION_BUCKETS), "+Inf"), stats.duration_buckets):
                cumulative += n
                buckets.append((bound, cumulative))
            histogram.add_metric([name], buckets, stats.duration_sum)
            for key, family in families.items():
                family.add_metric([name], figures[key])
        yield histogram
        yield from families.values()


def _llm(llm: dict[str, Any] | None) -> Iterator[Metric]:
    tokens = CounterMetricFamily("agentserver_llm_tokens", "LLM tokens used, by agent or by backend, and kind.",
                                 labels=["agent", "backend", "kind"])
    for label, group in (("agent", "agents"), ("backend", "backends")):
        for name, usage in ((llm or {}).get(group) or {}).items():
            for kind in ("prompt", "completion"):
                agent, backend = (name, "") if label == "agent" else ("", name)
                tokens.add_metric([agent, backend, kind], usage.get(f"{kind}_tokens", 0))
    yield tokens


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)
