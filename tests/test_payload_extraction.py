"""Step 4, payload extraction: one envelope -> one state per payload (1..n)."""

from agentserver.message_bus.message_state import Origin
from agentserver.message_bus.steps import extract_payloads
from tests.organisms import PROBE, Item, Order
from tests.support import envelope, exchange, listener, organism, pump_for, run_steps

ITEMS = "<Item><N>1</N></Item><Item><N>2</N></Item><Item><N>3</N></Item>"
COLLECTOR = listener("collector", "Item", "collector")
RELAY = listener("relay", "Order", "relay")


def test_one_payload_gives_one_state():
    pump = pump_for(COLLECTOR)
    (state,) = run_steps(pump, envelope("<Item><N>7</N></Item>"), upto=extract_payloads)
    assert state.error is None
    assert state.root_tag == "Item" and state.payload_element.findtext("N") == "7"


def test_a_listener_envelope_with_three_payloads_gives_three_states():
    pump = pump_for(COLLECTOR, RELAY)
    thread = pump.stores.threads.extend(pump.stores.threads.open("tester", "x"), "relay")
    raw = envelope(ITEMS, sender="relay", thread=thread.id)
    states = run_steps(pump, raw, origin=Origin.listener("relay"), upto=extract_payloads)
    assert [s.error for s in states] == [None, None, None]
    assert [s.payload_element.findtext("N") for s in states] == ["1", "2", "3"]
    # and each is routed on its own, to the collector, by root tag
    routed = run_steps(pump, raw, origin=Origin.listener("relay"))
    assert [(s.error, s.route.listener.name, s.payload) for s in routed] == [(None, "collector", Item(n=n)) for n in (1, 2, 3)]


def test_an_external_sender_may_not_send_two_payloads():
    pump = pump_for(COLLECTOR)
    states = run_steps(pump, envelope("<Item><N>1</N></Item><Item><N>2</N></Item>"), upto=extract_payloads)
    assert len(states) == 1
    assert (states[0].error.code, states[0].error.step) == ("invalid-envelope", "extraction")


async def test_pump_refuses_two_payloads_from_a_client(start):
    pump = await start(organism(COLLECTOR))
    async with pump.client("tester") as client:
        frame = await exchange(pump, client, envelope("<Item><N>1</N></Item><Item><N>2</N></Item>"))
    assert (frame.kind, frame.code) == ("huh", "invalid-envelope")
    assert PROBE.counts["collector"] == 0
    assert pump.counters.errored["invalid-envelope"] == 1


async def test_pump_routes_each_of_three_payloads_a_handler_emits(start):
    pump = await start(organism(RELAY, COLLECTOR))
    async with pump.client("tester") as client:
        await client.send(Order(action="fanout-bytes", arg=""), to="relay")
        await PROBE.event("collected").wait()
    assert sorted(seen.payload.n for seen in PROBE.of("collector")) == [1, 2, 3]
    assert {seen.meta.from_id for seen in PROBE.of("collector")} == {"relay"}
    # three deliveries, each on its own thread below the relay's
    assert len({seen.meta.thread_id for seen in PROBE.of("collector")}) == 3
    assert pump.counters.listener("collector").handled == 3
