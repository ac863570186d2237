"""Broken handlers, runaway conversations, vanishing clients and SIGTERM under load.

Each fault ends with its documented outcome (DESIGN.md §6) and the pump still serving:
after each, an `Echo` still comes back. Pump-level cases run in-process (the `start`
fixture shuts the pump down and checks its counters afterwards); the vanishing client
and SIGTERM run a real server in a subprocess.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid

import pytest
from lxml import etree

from agentserver.client import connect
from agentserver.envelope import build_envelope
from agentserver.outbound import Outbound
from agentserver.primitives import SystemError
from tests.fault_organisms import organism
from tests.server_harness import RunningServer, config_text
from tests.support import HANG_GUARD, assert_counters, settle

FAULTY = (
    ("echo", "Echo", "echo"),
    ("boom", "Boom", "boom"),
    ("nap", "Nap", "nap"),
    ("odd", "Odd", "odd"),
    ("burst", "Burst", "burst"),
    ("crumbs", "Crumb", "crumbs"),
    ("ping", "Volley", "ping"),
    ("pong", "Volley", "pong"),
)


class Recorder:
    """An external client of an in-process pump that keeps every frame it is sent."""

    def __init__(self, pump, name: str = "tester") -> None:
        self.pump, self.name = pump, name
        self.frames: list[Outbound] = []
        pump.mailboxes.attach(name, self._mailbox)

    def _mailbox(self, outbound: Outbound) -> bool:
        self.frames.append(outbound)
        return True

    async def send(self, payload_xml: str, *, to: str) -> list[Outbound]:
        """Send one payload, wait until nothing is in flight, return the frames on its thread."""
        thread = str(uuid.uuid4())
        element = self.pump.ctx.xml.fragment(payload_xml)[0]
        raw = etree.tostring(build_envelope(element, sender=self.name, to=to, thread=thread))
        await self.pump.inject(raw, from_id=self.name)
        await settle(self.pump)
        return [frame for frame in self.frames if frame.thread_id == thread]

    async def still_serving(self) -> None:
        frames = await self.send("<Echo><Text>still here</Text></Echo>", to="echo")
        assert [(f.kind, f.payload_xml) for f in frames] == [("reply", b"<Echo><Text>still here</Text></Echo>")]


def system_error_codes(frames: list[Outbound]) -> list[str]:
    return [f.payload.code for f in frames if f.kind == "reply" and isinstance(f.payload, SystemError)]


async def faulty_pump(start, **limits):
    pump = await start(organism(*FAULTY, limits=limits or None))
    await settle(pump)  # the boot message
    return pump, Recorder(pump)


async def test_a_handler_that_raises_answers_the_caller_with_a_system_error(start):
    pump, client = await faulty_pump(start)
    frames = await client.send("<Boom><Text>kaboom</Text></Boom>", to="boom")
    assert system_error_codes(frames) == ["handler"] and len(frames) == 1
    assert pump.counters.errored["handler"] == 1
    letter = pump.dead_letters.recent()[-1]
    assert (letter.code, letter.sender) == ("handler", "tester")
    assert "RuntimeError: boom: kaboom" in letter.reason
    await client.still_serving()


async def test_a_handler_that_hangs_is_cut_off_at_its_timeout(start):
    pump, client = await faulty_pump(start, handler_timeout_s=0.3)
    frames = await client.send("<Nap><Seconds>3600</Seconds></Nap>", to="nap")
    assert system_error_codes(frames) == ["timeout"] and len(frames) == 1
    assert pump.counters.errored["timeout"] == 1
    stats = pump.counters.listener("nap")
    assert (stats.delivered, stats.errored, stats.running) == (1, 1, 0)
    await client.still_serving()


@pytest.mark.parametrize("kind", ["int", "str", "dict", "plain-object", "list-with-int"])
async def test_a_handler_returning_a_wrong_type_answers_the_caller_and_sends_nothing_else(start, kind):
    pump, client = await faulty_pump(start)
    frames = await client.send(f"<Odd><Kind>{kind}</Kind></Odd>", to="odd")
    # exactly one outcome: the SystemError (a list with one bad item sends none of it)
    assert system_error_codes(frames) == ["wrong-type"] and len(frames) == 1
    assert pump.counters.errored["wrong-type"] == 1
    await client.still_serving()


async def test_ten_thousand_payloads_at_once_are_all_delivered_within_the_hop_limit(start):
    # a fan-out of 10,000 needs room in the conversation's budget (default 1,000 in flight)
    pump, client = await faulty_pump(start, max_thread_hops=20_000, max_fanout=10_000, max_conversation_in_flight=20_000)
    frames = await client.send("<Burst><Count>10000</Count></Burst>", to="burst")
    assert frames == []  # the crumbs end their branches; nothing comes back
    crumbs = pump.counters.listener("crumbs")
    assert (crumbs.delivered, crumbs.handled, crumbs.errored) == (10_000, 10_000, 0)
    assert pump.counters.errored_total == 0
    await client.still_serving()


async def test_ten_thousand_payloads_past_the_hop_limit_end_the_conversation_once(start):
    # default max_thread_hops: 1000; the fan-out's own limits are set out of the way
    pump, client = await faulty_pump(start, max_fanout=10_000, max_conversation_in_flight=20_000)
    frames = await client.send("<Burst><Count>10000</Count></Burst>", to="burst")
    assert system_error_codes(frames) == ["hops"] and len(frames) == 1  # told once, not 9,001 times
    crumbs = pump.counters.listener("crumbs")
    assert 0 < crumbs.handled < 10_000
    assert pump.counters.errored["hops"] == 10_000 - crumbs.handled  # every crumb accounted for
    await client.still_serving()


async def test_more_payloads_than_max_fanout_is_a_wrong_type(start):
    pump, client = await faulty_pump(start, max_fanout=100)
    frames = await client.send("<Burst><Count>101</Count></Burst>", to="burst")
    assert system_error_codes(frames) == ["wrong-type"] and len(frames) == 1
    assert pump.counters.listener("crumbs").delivered == 0
    await client.still_serving()


async def test_listeners_playing_ping_pong_forever_are_stopped_by_max_thread_hops(start):
    pump, client = await faulty_pump(start, max_thread_hops=40)
    frames = await client.send("<Volley><N>0</N></Volley>", to="ping")
    assert system_error_codes(frames) == ["hops"] and len(frames) == 1  # the root caller hears of it
    played = pump.counters.listener("ping").handled + pump.counters.listener("pong").handled
    assert 0 < played <= 40
    assert pump.counters.errored["hops"] == 1
    assert pump.stores.threads.conversations == 0  # the ended conversation was forgotten
    await client.still_serving()


async def test_every_fault_at_once_still_balances_the_counters(start):
    """All of the above interleaved, from three clients at once."""
    pump, first = await faulty_pump(start, max_thread_hops=60, handler_timeout_s=0.3)
    others = [Recorder(pump, "second"), Recorder(pump, "third")]
    payloads = [
        ("<Boom><Text>x</Text></Boom>", "boom", "handler"),
        ("<Nap><Seconds>3600</Seconds></Nap>", "nap", "timeout"),
        ("<Odd><Kind>int</Kind></Odd>", "odd", "wrong-type"),
        ("<Volley><N>0</N></Volley>", "ping", "hops"),
    ]
    results = await asyncio.gather(*(
        client.send(xml, to=to) for client in (first, *others) for xml, to, _ in payloads
    ))
    expected = [code for _ in range(3) for _, _, code in payloads]
    assert [system_error_codes(frames) for frames in results] == [[code] for code in expected]
    assert_counters(pump)
    for client in (first, *others):
        await client.still_serving()


# ------------------------------------------------------------------ over the socket
def status_when_idle(client_status, timeout: float = HANG_GUARD):
    """Poll `status` over the control channel until nothing is in flight (hang guard only)."""

    async def wait() -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status = await client_status()
            if status["counters"]["in_flight"] == 0 or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.05)

    return wait()


@pytest.mark.subprocess
def test_a_client_vanishing_mid_ask_leaves_the_server_serving_others():
    with RunningServer(config_text()) as server:
        path = str(server.socket_path)

        async def scenario() -> dict:
            leaver = await connect(path, name="leaver")
            ask = asyncio.create_task(leaver.ask("<Slow><Seconds>0.5</Seconds></Slow>", to="slow", timeout=HANG_GUARD))
            async with await connect(path, name="stayer") as stayer:
                while (await stayer.status())["listeners"].get("slow", {}).get("running", 0) == 0:
                    await asyncio.sleep(0.01)  # the slow handler has started
                await leaver.close()  # gone before its reply exists
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(ask, HANG_GUARD)
                reply = await stayer.ask("<Echo><Text>still here</Text></Echo>", to="echo", timeout=HANG_GUARD)
                assert reply.xml == "<Echo><Text>still here</Text></Echo>"
                status = await status_when_idle(stayer.status)
                letters = await stayer.deadletters()
                reply = await stayer.ask("<Echo><Text>and after</Text></Echo>", to="echo", timeout=HANG_GUARD)
                assert reply.xml == "<Echo><Text>and after</Text></Echo>"
            return status, letters

        status, letters = asyncio.run(scenario())
    numbers = status["counters"]
    assert numbers["in_flight"] == 0, status
    assert numbers["errored_by_reason"] == {"undeliverable": 1}, status
    assert numbers["accepted"] == numbers["handled"] + numbers["errored"], status
    assert status["listeners"]["slow"]["handled"] == 1  # the handler itself finished fine
    assert [(letter["code"], letter["sender"]) for letter in letters] == [("undeliverable", "slow")]
    assert server.returncode == 0


@pytest.mark.subprocess
def test_sigterm_under_load_drains_and_reports_balanced_counters():
    with RunningServer(config_text()) as server:
        path = str(server.socket_path)
        answered = 0

        async def client(index: int, enough: asyncio.Event) -> None:
            nonlocal answered
            async with await connect(path, name=f"loader-{index}") as c:
                n = 0
                while True:
                    n += 1
                    payload, to = (("<Slow><Seconds>0.02</Seconds></Slow>", "slow") if n % 3 == 0
                                   else (f"<Echo><Text>{index}-{n}</Text></Echo>", "echo"))
                    try:
                        await c.ask(payload, to=to, timeout=HANG_GUARD)
                    except Exception:  # the server went away under us: expected, the load ends
                        return
                    answered += 1
                    if answered >= 200:
                        enough.set()

        async def scenario() -> None:
            enough = asyncio.Event()
            tasks = [asyncio.create_task(client(i, enough)) for i in range(4)]
            await asyncio.wait_for(enough.wait(), HANG_GUARD * 2)
            server.send_signal(signal.SIGTERM)  # while all four clients still have asks in flight
            await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD)

        asyncio.run(scenario())
    assert server.returncode == 0, server.log[-3000:]
    lines = [line for line in server.log.splitlines() if line.strip()]
    match = re.search(r"stopped: accepted=(\d+) handled=(\d+) errored=(\d+) ", lines[-1])
    assert match, server.log[-3000:]
    accepted, handled, errored = map(int, match.groups())
    assert accepted == handled + errored, server.log[-3000:]
    assert accepted >= answered >= 200, (answered, server.log[-3000:])
    assert "Traceback" not in server.log, server.log[-6000:]
    for index in range(4):  # a connection closed by the shutdown takes no more frames (nor its name again)
        assert server.log.count(f"connection unix is 'loader-{index}'") == 1, server.log[-3000:]
