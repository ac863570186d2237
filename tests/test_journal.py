"""The journal's storage: written in order, group-committed, replayable, bounded, and
refusing files that are not its own (DESIGN §14)."""

import asyncio
import os
import queue
import sqlite3
import stat

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agentserver.journal import Journal, JournalError, Record


def record(journal: Journal, conversation: str = "c1", size: int = 10) -> Record:
    seq = journal.new_seq()
    return Record(seq, conversation, f"m{seq}", "external", "tester", b"x" * size, {"thread": f"t{seq}"})


def drain(journal: Journal) -> list:
    ops = []
    while True:
        try:
            op = journal._ops.get_nowait()
        except queue.Empty:
            return ops
        if op is not None:
            ops.append(op)


# ---------------------------------------------------------------------- the state machine
class JournalMachine(RuleBasedStateMachine):
    """Against a model: appends, finishes (done + children in one transaction), dones and
    forgets are queued; some prefix of them is committed; a crash loses the rest; what a
    restart loads is exactly the committed pending units, in order."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="journal-model-")
        self.path = os.path.join(self.dir, "journal.sqlite")
        self.journal = Journal(self.path, "model")
        self.queued: list = []  # ops not yet committed, in order
        self.model: dict[int, Record] = {}  # committed pending units
        self.pending_view: dict[int, Record] = {}  # pending units if everything queued were committed

    def _queue(self) -> None:
        self.queued.extend(drain(self.journal))

    @rule(conversation=st.sampled_from(["a", "b"]))
    def append(self, conversation):
        r = record(self.journal, conversation)
        self.journal.append(r)
        self.pending_view[r.seq] = r
        self._queue()

    @precondition(lambda self: self.pending_view)
    @rule(data=st.data(), children=st.integers(0, 2))
    def finish(self, data, children):
        seq = data.draw(st.sampled_from(sorted(self.pending_view)))
        conversation = self.pending_view.pop(seq).conversation
        made = [record(self.journal, conversation) for _ in range(children)]
        self.journal.finish(seq, made)
        self.pending_view.update((r.seq, r) for r in made)
        self._queue()

    @precondition(lambda self: self.pending_view)
    @rule(data=st.data())
    def done(self, data):
        seq = data.draw(st.sampled_from(sorted(self.pending_view)))
        del self.pending_view[seq]
        self.journal.done(seq)
        self._queue()

    @rule(conversation=st.sampled_from(["a", "b"]))
    def forget(self, conversation):
        self.journal.forget(conversation)
        self.pending_view = {s: r for s, r in self.pending_view.items() if r.conversation != conversation}
        self._queue()

    @precondition(lambda self: self.queued)
    @rule(data=st.data())
    def commit(self, data):
        n = data.draw(st.integers(1, len(self.queued)))
        batch, self.queued = self.queued[:n], self.queued[n:]
        self.journal.apply(batch)
        for op in batch:
            if op[0] == "append":
                self.model[op[1].seq] = op[1]
            elif op[0] == "finish":
                self.model.pop(op[1], None)
                self.model.update((r.seq, r) for r in op[2])
            elif op[0] == "done":
                self.model.pop(op[1], None)
            elif op[0] == "forget":
                self.model = {s: r for s, r in self.model.items() if r.conversation != op[1]}

    @rule()
    def crash_and_restart(self):
        self.journal._db.close()  # what was not committed is lost with the process
        self.journal = Journal(self.path, "model")
        self.queued = []
        self.pending_view = dict(self.model)
        loaded = self.journal.load().units
        assert [r.seq for r in loaded] == sorted(self.model)
        assert all(r == self.model[r.seq] for r in loaded)
        assert self.journal.next_seq > max(self.model, default=0)

    @invariant()
    def seqs_only_grow(self):
        assert all(seq < self.journal.next_seq for seq in self.pending_view)

    def teardown(self):
        self.journal._db.close()


TestJournalMachine = JournalMachine.TestCase
TestJournalMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# ---------------------------------------------------------------------- the writer
async def test_writes_are_group_committed_and_durable_waits_for_them(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", "org")
    journal.start()
    for _ in range(1_000):
        r = record(journal)
        journal.append(r)
        journal.done(r.seq)
    kept = record(journal)
    journal.append(kept)
    await asyncio.wait_for(journal.durable(), 30)
    assert journal.lag == 0 and journal.commits < 1_000  # many writes per transaction
    await journal.close()
    again = Journal(tmp_path / "j.sqlite", "org")
    assert [r.seq for r in again.load().units] == [kept.seq]
    await again.close()


async def test_finished_entries_are_compacted_so_the_file_stays_small(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", "org")
    journal.start()
    for n in range(20_000):  # 20,000 messages of 2 KiB, each its own finished conversation
        conversation = f"c{n}"
        journal.conversation(conversation, "client", f"t{n}", 0.0)
        journal.thread(conversation, f"th{n}", ("client", "echo"), None, f"call{n}")
        r = record(journal, conversation, size=2048)
        journal.append(r)
        journal.history(conversation, f"th{n}", {"sender": "client", "payload": "x" * 100})
        journal.done(r.seq)
        journal.forget(conversation)
        if n % 500 == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(journal.durable(), 60)
    sizes = journal.size()
    await journal.close()
    assert sizes["bytes"] + sizes["wal_bytes"] < 20 * 2**20, sizes
    assert stat.S_IMODE(os.stat(tmp_path / "j.sqlite").st_mode) == 0o600


async def test_a_writer_that_fails_fails_the_waiters_and_every_later_write(tmp_path):
    journal = Journal(tmp_path / "j.sqlite", "org")
    journal.start()
    r = record(journal)
    journal.append(r)
    journal.append(r)  # the same seq twice: the transaction fails
    with pytest.raises(JournalError, match="stopped writing"):
        await asyncio.wait_for(journal.durable(), 30)
    with pytest.raises(JournalError):
        journal.append(record(journal))
    await journal.close()


# ---------------------------------------------------------------------- refusals
def test_a_damaged_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not a database, it was damaged" * 100)
    with pytest.raises(JournalError) as refused:
        Journal(path, "org")
    assert str(path) in str(refused.value) and "move it away" in str(refused.value)


def test_a_journal_of_another_organism_or_version_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path, "first")._db.close()
    with pytest.raises(JournalError, match="belongs to organism 'first'"):
        Journal(path, "second")
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="schema version '0'"):
        Journal(path, "first")
