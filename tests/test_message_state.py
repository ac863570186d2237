"""message_state.py: the first error wins; fork shares the holds; release gives them back once; Ticket."""

from agentserver.codes import ErrorCode
from agentserver.message_bus.message_state import FrameAck, HandlerResponse, MessageState, Origin, Ticket
from agentserver.message_bus.thread_registry import ThreadRegistry


def conversation():
    return ThreadRegistry().open("alice", "t1").conversation


def test_a_ticket_releases_when_its_last_part_drops():
    freed = []
    ticket = Ticket(lambda: freed.append(1))
    ticket.add()
    ticket.drop()
    assert freed == [] and ticket.count == 1
    ticket.drop()
    assert freed == [1]


def test_the_first_failure_is_the_one_kept():
    state = MessageState(raw=b"<x/>", origin=Origin.external("a"))
    assert state.fail(ErrorCode.MALFORMED, "first", "repair") is state
    state.fail(ErrorCode.NO_ROUTE, "second", "routing")
    assert (state.error.code, state.error.reason, state.error.step) == (ErrorCode.MALFORMED, "first", "repair")


def test_fork_copies_the_fields_applies_changes_and_shares_every_hold():
    freed = []
    talk = conversation()
    state = MessageState(raw=b"<x/>", origin=Origin.external("a"), sender="a", message_id="m", client_id=True,
                         ticket=Ticket(lambda: freed.append("pipeline")), intake_ticket=Ticket(lambda: freed.append("intake")),
                         ack=FrameAck(1))
    state.bind(talk)
    child = state.fork(to="echo", root_tag="Echo")
    assert (child.sender, child.message_id, child.client_id, child.ack) == ("a", "m", True, state.ack)
    assert (child.to, child.root_tag, state.to) == ("echo", "Echo", None)
    assert state.ticket.count == 2 and state.intake_ticket.count == 2 and talk.pending == 2
    assert child.ticket is state.ticket and child.conversation is talk

    assert state.release() is None  # the child still holds everything
    assert freed == [] and state.ticket is None
    assert child.release() is talk  # the last unit of the conversation ended
    assert sorted(freed) == ["intake", "pipeline"] and talk.pending == 0


def test_a_fork_does_not_carry_settled_or_asking():
    state = MessageState(raw=b"", origin=Origin.external("a"), settled=True, asking=2)
    child = state.fork()
    assert not child.settled and child.asking == 0


def test_release_happens_once():
    freed = []
    talk = conversation()
    state = MessageState(raw=b"", origin=Origin.external("a"), ticket=Ticket(lambda: freed.append(1)))
    state.bind(talk)
    state.bind(conversation())  # bound once: a second conversation is ignored
    assert state.conversation is talk
    assert state.release() is talk and state.release() is None
    assert freed == [1] and talk.pending == 0


def test_leaving_the_pipeline_and_the_intake_are_separate_and_idempotent():
    freed = []
    state = MessageState(raw=b"", origin=Origin.external("a"), ticket=Ticket(lambda: freed.append("pipeline")),
                         intake_ticket=Ticket(lambda: freed.append("intake")))
    state.leave_pipeline()
    state.leave_pipeline()
    assert freed == ["pipeline"]
    state.release()
    assert freed == ["pipeline", "intake"]


def test_respond_answers_the_caller():
    assert HandlerResponse.respond("x") == HandlerResponse(payload="x", to=None, is_response=True)
    assert not HandlerResponse("x", to="echo").is_response
