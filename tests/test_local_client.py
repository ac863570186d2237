"""The in-process client: send, ask, receive, and the names it may use."""

import asyncio

import pytest

from agentserver import AskTimeout
from agentserver.outbound import HuhError, RemoteError
from tests.organisms import PROBE, Echo, Order
from tests.support import HANG_GUARD, listener, organism, settle

ECHO = listener("echo", "Echo", "echo")
RELAY = listener("relay", "Order", "relay")


async def test_ask_send_and_receive(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester") as client:
        reply = await client.ask(Echo(text="asked"), to="echo", timeout=HANG_GUARD)
        thread_id = await client.send("<Echo><Text>sent</Text></Echo>", to="echo")
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
    assert (reply.payload.text, reply.sender) == ("asked", "echo")
    assert (frame.kind, frame.thread_id, frame.payload.text) == ("reply", thread_id, "sent")
    # the frame is the exact envelope a socket client would get, addressed to this client
    assert b"<env:to>tester</env:to>" in frame.envelope and thread_id.encode() in frame.envelope
    assert b"<EchoReply><Text>sent</Text></EchoReply>" in frame.envelope


async def test_concurrent_asks_each_get_their_own_reply(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester") as client:
        replies = await asyncio.gather(*(client.ask(Echo(text=str(n)), to="echo", timeout=HANG_GUARD) for n in range(20)))
    assert [reply.payload.text for reply in replies] == [str(n) for n in range(20)]
    assert len({reply.thread_id for reply in replies}) == 20


async def test_ask_raises_for_huh_remote_errors_and_silence(start):
    pump = await start(organism(ECHO, RELAY, listener("sweeper", "Item", "sweeper")))
    async with pump.client("tester") as client:
        with pytest.raises(HuhError):
            await client.ask(Echo(text="x"), to="nobody", timeout=HANG_GUARD)
        with pytest.raises(RemoteError):
            await client.ask(Order(action="raise", arg=""), to="relay", timeout=HANG_GUARD)
        with pytest.raises(AskTimeout):  # the sweeper ends the branch without answering
            await client.ask("<Item><N>1</N></Item>", to="sweeper", timeout=0.3)
        with pytest.raises(ValueError):
            await client.ask("<Echo><Text>a</Text></Echo><Echo><Text>b</Text></Echo>", to="echo")
        with pytest.raises(TypeError):
            await client.ask(object(), to="echo")
        await settle(pump)


@pytest.mark.parametrize("name", ["echo", "system", "core", "system.boot", "core.x"])
async def test_a_client_may_not_take_a_listener_or_reserved_name(start, name):
    pump = await start(organism(ECHO))
    with pytest.raises(ValueError):
        async with pump.client(name):
            pass


async def test_two_clients_may_not_share_a_name_and_a_name_is_free_again_after_exit(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester"):
        with pytest.raises(ValueError):
            async with pump.client("tester"):
                pass
    async with pump.client("tester") as again:
        assert (await again.ask(Echo(text="back"), to="echo", timeout=HANG_GUARD)).payload.text == "back"


async def test_frames_a_full_inbox_cannot_take_are_recorded_undeliverable(start):
    pump = await start(organism(RELAY))
    async with pump.client("tester", inbox_size=1) as client:
        await client.send(Order(action="fanout-respond", arg=""), to="relay")
        await settle(pump)
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
    assert frame.payload.n in (1, 2, 3)
    assert client.dropped == 2
    assert pump.counters.errored == {"undeliverable": 2}
    assert PROBE.counts["relay"] == 1
