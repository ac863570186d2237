"""The journal: what was accepted survives a crash (DESIGN.md §14).

A SQLite file (WAL mode, `synchronous=FULL`) that holds, for one organism, exactly
what a restart needs:

- `units`: every unit not yet done (an external frame as it arrived, or an envelope
  the pump built), in acceptance order (`seq`), with what it takes to rebuild it;
- `threads`, `history`, `todos`: the open conversations' call trees, the messages
  delivered on their threads, the todo operations on them;
- `conversations`: the open conversations, with their client and the id it used;
- `seen`: recently accepted (sender, message id) pairs, so that a client resending a
  message whose ack it lost is acked again and the message is not processed twice.

A unit is written before it is processed and deleted when it is done (so the file
holds only open work: bounded under endless traffic), and everything of a conversation
is deleted when the conversation ends. Writes are queued (`Journal.append`, `finish`,
`done`, ...: they never block) and one writer thread applies them in order, many per
transaction (group commit: one fsync for many units). `durable()` waits until what
was queued so far is on disk; processing never waits for it, only acks do.

`Journal.open` refuses, with the path and what to do, a file that is damaged, belongs
to another organism, or has another schema version. The file (and its WAL) is mode 0600.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["Journal", "JournalError", "Record", "Snapshot", "SCHEMA_VERSION", "WriteAhead", "coalesce", "fold", "KEYED"]

log = logging.getLogger("agentserver.journal")

SCHEMA_VERSION = "1"
BATCH = 2_000  # most queued operations applied in one transaction
SEEN_WINDOW_S = 600.0  # how long an accepted (sender, message id) is remembered for dedupe
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    seq INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    message_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    envelope BLOB NOT NULL,
    context TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS units_by_conversation ON units(conversation);
CREATE TABLE IF NOT EXISTS conversations (
    key TEXT PRIMARY KEY, client TEXT NOT NULL, external_id TEXT, started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS threads (
    id TEXT PRIMARY KEY, conversation TEXT NOT NULL, chain TEXT NOT NULL, parent TEXT, call_id TEXT
);
CREATE INDEX IF NOT EXISTS threads_by_conversation ON threads(conversation);
CREATE TABLE IF NOT EXISTS history (
    n INTEGER PRIMARY KEY, conversation TEXT NOT NULL, thread TEXT NOT NULL, entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_conversation ON history(conversation);
CREATE TABLE IF NOT EXISTS todos (
    n INTEGER PRIMARY KEY, conversation TEXT NOT NULL, thread TEXT NOT NULL, op TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS todos_by_conversation ON todos(conversation);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY, conversation TEXT NOT NULL, thread TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    sender TEXT NOT NULL, message_id TEXT NOT NULL, time REAL NOT NULL, PRIMARY KEY (sender, message_id)
);
"""


class JournalError(Exception):
    """The journal cannot be used; the message names the file and what to do."""


@dataclass(slots=True)
class Record:
    """One journaled unit: an external frame, or an envelope the pump built."""

    seq: int
    conversation: str  # the conversation's key
    message_id: str
    kind: str  # "external" | "listener" | "system"
    sender: str
    envelope: bytes
    context: dict[str, Any] = field(default_factory=dict)  # what it takes to rebuild the unit


@dataclass(slots=True)
class Snapshot:
    """What a restart finds: the units to replay (in order) and the open conversations."""

    units: list[Record]
    conversations: list[dict[str, Any]]  # key, client, external_id, started
    threads: list[dict[str, Any]]  # id, conversation, chain (list), parent, call_id; parents first
    history: list[tuple[str, str, dict[str, Any]]]  # (conversation, thread, entry), in order
    todos: list[tuple[str, str, dict[str, Any]]]  # (conversation, thread, op), in order
    calls: list[tuple[str, str, str]]  # awaited calls (meta.ask): (conversation, call id, the asker's thread)
    seen: dict[tuple[str, str], float]  # (sender, message id) -> when


