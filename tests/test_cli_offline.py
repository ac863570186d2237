"""The CLI without a server: help, version, exit codes, malformed input, journal inspect
(issue 11). Verbs run in-process through `main(argv)`."""

import asyncio
import json
import sqlite3
from importlib.metadata import version
from pathlib import Path

import pytest

from agentserver.cli import EXIT_CODES, EXIT_CONFIG, EXIT_FAILED, main
from agentserver.journal import Journal, Record

REPO = Path(__file__).resolve().parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse: --help, --version, usage errors
        code = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- help, version, usage
def test_a_bare_call_prints_the_help_with_the_exit_codes(capsys):
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    assert "VERB" in out and "ask" in out and "journal" in out
    assert EXIT_CODES in out and "the installed\n'agentserver' command" in out


def test_version_prints_the_package_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"agentserver {version('agentserver')}"


@pytest.mark.parametrize("verb", ["run", "send", "ask", "cancel", "check", "schema", "status", "deadletters", "journal"])
def test_every_verb_lists_the_same_exit_codes(capsys, verb):
    code, out, _ = run(capsys, verb, "--help")
    assert code == 0 and EXIT_CODES in out and "example:" in out


def test_a_usage_error_exits_1_not_2_which_means_timeout(capsys):
    code, _, err = run(capsys, "no-such-verb")
    assert code == EXIT_FAILED and "invalid choice" in err
    code, _, err = run(capsys, "send", "--to", "echo", "--thread", "not-a-uuid", "<Echo><Text>x</Text></Echo>")
    assert code == EXIT_FAILED and "'not-a-uuid' is not a UUID" in err and "Traceback" not in err


# ---------------------------------------------------------------- malformed input
@pytest.mark.parametrize("verb", ["ask", "send"])
@pytest.mark.parametrize("xml", ["<Echo><Text>x</Echo>", "not xml at all", "<A/><B/>", ""])
def test_malformed_xml_is_one_line_and_exit_1(capsys, tmp_path, verb, xml):
    code, out, err = run(capsys, verb, "--socket", str(tmp_path / "none.sock"), "--to", "echo", xml)
    assert code == EXIT_FAILED and out == ""
    assert err.startswith("not a payload: ") and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------- configuration errors: exit 4
def test_check_and_schema_exit_4_on_a_broken_config(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("organism:\n  name: x\n  colour: blue\nlisteners: []\n")
    code, _, err = run(capsys, "check", str(broken))
    assert code == EXIT_CONFIG and f"{broken}:3: unknown key 'colour'" in err
    code, _, _ = run(capsys, "schema", str(broken), "greeter")
    assert code == EXIT_CONFIG


def test_client_verbs_exit_4_on_a_broken_config(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("organism:\n  name: x\n  colour: blue\nlisteners: []\n")
    for argv in (("status", "--config", str(broken)), ("ask", "--config", str(broken), "<Echo><Text>x</Text></Echo>")):
        code, _, err = run(capsys, *argv)
        assert code == EXIT_CONFIG and "unknown key 'colour'" in err, argv


# ---------------------------------------------------------------- journal inspect
def make_journal(path: Path) -> None:
    async def write() -> None:
        journal = Journal(path, "inspected")
        journal.start()
        journal.conversation("c1", "alice", "thread-1", 1_000_000.0)
        for kind in ("external", "listener", "listener"):
            seq = journal.new_seq()
            journal.append(Record(seq, "c1", f"m{seq}", kind, "alice", b"<x/>", {}))
        done = journal.new_seq()
        journal.append(Record(done, "c1", "gone", "external", "alice", b"<x/>", {}))
        journal.done(done)
        journal.seen("alice", "m1", 2_000_000.0)
        await journal.durable()
        await journal.close()

    asyncio.run(write())


def test_journal_inspect_shows_what_the_file_holds_without_changing_it(capsys, tmp_path):
    path = tmp_path / "journal.sqlite"
    make_journal(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    code, out, err = run(capsys, "journal", "inspect", str(path), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["organism"] == "inspected" and report["schema_version"] == "1" and report["schema_version_supported"]
    assert report["units_not_done"] == 3 and report["units_by_kind"] == {"external": 1, "listener": 2}
    assert report["open_conversations"] == 1 and report["dedupe_ids"] == 1
    assert report["oldest_unit"]["seq"] == 1 and report["oldest_unit"]["conversation_started"].startswith("1970-01-12T13:46:40")
    assert report["dedupe_newest"].startswith("1970-01-24T03:33:20") and report["bytes"] > 0

    code, out, _ = run(capsys, "journal", "inspect", str(path))
    assert code == 0
    assert "organism: inspected" in out and "units not done: 3 (external 1, listener 2)" in out
    assert "open conversations: 1" in out and "dedupe ids remembered: 1" in out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # read-only: nothing written, nothing created


def test_journal_inspect_refuses_missing_damaged_and_foreign_files(capsys, tmp_path):
    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"this is not a database" * 100)
    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    for path, words in ((tmp_path / "missing.sqlite", "no such journal file"),
                        (damaged, "not a journal SQLite can read"),
                        (foreign, "not an agentserver journal")):
        code, out, err = run(capsys, "journal", "inspect", str(path))
        assert code == EXIT_CONFIG and out == "", path
        assert err.startswith(f"{path}: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "missing.sqlite").exists()


def test_journal_inspect_reads_a_journal_a_server_holds_open(capsys, tmp_path):
    path = tmp_path / "journal.sqlite"

    async def scenario() -> tuple[int, str]:
        journal = Journal(path, "busy")
        journal.start()
        journal.append(Record(journal.new_seq(), "c1", "m1", "external", "alice", b"<x/>", {}))
        await journal.durable()
        try:
            assert Path(f"{path}-wal").exists()
            code = await asyncio.to_thread(main, ["journal", "inspect", str(path), "--json"])
            return code, capsys.readouterr().out
        finally:
            await journal.close()

    code, out = asyncio.run(scenario())
    assert code == 0 and json.loads(out)["units_not_done"] == 1


def test_check_leaves_the_journal_file_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "organism.yaml").write_text(
        "organism:\n  name: looker\n  journal: state/journal.db\nlisteners:\n"
        "  - name: echo\n    payload_class: tests.organisms.Echo\n    handler: tests.organisms.echo\n")
    from agentserver.cli import main

    assert main(["check", "organism.yaml"]) == 0
    assert not (tmp_path / "state").exists()
