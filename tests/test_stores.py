"""stores.py: the Stores bundle keeps threads, history and todos in step; sweep forgets idle conversations."""

from agentserver.limits import Limits
from agentserver.message_bus.context_buffer import ContextBuffer
from agentserver.message_bus.message_state import HistoryEntry
from agentserver.message_bus.stores import Stores
from agentserver.message_bus.thread_registry import ThreadRegistry
from agentserver.message_bus.todo_registry import TodoRegistry
from agentserver.primitives import TodoComplete, TodoUntil
from tests.organisms import Echo, Report


def entry(root_tag="Echo", sender="alice", payload=None):
    return HistoryEntry(sender=sender, to="echo", root_tag=root_tag, payload=payload or Echo(text="hi"), timestamp=1.0)


def test_in_memory_takes_its_bounds_from_limits():
    stores = Stores.in_memory(Limits(thread_idle_s=5.0))
    assert stores.idle_s == 5.0 and stores.journal is None
    assert len(stores.threads) == len(stores.history) == len(stores.todos) == 0


def test_record_touches_the_conversation_keeps_history_and_raises_todos():
    stores = Stores.in_memory(Limits())
    thread = stores.threads.extend(stores.threads.open("alice", "t1", now=0.0), "agent")
    stores.apply_todo(thread, TodoUntil(todo_id="x", wait_for="Report"), "agent")
    stores.record(thread, entry(), now=10.0)
    assert stores.history.history(thread.id) == (entry(),)
    assert thread.conversation.last_active == 10.0
    assert stores.todos.nudge_for(thread.id, "agent") == ""
    stores.record(thread, entry("Report", "worker", Report(text="done")), now=11.0)
    assert "todo 'x': Report from worker has arrived" in stores.todos.nudge_for(thread.id, "agent")
    stores.apply_todo(thread, TodoComplete(todo_id="x"), "agent")
    assert len(stores.todos) == 0


def test_forget_drops_the_conversation_its_threads_history_and_todos():
    stores = Stores.in_memory(Limits())
    root = stores.threads.open("alice", "t1")
    child = stores.threads.extend(root, "agent")
    stores.record(child, entry(), now=1.0)
    stores.apply_todo(child, TodoUntil(todo_id="x", wait_for="Report"), "agent")
    stores.forget(root.conversation)
    assert stores.threads.get(child.id) is None and stores.threads.get(root.id) is None
    assert stores.history.history(child.id) == () and len(stores.todos) == 0
    assert stores.threads.conversations == 0


def test_sweep_forgets_conversations_idle_longer_than_idle_s():
    stores = Stores.in_memory(Limits(thread_idle_s=10.0))
    old = stores.threads.open("alice", "old", now=0.0)
    stores.sweep(5.0)
    fresh = stores.threads.open("alice", "fresh", now=5.0)
    stores.sweep(11.0)
    assert stores.threads.get(old.id) is None and stores.threads.get(fresh.id) is fresh
    stores.sweep(15.5)  # now fresh has been idle for 10.5 s too
    assert stores.threads.get(fresh.id) is None


def test_sweep_runs_at_most_once_a_second():
    stores = Stores.in_memory(Limits(thread_idle_s=1.0))
    stores.sweep(100.0)
    thread = stores.threads.open("alice", "t", now=98.5)  # idle 1.5 s at 100.0
    stores.sweep(100.5)  # too soon after the last sweep
    assert stores.threads.get(thread.id) is thread
    stores.sweep(101.5)
    assert stores.threads.get(thread.id) is None


class Recorder:
    """Stands in for agentserver.journal.Journal: what Stores writes ahead to it."""

    def __init__(self):
        self.written = []

    def history(self, key, thread_id, record):
        self.written.append(("history", key, thread_id, record))

    def todo(self, key, thread_id, record):
        self.written.append(("todo", key, thread_id, record))


def test_with_a_journal_history_and_todos_are_written_ahead():
    journal = Recorder()
    stores = Stores(ThreadRegistry(), ContextBuffer(), TodoRegistry(), journal=journal)
    thread = stores.threads.open("alice", "t1")
    stores.record(thread, entry(), now=1.0)
    stores.apply_todo(thread, TodoUntil(todo_id="x", wait_for="Report"), "agent")
    (kind, key, thread_id, record), (kind2, _, _, todo) = journal.written
    assert (kind, key, thread_id, kind2) == ("history", thread.conversation.key, thread.id, "todo")
    assert record["payload"] == "<Echo><Text>hi</Text></Echo>" and record["root_tag"] == "Echo"
    assert todo == {"issuer": "agent", "type": "TodoUntil", "todo_id": "x", "wait_for": "Report",
                    "from_listener": "", "note": ""}