class WriteAhead:
    """What every journal does the same: operations queued in order and numbered, and who
    waits for which number to be kept (`durable`, `when_durable`). Where they are kept is
    the subclass's: a SQLite file (`Journal`), or JetStream (agentserver.transport)."""

    path: Any

    def __init__(self, next_seq: int = 1) -> None:
        self.next_seq = next_seq
        self._ops: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._queued = 0  # operations queued so far (their numbers: 1, 2, ...)
        self._committed = 0  # operations kept
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._callbacks: list[tuple[int, Callable[[], object]]] = []  # (write, what to call once it is kept)
        self.failure: BaseException | None = None  # what stopped the writer, if anything did
        self.commits = 0

    # -- what each kind of journal does its own way -------------------------------------
    def load(self) -> Snapshot:
        """What was not done last time (read before anything is written)."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the writer."""
        raise NotImplementedError

    async def close(self) -> None:
        """Keep what is queued, stop the writer."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- writing: queued, applied in order by the writer --------------------------------
    def new_seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def append(self, record: Record) -> int:
        """Queue a new unit; returns the number of this write (for `durable`)."""
        return self._put(("append", record))

    def finish(self, seq: int, children: Iterable[Record]) -> int:
        """A unit is done and left these new units: one transaction, so a crash keeps both or neither."""
        return self._put(("finish", seq, tuple(children)))

    def done(self, seq: int) -> int:
        return self._put(("done", seq))

    def conversation(self, key: str, client: str, external_id: str | None, started: float) -> int:
        return self._put(("conversation", key, client, external_id, started))

    def thread(self, conversation: str, thread_id: str, chain: tuple[str, ...], parent: str | None,
               call_id: str | None) -> int:
        return self._put(("thread", conversation, thread_id, json.dumps(list(chain)), parent, call_id))

    def history(self, conversation: str, thread_id: str, entry: dict[str, Any]) -> int:
        return self._put(("history", conversation, thread_id, json.dumps(entry)))

    def todo(self, conversation: str, thread_id: str, op: dict[str, Any]) -> int:
        return self._put(("todo", conversation, thread_id, json.dumps(op)))

    def awaited(self, conversation: str, call_id: str, thread_id: str) -> int:
        """A handler awaits call `call_id` (meta.ask): after a restart its answer is late."""
        return self._put(("awaited", conversation, call_id, thread_id))

    def forget(self, conversation: str) -> int:
        """The conversation ended: everything of it goes (compaction)."""
        return self._put(("forget", conversation))

    def seen(self, sender: str, message_id: str, when: float) -> int:
        return self._put(("seen", sender, message_id, when))

    def _put(self, op: tuple[Any, ...]) -> int:
        if self.failure is not None:
            raise JournalError(f"{self.path}: the journal stopped writing: {self.failure}")
        self._queued += 1
        self._ops.put(op)
        return self._queued

    @property
    def lag(self) -> int:
        """Writes queued and not yet on disk."""
        return self._queued - self._committed

    def when_durable(self, write: int, then: Callable[[], object]) -> None:
        """Call `then` (on the event loop) once write number `write` is on disk."""
        if self._committed >= write:
            then()
        else:
            self._callbacks.append((write, then))

    async def durable(self, write: int | None = None) -> None:
        """Wait until write number `write` (default: everything queued so far) is on disk."""
        target = self._queued if write is None else write
        if self._committed >= target:
            return
        if self.failure is not None:
            raise JournalError(f"{self.path}: the journal stopped writing: {self.failure}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    def _wake(self, error: BaseException | None) -> None:
        committed = self._committed
        if self._callbacks and error is None:
            due = [then for target, then in self._callbacks if target <= committed]
            self._callbacks = [(target, then) for target, then in self._callbacks if target > committed]
            for then in due:
                try:
                    then()
                except Exception:  # a callback must not stop the others
                    log.exception("journal %s: a durability callback failed", self.path)
        still = []
        for target, future in self._waiters:
            if future.done():
                continue
            if error is not None:
                future.set_exception(JournalError(f"{self.path}: the journal stopped writing: {error}"))
            elif target <= committed:
                future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still


class Journal(WriteAhead):
    """The SQLite journal of `organism.journal`."""

    def __init__(self, path: str | os.PathLike[str], organism: str, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.organism = organism
        self._db = _connect(self.path, organism, synchronous)
        super().__init__((self._db.execute("SELECT max(seq) FROM units").fetchone()[0] or 0) + 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- reading, at start (before the writer runs) --------------------------------
    def load(self) -> Snapshot:
        db = self._db
        units = [Record(seq, conversation, message_id, kind, sender, bytes(envelope), json.loads(context))
                 for seq, conversation, message_id, kind, sender, envelope, context in
                 db.execute("SELECT seq, conversation, message_id, kind, sender, envelope, context FROM units ORDER BY seq")]
        conversations = [dict(key=k, client=c, external_id=e, started=s)
                         for k, c, e, s in db.execute("SELECT key, client, external_id, started FROM conversations")]
        threads = [dict(id=i, conversation=c, chain=json.loads(ch), parent=p, call_id=call)
                   for i, c, ch, p, call in db.execute("SELECT id, conversation, chain, parent, call_id FROM threads")]
        threads.sort(key=lambda t: len(t["chain"]))  # parents before children
        history = [(c, t, json.loads(e)) for c, t, e in db.execute("SELECT conversation, thread, entry FROM history ORDER BY n")]
        todos = [(c, t, json.loads(o)) for c, t, o in db.execute("SELECT conversation, thread, op FROM todos ORDER BY n")]
        calls = [(c, i, t) for i, c, t in db.execute("SELECT call_id, conversation, thread FROM calls")]
        seen = {(s, m): when for s, m, when in db.execute("SELECT sender, message_id, time FROM seen")}
        return Snapshot(units, conversations, threads, history, todos, calls, seen)

    # -- the writer ------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (owned by this journal; `close()` ends it)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._write, name=f"journal:{self.path.name}", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while True:
            op = self._ops.get()
            ops = [op]
            while len(ops) < BATCH:
                try:
                    ops.append(self._ops.get_nowait())
                except queue.Empty:
                    break
            stop = None in ops
            batch = [o for o in ops if o is not None]
            if batch:
                try:
                    self.apply(batch)
                except BaseException as exc:  # a full disk, a damaged file: nothing more can be promised
                    log.error("journal %s: writing failed: %s", self.path, exc, exc_info=exc)
                    self.failure = exc
                    self._publish(error=exc)
                    return
                self._committed += len(batch)
                self._publish()
            if stop:
                return

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        """Apply `ops` in one transaction (the writer's step; tests call it directly)."""
        db = self._db
        with db:
            for op in coalesce(ops):
                kind = op[0]
                if kind == "append":
                    _insert(db, op[1])
                elif kind == "finish":
                    db.execute("DELETE FROM units WHERE seq = ?", (op[1],))
                    for child in op[2]:
                        _insert(db, child)
                elif kind == "done":
                    db.execute("DELETE FROM units WHERE seq = ?", (op[1],))
                elif kind == "conversation":
                    db.execute("INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?)", op[1:])
                elif kind == "thread":
                    db.execute("INSERT OR REPLACE INTO threads VALUES (?, ?, ?, ?, ?)", (op[2], op[1], *op[3:]))
                elif kind == "history":
                    db.execute("INSERT INTO history (conversation, thread, entry) VALUES (?, ?, ?)", op[1:])
                elif kind == "todo":
                    db.execute("INSERT INTO todos (conversation, thread, op) VALUES (?, ?, ?)", op[1:])
                elif kind == "awaited":
                    db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?)", (op[2], op[1], op[3]))
                elif kind == "forget":
                    for table, column in (("units", "conversation"), ("threads", "conversation"), ("calls", "conversation"),
                                          ("history", "conversation"), ("todos", "conversation"), ("conversations", "key")):
                        db.execute(f"DELETE FROM {table} WHERE {column} = ?", (op[1],))
                elif kind == "seen":
                    db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?, ?)", op[1:])
                else:  # pragma: no cover - a bug in this module
                    raise ValueError(f"unknown journal operation {kind!r}")
            self.commits += 1
            if self.commits % 500 == 0:  # now and then: forget old dedupe entries
                db.execute("DELETE FROM seen WHERE time < ?", (time.time() - SEEN_WINDOW_S,))

    def _publish(self, error: BaseException | None = None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, error)

    # -- the end -----------------------------------------------------------------------
    async def close(self) -> None:
        """Write what is queued, stop the writer, close the file."""
        if self._thread is not None:
            self._ops.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        self._db.close()

    def size(self) -> dict[str, int]:
        """Bytes on disk: the file and its WAL."""
        sizes = {}
        for name, path in (("bytes", self.path), ("wal_bytes", Path(f"{self.path}-wal"))):
            try:
                sizes[name] = path.stat().st_size
            except FileNotFoundError:
                sizes[name] = 0
        return sizes

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.size(), "lag": self.lag, "commits": self.commits,
                "failed": str(self.failure) if self.failure is not None else None}


