"""pipeline.py: the eight steps in their order; `feed` and `stream` run the same stages."""

from agentserver.codes import ErrorCode
from agentserver.message_bus.message_state import MessageState, Origin
from agentserver.message_bus.pipeline import STAGES, Pipeline
from agentserver.message_bus.steps import assign_thread
from tests.organisms import News
from tests.support import envelope, listener, pump_for

NEWS = [listener("news_a", "News", "news_a"), listener("news_b", "News", "news_b")]
NEWS_XML = "<News><Text>hi</Text><Hops>0</Hops></News>"


def states(raw: bytes) -> list[MessageState]:
    return [MessageState(raw=raw, origin=Origin.external("tester"))]


def test_the_stages_in_their_documented_order():
    assert [s.name for s in STAGES] == ["repair", "c14n", "envelope", "extraction", "threads", "xsd", "deserialize",
                                        "routing"]
    assert [s.name for s in STAGES if s.fans_out] == ["extraction", "routing"]


def test_feed_runs_every_stage_and_reports_fan_out_copies():
    extras = []
    pipeline = Pipeline(pump_for(*NEWS).ctx, on_extra=extras.append)
    out = pipeline.feed(states(envelope(NEWS_XML)))
    assert sorted(s.route.listener.name for s in out) == ["news_a", "news_b"]
    assert all(s.error is None and s.payload == News(text="hi", hops=0) for s in out)
    assert extras == out[1:]  # the copies beyond the first, for the pump to count


def test_feed_stops_after_the_stage_named_or_given():
    pipeline = Pipeline(pump_for(*NEWS).ctx)
    (by_name,) = pipeline.feed(states(envelope(NEWS_XML)), upto="c14n")
    assert by_name.canonical is not None and by_name.sender == ""
    (by_step,) = pipeline.feed(states(envelope(NEWS_XML)), upto=assign_thread)
    assert by_step.thread is not None and by_step.payload_type is None


def test_after_the_first_failure_later_stages_pass_the_state_through():
    pipeline = Pipeline(pump_for(*NEWS).ctx)
    (state,) = pipeline.feed(states(b"<not-closed"))
    assert (state.error.code, state.error.step) == (ErrorCode.MALFORMED, "repair")
    assert state.route is None and state.thread is None


async def test_stream_composes_the_same_stages_over_batches():
    pipeline = Pipeline(pump_for(*NEWS).ctx)

    async def batches():
        yield states(envelope(NEWS_XML, to="news_b"))
        yield states(b"<not-closed")

    async with pipeline.stream(batches()).stream() as out:
        results = [batch async for batch in out]
    (routed,), (refused,) = results
    assert routed.route.listener.name == "news_b"
    assert refused.error.code is ErrorCode.MALFORMED
