"""Fixtures: a fresh probe per test, and `start`, which runs pumps and checks them after.

Every pump started through `start` is shut down at the end of the test (unless the
test did it) and must then satisfy the counters invariant: accepted == handled +
errored + in_flight with in_flight == 0, every listener at rest, and (for pumps the
fixture shuts down) nothing left for the shutdown to drop.
"""

from __future__ import annotations

import asyncio
import contextlib

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
    """Start pumps (`async with`, as users do); at the end, shut down those the test did
    not and check every pump's books."""
    async with contextlib.AsyncExitStack() as stack:
        started = []

        async def _start(text: str, path: str = "test-organism.yaml"):
            pump = make_pump(text, path)
            await stack.enter_async_context(pump)
            started.append(pump)
            return pump

        yield _start

        for pump in started:
            if not pump.closed:
                report = await asyncio.wait_for(pump.shutdown(HANG_GUARD), 2 * HANG_GUARD)
                assert report.clean, f"still in flight at the end of the test: {pump.status()}"
                assert report.dropped == 0, report
            assert_counters(pump)