def fold(ops: list[tuple[Any, ...]], organism: str) -> Snapshot:
    """What a journal that was written `ops` would give back at a restart (a member that
    adopts another's open conversations reads them this way)."""
    with tempfile.TemporaryDirectory(prefix="agentserver-fold-") as folder:
        journal = Journal(Path(folder) / "journal.sqlite", organism, synchronous="OFF")
        try:
            journal.apply(ops)
            return journal.load()
        finally:
            journal._db.close()


KEYED = {"conversation": 1, "thread": 1, "history": 1, "todo": 1, "awaited": 1, "forget": 1}  # op -> conversation's place


def coalesce(ops: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`ops` less what the same transaction would write and then delete: a unit appended
    and done within it, and everything of a conversation opened and forgotten within it
    (its key is new, so nothing of it is on disk yet). The file ends the same; under
    steady traffic most short conversations never touch it."""
    appended: set[int] = set()
    dropped_units: set[int] = set()
    opened: set[str] = set()
    gone: set[str] = set()
    for op in ops:
        kind = op[0]
        if kind == "append":
            appended.add(op[1].seq)
        elif kind == "finish":
            appended.update(child.seq for child in op[2])
            if op[1] in appended:
                dropped_units.add(op[1])
        elif kind == "done" and op[1] in appended:
            dropped_units.add(op[1])
        elif kind == "conversation":
            opened.add(op[1])
        elif kind == "forget" and op[1] in opened:
            gone.add(op[1])
    if not dropped_units and not gone:
        return ops
    out: list[tuple[Any, ...]] = []
    forgotten: set[str] = set()  # gone conversations whose forget has passed: what follows is kept
    for op in ops:
        kind = op[0]
        if kind == "append":
            record = op[1]
            if record.seq in dropped_units or (record.conversation in gone and record.conversation not in forgotten):
                continue
        elif kind == "finish":
            children = tuple(child for child in op[2] if child.seq not in dropped_units and not (
                child.conversation in gone and child.conversation not in forgotten))
            if op[1] in dropped_units:
                out.extend(("append", child) for child in children)
                continue
            op = ("finish", op[1], children)
        elif kind == "done" and op[1] in dropped_units:
            continue
        elif kind in KEYED:
            key = op[KEYED[kind]]
            if key in gone and key not in forgotten:
                if kind == "forget":
                    forgotten.add(key)
                continue
        out.append(op)
    return out


def _insert(db: sqlite3.Connection, record: Record) -> None:
    db.execute("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)",
               (record.seq, record.conversation, record.message_id, record.kind, record.sender, record.envelope,
                json.dumps(record.context)))


def _connect(path: Path, organism: str, synchronous: str) -> sqlite3.Connection:
    """Open (or create) the journal file, and refuse one that is damaged, foreign or of
    another schema version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if new:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # born 0600; the WAL takes its mode
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.isolation_level = "DEFERRED"
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise JournalError(f"{path}: SQLite would not use WAL mode for the journal (it said {mode!r})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA journal_size_limit=8388608")  # the WAL is truncated back to 8 MiB after checkpoints
        if not new:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise JournalError(f"{path}: the journal is damaged ({check}); move it away to start with an empty "
                                   "journal (what it held is lost), or restore it from a copy")
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise JournalError(f"{path}: a SQLite file that is not an agentserver journal (it has tables "
                                   f"{', '.join(sorted(tables)[:5])}); give organism.journal a path of its own")
        db.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: not a journal SQLite can read ({exc}); move it away to start with an empty "
                           "journal, or restore it from a copy") from None
    meta = dict(db.execute("SELECT key, value FROM meta"))
    if not meta:
        with db:
            db.executemany("INSERT INTO meta VALUES (?, ?)",
                           [("organism", organism), ("schema_version", SCHEMA_VERSION), ("created", str(time.time()))])
        return db
    if meta.get("organism") != organism:
        db.close()
        raise JournalError(f"{path}: this journal belongs to organism {meta.get('organism')!r}, not {organism!r}; "
                           "use another journal path for this organism")
    if meta.get("schema_version") != SCHEMA_VERSION:
        db.close()
        raise JournalError(f"{path}: journal schema version {meta.get('schema_version')!r}, this agentserver writes "
                           f"{SCHEMA_VERSION!r}; finish it with the agentserver that wrote it, or move it away")
    return db
