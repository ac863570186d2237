"""Fixtures: a fresh probe per test, and `start`, which runs pumps and checks them after.

Test kinds: plain tests (units and in-process pumps) form the fast default run;
`@pytest.mark.subprocess` tests start servers or CLI processes and `@pytest.mark.slow`
ones are soak and bench runs. A bare `pytest` runs the fast ones only and says how many
it left out; `pytest --all` (the README's test command, and so CI) runs everything.
Naming files or `-m` on the command line selects as usual. Each kind has its own
timeout (a hang guard, never a measurement): `TIMEOUTS`.

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

TIMEOUTS = {"slow": 900, "subprocess": 240}  # seconds per test; plain tests: pyproject's timeout
DEFERRED = ("slow", "subprocess")  # left out of a bare `pytest`


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all", action="store_true", help="also run the subprocess and slow (soak, bench) tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for kind, seconds in TIMEOUTS.items():
            if item.get_closest_marker(kind) is not None and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(seconds))
    plain_run = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.getoption("markexpr")
    if config.getoption("--all") or not plain_run:
        return
    deferred = [item for item in items if any(item.get_closest_marker(kind) for kind in DEFERRED)]
    if deferred:
        items[:] = [item for item in items if item not in deferred]
        config.hook.pytest_deselected(items=deferred)
        config._deferred_count = len(deferred)  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> str:
    return "fast run: subprocess and slow tests are left out unless --all" if not config.getoption("--all") else "full run (--all)"
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


@pytest.fixture
def nats_server():
    """A fresh nats-server (JetStream, temporary store, free port), stopped afterwards."""
    from tests.nats_harness import NatsServer, need_nats_server

    server = NatsServer(need_nats_server()).start()
    try:
        yield server
    finally:
        server.cleanup()
