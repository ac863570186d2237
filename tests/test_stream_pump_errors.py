"""DESIGN.md §6: every accepted message is handled or answered with an error, exactly once.

One test per row of the error table, each a real pump run.
"""

import uuid

import pytest

from agentserver import HuhError, RemoteError, SystemError
from agentserver.codes import CANNED
from tests.organisms import PROBE, Ball, Echo, Order
from tests.support import envelope, exchange, listener, organism, settle

RELAY = listener("relay", "Order", "relay")
BOSS = listener("boss", "Order", "relay")  # the same handler, calling `relay`
ECHO = listener("echo", "Echo", "echo")
STRICT = listener("strict", "Strict", "strict")
LIMIT = 2000  # max_message_bytes in these organisms


# ------------------------------------------------------------------ row 1: the sender hears
async def test_refused_client_messages_get_a_huh(start):
    pump = await start(organism(ECHO, STRICT, limits={"max_message_bytes": LIMIT}))
    async with pump.client("tester") as client:
        # bytes an ask cannot produce
        frame = await exchange(pump, client, b"<env:message>not closed")
        assert (frame.kind, frame.code) == ("huh", "malformed")
        frame = await exchange(pump, client, envelope("<Echo><Text>x</Text></Echo>", thread="not-a-uuid"))
        assert (frame.kind, frame.code) == ("huh", "invalid-envelope")
        # and what ask turns into HuhError
        cases = [
            ("no-route", "<Echo><Text>x</Text></Echo>", "nobody"),
            ("no-route", "<Nobody/>", None),
            ("invalid-payload", "<Echo><Txt>x</Txt></Echo>", "echo"),
            ("unreadable-payload", "<Strict><Count>-5</Count></Strict>", "strict"),
            ("too-large", Echo(text="x" * LIMIT), "echo"),
        ]
        for code, payload, to in cases:
            with pytest.raises(HuhError) as caught:
                await client.ask(payload, to=to, timeout=30)
            assert caught.value.code == code
            assert caught.value.message == CANNED[code]
        # still running
        assert (await client.ask(Echo(text="ok"), to="echo", timeout=30)).payload.text == "ok"
    assert PROBE.counts["echo"] == 1 and PROBE.counts["strict"] == 0
    assert pump.counters.errored_total == 7 and len(pump.dead_letters) == 7


@pytest.mark.parametrize(
    ("order", "code"),
    [
        (Order(action="bytes", arg="<Echo><Text>x</Echo"), "malformed"),
        # the pump builds its own envelopes from checked values; a bad name is simply not a listener
        (Order(action="forward", arg="not a name!"), "no-route"),
        (Order(action="forward", arg="nobody"), "no-route"),
        (Order(action="bytes", arg="<Nobody/>"), "no-route"),
        (Order(action="bytes", arg="<Echo><Txt>x</Txt></Echo>"), "invalid-payload"),
        (Order(action="bytes", arg="<Strict><Count>-1</Count></Strict>"), "unreadable-payload"),
        (Order(action="big", arg=str(LIMIT)), "too-large"),
    ],
    ids=lambda value: value.arg[:20] if isinstance(value, Order) else value,
)
async def test_refused_listener_messages_get_a_system_error(start, order, code):
    pump = await start(organism(RELAY, ECHO, STRICT, limits={"max_message_bytes": LIMIT}))
    async with pump.client("tester") as client:
        reply = await client.ask(order, to="relay", timeout=30)
    # the relay got a SystemError from the pump and told its caller what it was
    assert reply.payload.text == f"error:{code}"
    order_seen, error_seen = PROBE.of("relay")
    error = error_seen.payload
    assert (error.code, error.message) == (code, CANNED[code])
    # it names the call that failed, and whom it was to (a broadcast of bytes names nobody)
    assert uuid.UUID(error.call_id).version == 4
    assert error.peer == (order.arg if order.action == "forward" else "")
    assert error_seen.meta.from_id == "system"
    assert error_seen.meta.thread_id == order_seen.meta.thread_id  # on the thread that sent it
    assert PROBE.counts["echo"] == 0 and PROBE.counts["strict"] == 0
    assert pump.counters.errored == {code: 1}


# ------------------------------------------------------------------ row 2: the caller hears
@pytest.mark.parametrize(
    ("action", "code"), [("raise", "handler"), ("hang", "timeout"), ("wrong-type", "wrong-type"), ("not-xml", "wrong-type")]
)
async def test_a_failing_handler_is_reported_to_the_client_that_called_it(start, action, code):
    pump = await start(organism(RELAY, limits={"handler_timeout_s": 0.5}))
    async with pump.client("tester") as client:
        with pytest.raises(RemoteError) as caught:
            await client.ask(Order(action=action, arg="never"), to="relay", timeout=30)
        assert (caught.value.code, caught.value.sender) == (code, "system")
        # the pump keeps running
        with pytest.raises(RemoteError):
            await client.ask(Order(action=action, arg="never"), to="relay", timeout=30)
        reply = await client.ask(Order(action="forward", arg="nobody"), to="relay", timeout=30)
    assert reply.payload.text == "error:no-route"
    assert pump.counters.errored[code] == 2
    assert pump.counters.listener("relay").errored == 2
    if action == "hang":
        assert PROBE.notes["cancelled"] == "never"  # the timed-out handler was cancelled


