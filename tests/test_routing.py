"""Step 8, routing: <to>, broadcast (never to the sender), peers, system listeners."""

from agentserver import SystemError
from agentserver.message_bus.message_state import Origin
from tests.organisms import PROBE, News, Order, Task
from tests.support import envelope, exchange, listener, organism, pump_for, run_steps, settle

NEWS = [listener("news_a", "News", "news_a"), listener("news_b", "News", "news_b")]
ECHO = listener("echo", "Echo", "echo")
RELAY = listener("relay", "Order", "relay")
PICKY = [
    listener("picky", "Task", "picky_agent", agent=True, peers=["worker"]),
    listener("worker", "Job", "worker"),
    listener("outsider", "Job", "outsider"),
]
NEWS_XML = "<News><Text>hi</Text><Hops>0</Hops></News>"


def _listener_thread(pump, name):
    """A thread where listener `name` is handling something a client sent."""
    return pump.stores.threads.extend(pump.stores.threads.open("tester", None), name)


def test_to_selects_exactly_that_listener():
    pump = pump_for(*NEWS)
    (state,) = run_steps(pump, envelope(NEWS_XML, to="news_b"))
    assert state.error is None and state.route.listener.name == "news_b"
    assert state.delivery_thread.chain == ("tester", "news_b")
    assert state.thread.conversation.hops == 1


def test_without_to_every_listener_of_the_root_tag_gets_it():
    pump = pump_for(*NEWS, ECHO)
    states = run_steps(pump, envelope(NEWS_XML))
    assert sorted(s.route.listener.name for s in states) == ["news_a", "news_b"]
    assert all(s.error is None for s in states)
    assert states[0].delivery_thread is not states[1].delivery_thread


def test_a_broadcast_never_goes_back_to_its_sender():
    pump = pump_for(*NEWS)
    thread = _listener_thread(pump, "news_a")
    states = run_steps(pump, envelope(NEWS_XML, sender="news_a", thread=thread.id), origin=Origin.listener("news_a"))
    assert [s.route.listener.name for s in states] == ["news_b"]


def test_to_a_listener_of_another_root_tag_has_no_route():
    pump = pump_for(*NEWS, ECHO)
    (state,) = run_steps(pump, envelope(NEWS_XML, to="echo"))
    assert (state.error.code, state.error.step) == ("no-route", "routing")
    (state,) = run_steps(pump, envelope(NEWS_XML, to="nobody"))
    assert state.error.code == "no-route"


def test_system_listeners_are_unreachable_from_outside_and_from_handlers():
    pump = pump_for(ECHO, RELAY)
    boot = "<Boot><OrganismName>x</OrganismName><Timestamp>now</Timestamp><ListenerCount>1</ListenerCount></Boot>"
    (direct,) = run_steps(pump, envelope(boot, to="system.boot"))
    assert direct.error.code == "no-route"
    (broadcast,) = run_steps(pump, envelope(boot))
    assert broadcast.error.code == "no-route"
    thread = _listener_thread(pump, "relay")
    (from_handler,) = run_steps(pump, envelope(boot, sender="relay", thread=thread.id), origin=Origin.listener("relay"))
    assert from_handler.error.code == "no-route"


def test_a_listener_with_peers_may_only_forward_to_them():
    pump = pump_for(*PICKY)
    thread = _listener_thread(pump, "picky")
    job = "<Job><Token>t</Token></Job>"
    (allowed,) = run_steps(pump, envelope(job, sender="picky", to="worker", thread=thread.id), origin=Origin.listener("picky"))
    assert allowed.error is None and allowed.route.listener.name == "worker"
    (refused,) = run_steps(pump, envelope(job, sender="picky", to="outsider", thread=thread.id), origin=Origin.listener("picky"))
    assert (refused.error.code, refused.error.step) == ("routing", "routing")
    # a broadcast is narrowed to the peers
    (narrowed,) = run_steps(pump, envelope(job, sender="picky", thread=thread.id), origin=Origin.listener("picky"))
    assert narrowed.route.listener.name == "worker"


def test_an_agent_without_peers_may_only_respond():
    pump = pump_for(listener("loner", "Task", "remember", agent=True), ECHO)
    thread = _listener_thread(pump, "loner")
    (state,) = run_steps(pump, envelope("<Echo><Text>x</Text></Echo>", sender="loner", to="echo", thread=thread.id), origin=Origin.listener("loner"))
    assert state.error.code == "routing"


async def test_pump_broadcasts_to_both_listeners_and_never_to_the_sender(start):
    pump = await start(organism(*NEWS))
    async with pump.client("tester") as client:
        await client.send(News(text="hi", hops=0))  # no <to>
        await settle(pump)
    heard = sorted((seen.listener, seen.meta.from_id, seen.payload.hops) for seen in PROBE.seen)
    # each heard the client, then re-broadcast: only the *other* one heard that
    assert heard == [("news_a", "news_b", 1), ("news_a", "tester", 0), ("news_b", "news_a", 1), ("news_b", "tester", 0)]
    assert pump.counters.listener("news_a").handled == 2 and pump.counters.listener("news_b").handled == 2


async def test_pump_peer_violation_tells_the_sender_and_the_thread_goes_on(start):
    pump = await start(organism(*PICKY))
    async with pump.client("tester") as client:
        reply = await client.ask(Task(goal="try the outsider"), to="picky", timeout=30)
    # the agent was told, called its real peer on the same thread, and answered
    assert reply.payload.text == "after routing done"
    task, error, done = PROBE.of("picky")
    assert isinstance(error.payload, SystemError) and error.payload.code == "routing"
    assert error.meta.from_id == "system"
    assert task.meta.thread_id == error.meta.thread_id == done.meta.thread_id
    assert PROBE.counts["outsider"] == 0 and PROBE.counts["worker"] == 1
    assert pump.counters.errored == {"routing": 1}


async def test_pump_refuses_system_listeners_to_clients_and_handlers(start):
    pump = await start(organism(RELAY))
    boot = "<Boot><OrganismName>x</OrganismName><Timestamp>now</Timestamp><ListenerCount>1</ListenerCount></Boot>"
    async with pump.client("tester") as client:
        frame = await exchange(pump, client, envelope(boot, to="system.boot"))
        assert (frame.kind, frame.code) == ("huh", "no-route")
        reply = await client.ask(Order(action="bytes", arg=boot), to="relay", timeout=30)
    assert reply.payload.text == "error:no-route"
    assert pump.counters.listener("system.boot").delivered == 1  # only the pump's own Boot


async def test_pump_delivers_to_the_named_listener_only(start):
    pump = await start(organism(*NEWS))
    async with pump.client("tester") as client:
        await client.send(News(text="for b", hops=1), to="news_b")
        await settle(pump)
    assert [(seen.listener, seen.payload.text) for seen in PROBE.seen] == [("news_b", "for b")]
