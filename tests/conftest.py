"""Fixtures: a fresh probe per test, and `start`, which runs pumps and checks them after.

Every pump started through `start` is shut down at the end of the test (unless the
test did it) and must then satisfy the counters invariant: accepted == handled +
errored + in_flight with in_flight == 0, every listener at rest, and (for pumps the
fixture shuts down) nothing left for the shutdown to drop.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.organisms import PROBE
from tests.support import HANG_GUARD, assert_counters, make_pump


@pytest.fixture(autouse=True)
def probe():
    PROBE.reset()
    yield PROBE
    PROBE.reset()


@pytest.fixture
async def start():
    started = []

    async def _start(text: str, path: str = "test-organism.yaml"):
        pump = make_pump(text, path)
        task = asyncio.create_task(pump.run(), name=f"pump:{len(started)}")
        started.append((pump, task))
        return pump

    yield _start

    for pump, task in started:
        if not task.done() and not pump._closing:
            report = await pump.shutdown(HANG_GUARD)
            await asyncio.wait_for(task, HANG_GUARD)
            assert report.clean, f"still in flight at the end of the test: {pump.status()}"
            assert report.dropped == 0, report
        elif not task.done():
            await asyncio.wait_for(task, HANG_GUARD)
        assert_counters(pump)
