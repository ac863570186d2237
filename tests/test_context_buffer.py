"""The context buffer: per-thread history, each message once, bounded in slots and threads."""

from agentserver.message_bus.context_buffer import ContextBuffer
from agentserver.message_bus.message_state import HistoryEntry
from tests.organisms import PROBE, Hop, News
from tests.support import HANG_GUARD, listener, organism, settle


def _entry(n):
    return HistoryEntry("a", "b", "Item", n)


def test_history_is_per_thread_oldest_first_and_read_only():
    buffer = ContextBuffer()
    buffer.append("t1", _entry(1))
    buffer.append("t2", _entry(2))
    buffer.append("t1", _entry(3))
    history = buffer.history("t1")
    assert [entry.payload for entry in history] == [1, 3]
    assert isinstance(history, tuple) and buffer.history("unknown") == ()


def test_slots_and_threads_are_bounded():
    buffer = ContextBuffer(max_slots=3, max_threads=2)
    for n in range(5):
        buffer.append("t1", _entry(n))
    assert [entry.payload for entry in buffer.history("t1")] == [2, 3, 4]
    assert buffer.evicted == 2
    buffer.append("t2", _entry(0))
    buffer.append("t1", _entry(5))  # t1 is now the most recently used
    buffer.append("t3", _entry(0))  # evicts t2, the least recently used
    assert buffer.history("t2") == () and len(buffer) == 2
    buffer.forget(["t1", "t3"])
    assert (len(buffer), buffer.entries) == (0, 0)


async def test_handlers_see_their_threads_history_each_message_once(start):
    chain = [listener("chain_a", "Hop", "chain_a"), listener("chain_b", "Hop", "chain_b"), listener("chain_c", "Hop", "chain_c")]
    pump = await start(organism(*chain))
    async with pump.client("tester") as client:
        await client.ask(Hop(trail="x"), to="chain_a", timeout=HANG_GUARD)
    a_back = PROBE.seen[-1]
    assert a_back.listener == "chain_a"
    # chain_a's thread: the call from the client, then chain_b's answer
    assert [(e.sender, e.to, e.payload.trail) for e in a_back.meta.history] == [
        ("tester", "chain_a", "x"),
        ("chain_b", "chain_a", "x>chain_a>chain_b<chain_c<chain_b"),
    ]
    c_call = PROBE.seen[2]
    assert [(e.sender, e.to) for e in c_call.meta.history] == [("chain_b", "chain_c")]
    assert len(pump.stores.history) == 0  # forgotten with the conversation


async def test_a_broadcast_is_recorded_once_per_delivery_thread(start):
    pump = await start(organism(listener("news_a", "News", "news_a"), listener("news_b", "News", "news_b")))
    async with pump.client("tester") as client:
        await client.send(News(text="x", hops=1))  # hops=1: no re-broadcast
        await settle(pump)
    histories = [seen.meta.history for seen in PROBE.seen]
    assert len(histories) == 2
    assert all(len(history) == 1 and history[0].sender == "tester" for history in histories)
    assert {history[0].to for history in histories} == {"news_a", "news_b"}
