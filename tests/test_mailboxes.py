"""mailboxes.py: sessions are identities; detached sessions get nothing; one ack per envelope."""

import pytest

from agentserver.message_bus.dedupe import Dedupe
from agentserver.message_bus.mailboxes import Mailboxes, Session, acknowledge
from agentserver.message_bus.message_state import FrameAck, MessageState, Origin, StepError
from agentserver.outbound import Outbound, OutboundKind

FRAME = Outbound(OutboundKind.REPLY, "t", "echo", b"<x/>")


def test_a_session_delivers_to_its_mailbox_until_detached():
    got = []
    boxes = Mailboxes()
    session = boxes.attach("alice", lambda o: got.append(o) or True)
    assert session.deliver(FRAME) and got == [FRAME]
    boxes.detach(session)
    assert not session.deliver(FRAME) and got == [FRAME] and not session.attached


def test_a_full_or_broken_mailbox_is_a_failed_delivery_not_a_crash():
    assert not Session(1, "a", lambda o: False).deliver(FRAME)
    assert not Session(2, "b", lambda o: 1 / 0).deliver(FRAME)


def test_a_name_is_held_by_one_session_at_a_time():
    boxes = Mailboxes()
    first = boxes.attach("alice", lambda o: True)
    with pytest.raises(ValueError, match="already attached"):
        boxes.attach("alice", lambda o: True)
    boxes.detach(first)
    second = boxes.attach("alice", lambda o: True)
    assert second is not first and second.id != first.id and boxes.named("alice") is second
    boxes.detach(first)  # the old session going again does not unseat the new one
    assert boxes.named("alice") is second and not first.deliver(FRAME)


def test_forbidden_names_are_refused():
    boxes = Mailboxes(forbidden=lambda name: name == "echo")
    with pytest.raises(ValueError, match="reserved"):
        boxes.attach("echo", lambda o: True)
    assert len(boxes) == 0


def test_listing_is_sorted_names():
    boxes = Mailboxes()
    for name in ("carol", "alice", "bob"):
        boxes.attach(name, lambda o: True)
    assert list(boxes) == ["alice", "bob", "carol"] and len(boxes) == 3
    assert boxes.named(None) is None and boxes.named("dave") is None


def _state(session, *, seq=3, client_id=True):
    return MessageState(raw=b"", origin=Origin.external("alice"), session=session, thread_ref="t1",
                        message_id="m1", client_id=client_id, ack=FrameAck(seq))


def test_acknowledge_sends_one_ack_when_durable_and_remembers_the_id():
    got, pending = [], []
    session = Mailboxes().attach("alice", lambda o: got.append(o) or True)
    dedupe = Dedupe(lambda: 0.0)
    state = _state(session)
    acknowledge(state, dedupe, lambda s, send: pending.append(send))
    acknowledge(state, dedupe, lambda s, send: pending.append(send))  # once only
    assert got == [] and len(pending) == 1  # not before it is durable
    pending[0]()
    assert [(o.kind, o.seq, o.message, o.thread_id) for o in got] == [(OutboundKind.ACK, 3, "m1", "t1")]
    assert dedupe.seen("alice", "m1")


def test_acknowledge_remembers_neither_pump_ids_nor_duplicates():
    session = Mailboxes().attach("alice", lambda o: True)
    dedupe = Dedupe(lambda: 0.0)
    acknowledge(_state(session, client_id=False), dedupe, lambda s, send: send())
    duplicate = _state(session)
    duplicate.error = StepError("duplicate", "again", "envelope")
    acknowledge(duplicate, dedupe, lambda s, send: send())
    assert len(dedupe) == 0 and duplicate.ack.done


def test_no_ack_without_a_numbered_envelope():
    sent = []
    acknowledge(MessageState(raw=b"", origin=Origin.external("a")), Dedupe(lambda: 0.0), lambda s, f: sent.append(f))
    assert sent == []
