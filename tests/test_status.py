"""`status`: one schema; every listener (idle too), uptime, latency, open conversations with
their age and what they wait on."""

import asyncio
import json

from tests.ask_organisms import Task
from tests.organisms import PROBE
from tests.support import HANG_GUARD, organism
from tests.test_calls import CALCULATOR, PLANNER, WEATHER


async def test_status_has_one_schema_lists_idle_listeners_and_shows_what_a_conversation_waits_on(start):
    pump = await start(organism(PLANNER, CALCULATOR, WEATHER))
    async with pump.client("tester") as client:
        await client.ask(Task(a=1, b=1, city="Oslo"), to="planner", timeout=HANG_GUARD)
        thread_id = await client.send(Task(a=1, b=1, city="hang"), to="planner")
        await PROBE.event("weather-hangs").wait()
        status = pump.status()
        json.dumps(status)  # JSON as it is
        assert set(status) >= {"organism", "version", "uptime_s", "counters", "listeners", "conversations",
                               "registries", "clients", "llm", "journal", "members"}
        assert status["uptime_s"] >= 0 and status["clients"] == ["tester"]
        assert set(status["listeners"]) == {"planner", "calculator", "weather", "system.boot"}
        planner = status["listeners"]["planner"]
        assert planner["kind"] == "agent" and planner["handled"] == 1 and planner["p50_ms"] > 0 and planner["p99_ms"] >= planner["p50_ms"]
        (conversation,) = status["conversations"]["shown"]
        assert conversation["id"] == thread_id and conversation["client"] == "tester" and conversation["age_s"] >= 0
        assert conversation["waiting_on"] == ["an answer from calculator (to planner)", "an answer from weather (to planner)",
                                              "running weather"] or "running weather" in conversation["waiting_on"]
        assert "an answer from weather (to planner)" in conversation["waiting_on"]
        assert await client.cancel(thread_id)
        await asyncio.wait_for(client.receive(), HANG_GUARD)
