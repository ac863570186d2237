"""Acks, publisher dedupe and the journal in a running pump (DESIGN.md §14).

The journal's own state machine is tested in test_journal.py; here, what a user sees:
`send` returns on the ack, a resent message id is processed once, and with
`organism.journal` a unit cut off by shutdown comes back at the next start, flagged
`redelivered`, on its rebuilt conversation.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid

import pytest
import yaml

from agentserver import StreamPump, load_config
from agentserver.journal import JournalError
from agentserver.outbound import HuhError
from agentserver.sender import Accepted
from tests.organisms import PROBE, Echo
from tests.support import HANG_GUARD, assert_counters, listener, organism, settle


def journaled(*listeners: dict, path, name: str = "test-organism", **top) -> str:
    document = yaml.safe_load(organism(*listeners, name=name, **top))
    if path is not None:
        document["organism"]["journal"] = str(path)
    return yaml.safe_dump(document, sort_keys=False)


def pump_of(text: str) -> StreamPump:
    return StreamPump(load_config("test-organism.yaml", text=text))


LEDGER = listener("ledger", "Echo", "ledger")


# ------------------------------------------------------------------------------ acks
async def test_two_hundred_sends_return_on_their_acks(start):
    pump = await start(organism(LEDGER))
    async with pump.client("tester") as client:
        accepted = [await asyncio.wait_for(client.send(Echo(text=str(n)), to="ledger"), HANG_GUARD)
                    for n in range(200)]
        await settle(pump)
    assert all(isinstance(one, Accepted) for one in accepted)
    assert [one.seq for one in accepted] == list(range(1, 201))
    assert len({one.message_id for one in accepted}) == 200
    seen = {entry.meta.message_id for entry in PROBE.of("ledger")}
    assert seen == {one.message_id for one in accepted}  # the ack names the message the handler saw


async def test_a_refused_message_gets_its_huh_and_no_ack(start):
    pump = await start(organism(LEDGER))
    async with pump.client("tester") as client:
        with pytest.raises(HuhError) as refused:
            await asyncio.wait_for(client.send("<Nobody/>"), HANG_GUARD)
        assert refused.value.code == "no-route"
        after = await asyncio.wait_for(client.send(Echo(text="next"), to="ledger"), HANG_GUARD)
        await settle(pump)
        reply = await asyncio.wait_for(client.receive(), HANG_GUARD)
        assert client._inbox.empty()  # the reply, and no stray ack or <huh>
    assert (reply.kind, reply.thread_id) == ("reply", after) and after.seq == 2


async def test_a_resent_message_id_is_acked_again_and_processed_once(start):
    pump = await start(organism(LEDGER))
    message_id = str(uuid.uuid4())
    async with pump.client("tester") as client:
        first = await asyncio.wait_for(client.send(Echo(text="once"), to="ledger", message_id=message_id), HANG_GUARD)
        await settle(pump)
        again = await asyncio.wait_for(client.send(Echo(text="once"), to="ledger", message_id=message_id), HANG_GUARD)
        await settle(pump)
    assert first.message_id == again.message_id == message_id
    assert PROBE.counts["ledger"] == 1
    assert pump.counters.errored["duplicate"] == 1
    assert pump.dead_letters.recent(10) == []  # a duplicate is expected, not a dead letter


async def test_the_same_id_from_another_sender_is_another_message(start):
    pump = await start(organism(LEDGER))
    message_id = str(uuid.uuid4())
    async with pump.client("alice") as alice, pump.client("bob") as bob:
        await asyncio.wait_for(alice.send(Echo(text="a"), to="ledger", message_id=message_id), HANG_GUARD)
        await asyncio.wait_for(bob.send(Echo(text="b"), to="ledger", message_id=message_id), HANG_GUARD)
        await settle(pump)
    assert PROBE.counts["ledger"] == 2


# ------------------------------------------------------------------------------ no journal
async def test_without_a_journal_nothing_is_written(start, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pump = await start(organism(LEDGER))
    async with pump.client("tester") as client:
        await client.ask(Echo(text="x"), to="ledger", timeout=HANG_GUARD)
    assert pump.status()["journal"] is None
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ the journal
async def test_finished_work_leaves_nothing_to_replay(tmp_path):
    path = tmp_path / "journal.db"
    text = journaled(LEDGER, path=path)
    async with pump_of(text) as pump, pump.client("tester") as client:
        for n in range(20):
            await client.ask(Echo(text=str(n)), to="ledger", timeout=HANG_GUARD)
    assert pump.closed and (os.stat(path).st_mode & 0o777) == 0o600
    again = pump_of(text)
    async with again:
        await settle(again)
        assert again.status()["journal"]["replayed_at_start"] == 0
    assert PROBE.counts["ledger"] == 20


async def test_work_cut_off_by_shutdown_is_deferred_and_replayed_redelivered(tmp_path):
    path = tmp_path / "journal.db"
    text = journaled(listener("ledger", "Echo", "ledger", concurrency=2), path=path)
    PROBE.notes["ledger_hold"] = True
    first = pump_of(text)
    async with first:
        async with first.client("tester") as client:
            accepted = [await asyncio.wait_for(client.send(Echo(text=str(n)), to="ledger"), HANG_GUARD)
                        for n in range(5)]
            await asyncio.wait_for(PROBE.event("ledger-started").wait(), HANG_GUARD)
            report = await asyncio.wait_for(first.shutdown(0.2), HANG_GUARD)
    assert not report.clean and report.deferred == 5 and report.dropped == 0
    counters = first.counters
    assert counters.accepted == counters.handled + counters.errored_total + counters.deferred
    first_seen = {entry.meta.message_id: entry.meta.redelivered for entry in PROBE.of("ledger")}
    assert len(first_seen) == 2 and not any(first_seen.values())  # two ran (and were cut off), three waited

    PROBE.reset()
    PROBE.notes["ledger_hold"] = True
    second = pump_of(text)
    async with second:
        await asyncio.wait_for(PROBE.event("ledger-started").wait(), HANG_GUARD)
        assert second.status()["journal"]["replaying"] == 5  # catching up: /healthz says not ready
        PROBE.event("ledger-open").set()
        await settle(second)
        assert second.status()["journal"]["replayed_at_start"] == 5
        assert second.status()["journal"]["replaying"] == 0
        assert_counters(second)
    replayed = PROBE.of("ledger")
    assert sorted(entry.payload.text for entry in replayed) == ["0", "1", "2", "3", "4"]
    assert {entry.meta.message_id for entry in replayed} == {one.message_id for one in accepted}
    assert all(entry.meta.redelivered for entry in replayed)
    # the replies' client is gone: they are dead letters, never routed to a stranger
    letters = second.dead_letters.recent(10)
    assert len(letters) == 5 and {letter.code for letter in letters} == {"undeliverable"}

    third = pump_of(text)
    async with third:
        await settle(third)
        assert third.status()["journal"]["replayed_at_start"] == 0


async def test_a_handler_waiting_in_ask_runs_again_from_the_start(tmp_path):
    path = tmp_path / "journal.db"
    text = journaled(listener("asker", "Echo", "asker"), LEDGER, path=path)
    PROBE.notes["ledger_hold"] = True
    first = pump_of(text)
    async with first:
        async with first.client("tester") as client:
            await asyncio.wait_for(client.send(Echo(text="q"), to="asker"), HANG_GUARD)
            await asyncio.wait_for(PROBE.event("ledger-started").wait(), HANG_GUARD)
            report = await asyncio.wait_for(first.shutdown(0.2), HANG_GUARD)
    assert report.deferred >= 1
    PROBE.reset()
    second = pump_of(text)
    async with second:
        PROBE.event("ledger-open").set()
        await settle(second)
        assert_counters(second)
    asked = PROBE.of("asker")
    assert [entry.meta.redelivered for entry in asked] == [True]  # from the start: its ask is made again
    assert PROBE.counts["ledger-done"] >= 1
    # the old call's answer (if the ledger's unit came back too) is late, not a second answer
    assert second.counters.errored["late"] <= 1


async def test_dedupe_survives_a_restart(tmp_path):
    path = tmp_path / "journal.db"
    text = journaled(LEDGER, path=path)
    message_id = str(uuid.uuid4())
    async with pump_of(text) as pump, pump.client("tester") as client:
        await client.send(Echo(text="once"), to="ledger", message_id=message_id)
        await settle(pump)
    async with pump_of(text) as pump, pump.client("tester") as client:
        again = await client.send(Echo(text="once"), to="ledger", message_id=message_id)
        await settle(pump)
    assert again.message_id == message_id and PROBE.counts["ledger"] == 1


async def test_units_for_a_listener_that_is_gone_become_dead_letters(tmp_path):
    path = tmp_path / "journal.db"
    PROBE.notes["ledger_hold"] = True
    first = pump_of(journaled(LEDGER, listener("echo", "Echo", "echo"), path=path))
    async with first:
        async with first.client("tester") as client:
            await client.send(Echo(text="x"), to="ledger")
            await asyncio.wait_for(PROBE.event("ledger-started").wait(), HANG_GUARD)
            await first.shutdown(0.2)
    second = pump_of(journaled(listener("echo", "Echo", "echo"), path=path))
    async with second:
        await settle(second)
        letters = second.dead_letters.recent(10)
    # the unit is refused (its listener is gone), and its <huh> cannot reach the client that sent it
    assert [letter.code for letter in letters] == ["no-route", "undeliverable"]


def test_a_journal_of_another_organism_is_refused(tmp_path):
    path = tmp_path / "journal.db"
    pump_of(journaled(LEDGER, path=path, name="first"))
    with pytest.raises(JournalError, match=str(path)):
        pump_of(journaled(LEDGER, path=path, name="second"))


def test_a_damaged_journal_is_refused_and_kept(tmp_path):
    path = tmp_path / "journal.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    with pytest.raises(JournalError, match=str(path)):
        pump_of(journaled(LEDGER, path=path))
    assert path.exists() and path.stat().st_size == 4096 + 16


def test_a_file_that_is_no_journal_is_refused(tmp_path):
    path = tmp_path / "journal.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE mine (x)")
    with pytest.raises(JournalError, match=str(path)):
        pump_of(journaled(LEDGER, path=path))
