"""Todo watchers: raised by a later message on the agent's thread, shown in its next nudge."""

import pytest

from agentserver.message_bus.todo_registry import TodoRegistry, TooManyTodos
from tests.organisms import PROBE, Task
from tests.support import HANG_GUARD, listener, organism


def test_a_watcher_is_raised_by_a_matching_message_and_cleared_by_complete():
    todos = TodoRegistry()
    todos.add("t", "planner", "w1", "JobDone", from_listener="worker", note="first job")
    assert todos.nudge_for("t", "planner") == ""
    assert todos.observe("t", "JobDone", "someone-else") == []  # wrong sender
    assert todos.observe("t", "Other", "worker") == []  # wrong payload
    assert todos.observe("other-thread", "JobDone", "worker") == []
    (raised,) = todos.observe("t", "JobDone", "worker")
    assert raised.raised_by == "JobDone from worker"
    nudge = todos.nudge_for("t", "planner")
    assert "w1" in nudge and "JobDone from worker" in nudge and "first job" in nudge and "TodoComplete" in nudge
    assert todos.nudge_for("t", "worker") == ""  # only the issuer is nudged
    assert todos.complete("t", "planner", "w1") and not todos.complete("t", "planner", "w1")
    assert todos.nudge_for("t", "planner") == "" and len(todos) == 0


def test_watchers_are_bounded_per_thread_and_die_with_their_thread():
    todos = TodoRegistry(max_per_thread=2)
    todos.add("t", "a", "1", "X")
    todos.add("t", "a", "2", "X")
    todos.add("t", "a", "2", "Y")  # replacing one is fine
    with pytest.raises(TooManyTodos):
        todos.add("t", "a", "3", "X")
    todos.forget(["t"])
    assert len(todos) == 0


async def test_a_todo_raised_by_a_later_message_shows_in_the_agents_next_nudge(start):
    pump = await start(
        organism(
            listener("planner", "Task", "planner", agent=True, peers=["worker"]),
            listener("worker", "Job", "worker"),
        )
    )
    async with pump.client("tester") as client:
        reply = await client.ask(Task(goal="plan"), to="planner", timeout=HANG_GUARD)
    assert reply.payload.text == "second done"
    task, first_done, second_done = PROBE.of("planner")
    # the Task: nothing raised yet; it returned TodoUntil + a forward to the worker
    assert task.meta.todo_nudge == ""
    # the worker's reply arrived on the planner's thread: the todo is raised
    assert first_done.payload.token == "first done"
    assert "'t1'" in first_done.meta.todo_nudge and "JobDone from worker" in first_done.meta.todo_nudge
    assert "the first job" in first_done.meta.todo_nudge
    # it answered with TodoComplete (and another job): the next nudge is empty again
    assert second_done.payload.token == "second done"
    assert second_done.meta.todo_nudge == ""
    assert task.meta.thread_id == first_done.meta.thread_id == second_done.meta.thread_id
    # the primitives were applied, not sent anywhere
    assert pump.counters.errored_total == 0 and len(pump.stores.todos) == 0