@pytest.mark.parametrize(("action", "code"), [("raise", "handler"), ("hang", "timeout"), ("wrong-type", "wrong-type")])
async def test_a_failing_handler_is_reported_to_the_listener_that_called_it(start, action, code):
    pump = await start(organism(BOSS, RELAY, limits={"handler_timeout_s": 0.5}))
    async with pump.client("tester") as client:
        reply = await client.ask(Order(action="call", arg=f"relay:{action}:never"), to="boss", timeout=30)
    assert reply.payload.text == f"error:{code}"
    boss_calls = [seen for seen in PROBE.of("relay") if seen.meta.from_id in ("tester", "system")]
    order, error = boss_calls
    assert isinstance(error.payload, SystemError) and error.payload.code == code
    assert error.meta.thread_id == order.meta.thread_id


# ------------------------------------------------------------------ row 3: peers
async def test_a_peer_violation_tells_the_sender_with_code_routing(start):
    pump = await start(organism(listener("relay", "Order", "relay", peers=["echo"]), ECHO, STRICT))
    async with pump.client("tester") as client:
        refused = await client.ask(Order(action="bytes", arg="<Strict><Count>1</Count></Strict>"), to="relay", timeout=30)
        allowed = await client.ask(Order(action="forward", arg="echo"), to="relay", timeout=30)
    assert refused.payload.text == "error:routing"
    assert allowed.payload.text == "echo said relayed"
    assert PROBE.counts["strict"] == 0
    assert pump.counters.errored == {"routing": 1}


# ------------------------------------------------------------------ row 4: hop limit
async def test_a_thread_over_its_hop_limit_is_ended_and_the_root_caller_told(start):
    players = [listener("ping", "Ball", "ping"), listener("pong", "Ball", "pong"), ECHO]
    pump = await start(organism(*players, limits={"max_thread_hops": 20}))
    async with pump.client("tester") as client:
        with pytest.raises(RemoteError) as caught:
            await client.ask(Ball(n=0, limit=1_000_000), to="ping", timeout=30)
        assert caught.value.code == "hops"
        await settle(pump)
        # the pump is fine, and the ended conversation is gone
        assert (await client.ask(Echo(text="after"), to="echo", timeout=30)).payload.text == "after"
    assert PROBE.counts["rally"] == 19  # hops 1..20 were delivered (n = 0..19); the 21st was refused
    assert pump.counters.errored == {"hops": 1}
    assert pump.stores.threads.conversations == 0 and len(pump.stores.threads) == 0


# ------------------------------------------------------------------ row 5: errors about errors
async def test_an_error_about_an_error_is_recorded_never_answered(start):
    pump = await start(organism(listener("fragile", "Echo", "fragile")))
    frames = []
    pump.mailboxes.attach("tester", lambda frame: frames.append(frame) or True)
    await pump.inject(envelope("<Echo><Text>go</Text></Echo>", to="fragile"), from_id="tester")
    await settle(pump)
    # fragile sent into the void, got a SystemError, and raised on it: that failure is recorded only
    assert [type(seen.payload).__name__ for seen in PROBE.of("fragile")] == ["Echo", "SystemError"]
    assert pump.counters.errored == {"no-route": 1, "handler": 1}
    assert [letter.code for letter in pump.dead_letters.recent()] == ["no-route", "handler"]
    assert frames == []  # nobody was told about the error about the error


async def test_a_system_error_to_a_client_that_is_gone_is_recorded(start):
    pump = await start(organism(RELAY))
    frames = []
    session = pump.mailboxes.attach("tester", lambda frame: frames.append(frame) or True)
    await pump.inject(envelope("<Order><Action>hang</Action><Arg>gate</Arg></Order>", to="relay"), from_id="tester")
    await PROBE.event("gate-started").wait()
    pump.mailboxes.detach(session)
    PROBE.event("gate").set()  # the relay answers a client that has left
    await settle(pump)
    assert frames == []
    assert pump.counters.errored == {"undeliverable": 1}
    assert pump.dead_letters.recent()[-1].code == "undeliverable"


async def test_an_error_report_to_a_client_that_is_gone_is_recorded(start, probe):
    pump = await start(organism(RELAY))
    frames = []
    session = pump.mailboxes.attach("tester", lambda frame: frames.append(frame) or True)
    await pump.inject(envelope("<Order><Action>hang</Action><Arg>gate</Arg></Order>", to="relay"), from_id="tester")
    await probe.event("gate-started").wait()
    pump.mailboxes.detach(session)
    probe.notes["raise_when_released"] = True
    probe.event("gate").set()  # the relay fails; its caller, the client, has left
    await settle(pump)
    assert frames == []
    assert pump.counters.errored == {"handler": 1}
    assert [letter.code for letter in pump.dead_letters.recent()] == ["handler", "undeliverable"]


async def test_a_handler_that_answers_every_error_with_another_failure_is_stopped_by_the_hop_limit(start):
    pump = await start(organism(listener("stubborn", "Echo", "stubborn"), limits={"max_thread_hops": 50}))
    frames = []
    pump.mailboxes.attach("tester", lambda frame: frames.append(frame) or True)
    await pump.inject(envelope("<Echo><Text>go</Text></Echo>", to="stubborn"), from_id="tester")
    await settle(pump)
    # every SystemError delivery is a hop: the exchange ends at the limit ...
    assert PROBE.counts["stubborn"] == 50
    assert pump.counters.errored == {"no-route": 50, "hops": 1}
    # ... and the client that started the conversation is told, once
    assert [(frame.kind, frame.payload) for frame in frames] == [("reply", SystemError(code="hops", message=CANNED["hops"]))]
    assert pump.stores.threads.conversations == 0
