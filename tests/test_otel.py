"""The [otel] extra: one span per hop, one trace per conversation (SDK's in-memory exporter)."""

import asyncio

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra (opentelemetry-sdk) is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402

from agentserver.otel import trace_hops, trace_id_of  # noqa: E402
from tests.ask_organisms import Task  # noqa: E402
from tests.support import HANG_GUARD, envelope, organism, settle  # noqa: E402
from tests.test_calls import CALCULATOR, PLANNER, WEATHER  # noqa: E402


@pytest.fixture
def exported():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_every_hop_is_a_span_and_a_conversation_is_one_trace(start, exported):
    provider, exporter = exported
    pump = await start(organism(PLANNER, CALCULATOR, WEATHER))
    await settle(pump)
    stop = trace_hops(pump, tracer_provider=provider)
    async with pump.client("tester") as client:
        thread_id = await client.send(Task(a=1, b=2, city="Oslo"), to="planner")
        await asyncio.wait_for(client.receive(), HANG_GUARD)
        refused = "0d1a7b8c-2222-4333-8444-555555555555"
        await pump.inject(envelope("<City><Nme>x</Nme></City>", to="weather", thread=refused), from_id="tester")
        await asyncio.wait_for(client.receive(), HANG_GUARD)
        await settle(pump)
    stop()
    spans = exporter.get_finished_spans()
    mine = [span for span in spans if span.attributes["agentserver.conversation_id"] == thread_id]
    assert {span.name for span in mine} >= {"tester -> planner <Task>", "planner -> calculator <Add>",
                                            "weather -> planner <Forecast>", "planner -> tester <Summary>"}
    assert {span.context.trace_id for span in mine} == {trace_id_of(thread_id)}
    assert all(span.end_time >= span.start_time and span.attributes["agentserver.outcome"] == "handled" for span in mine)
    (bad,) = [span for span in spans if span.attributes["agentserver.conversation_id"] == refused]
    assert bad.status.status_code is StatusCode.ERROR and bad.status.description == "invalid-payload"
    assert pump.events._observers == []
