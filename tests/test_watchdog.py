"""The loop-lag watchdog names a handler that blocks the event loop, and how long it did."""

import logging
import re

from tests.hardening_organisms import Block
from tests.organisms import Echo
from tests.support import HANG_GUARD, listener, organism


def _hardening(name: str, kind: str, handler: str, **extra):
    entry = listener(name, kind, handler, **extra)
    entry["payload_class"] = f"tests.hardening_organisms.{kind}"
    entry["handler"] = f"tests.hardening_organisms.{handler}"
    return entry


async def test_a_blocking_handler_is_named_with_how_long_it_blocked(start, caplog):
    # before: time.sleep(2) in a handler stalled every client and nothing was logged
    pump = await start(organism(_hardening("blocker", "Block", "block"), listener("echo", "Echo", "echo"),
                                limits={"loop_lag_warning_s": 0.2}))
    caplog.set_level(logging.WARNING, logger="agentserver.pump")
    async with pump.client("tester") as client:
        await client.ask(Block(seconds=0.8), to="blocker", timeout=HANG_GUARD)
        await client.ask(Echo(text="after"), to="echo", timeout=HANG_GUARD)  # the loop beats again
    lines = [r.getMessage() for r in caplog.records if "blocked the event loop" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "listener 'blocker'" in lines[0] and "hardening_organisms.py" in lines[0]
    seconds = float(re.search(r"for (\d+\.\d+)s", lines[0]).group(1))
    assert 0.5 < seconds < 5.0
    assert "asyncio.to_thread" in lines[0]
    assert pump.handlers.watchdog.stalls == 1


async def test_handlers_that_await_are_never_reported(start, caplog):
    pump = await start(organism(listener("echo", "Echo", "echo"), limits={"loop_lag_warning_s": 0.5}))
    caplog.set_level(logging.WARNING, logger="agentserver.pump")
    async with pump.client("tester") as client:
        for n in range(200):
            await client.ask(Echo(text=str(n)), to="echo", timeout=HANG_GUARD)
    # (a busy shared machine may stall the whole process now and then: that is not the handler's doing)
    assert not [r for r in caplog.records if "listener 'echo'" in r.getMessage()]
