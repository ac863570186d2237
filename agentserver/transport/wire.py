"""What members of one organism say to each other over NATS JetStream (DESIGN.md §15). No I/O.

The member holding a conversation (its *owner*: the one its client is connected to)
runs the pipeline, the thread registry and the awaited calls as it does alone; only
handler calls travel. Four kinds of message, each one JSON document:

- `Work` (owner -> any member, on the listener's work subject, deduped by its unit id):
  the validated payload as XML, what the handler's `meta` says, and the thread's
  history. Whoever takes it runs the handler.
- `Result` (worker -> owner's inbox): what the handler returned, as items the owner
  turns back into `HandlerResponse`s (so routing, the peers rule and threads stay
  with the owner), or the error it ended in.
- `Ask` (worker -> owner's inbox): the handler called `meta.ask`; the owner makes the
  call on the conversation it holds.
- `Answer` (owner -> worker's inbox): what the call came back with, or how it failed.

`Names` are the subjects, streams, consumers and key-value bucket of one organism,
made from its name (two organisms on one server never share one); `fingerprint` is
what members compare to refuse a member whose configuration differs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from agentserver.journal import KEYED, Record
from agentserver.message_bus.message_state import HandlerResponse, HistoryEntry
from agentserver.primitives import TodoComplete, TodoUntil

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.config import OrganismConfig

__all__ = ["Names", "Work", "Result", "Ask", "Answer", "decode", "fingerprint", "encode_items", "decode_items",
           "WireError", "by_conversation", "encode_ops", "decode_ops"]

VERSION = 1


class WireError(ValueError):
    """A message another member sent cannot be read (another version, damaged)."""


def _token(name: str) -> str:
    """`name` as one subject token and stream name part: safe characters, plus a short
    hash of the exact name, so "a.b" and "a_b" stay apart."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40]
    return f"{safe}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Names:
    organism: str

    @property
    def prefix(self) -> str:
        return f"agentserver.{_token(self.organism)}"

    @property
    def work_stream(self) -> str:
        return f"AGENTSERVER_{_token(self.organism)}_WORK"

    @property
    def inbox_stream(self) -> str:
        return f"AGENTSERVER_{_token(self.organism)}_INBOX"

    @property
    def bucket(self) -> str:
        return f"agentserver_{_token(self.organism)}"

    def work(self, listener: str) -> str:
        return f"{self.prefix}.work.{_token(listener)}"

    def inbox(self, member: str) -> str:
        return f"{self.prefix}.inbox.{member}"

    def consumer(self, listener: str) -> str:
        return f"work_{_token(listener)}"

    @staticmethod
    def member_consumer(member: str) -> str:
        return f"inbox_{member}"

    @property
    def journal_stream(self) -> str:
        return f"AGENTSERVER_{_token(self.organism)}_JOURNAL"

    def journal(self, member: str, conversation: str = ">") -> str:
        """The subject of one open conversation's journal operations (">": all of the member's)."""
        token = conversation if conversation == ">" else hashlib.sha256(conversation.encode()).hexdigest()[:20]
        return f"{self.prefix}.journal.{member}.{token}"


def fingerprint(config: "OrganismConfig") -> str:
    """What every member of an organism must agree on: its listeners (classes, handlers,
    peers, caps), limits and scheduling. Where it listens (socket, tcp, http) is each
    member's own."""
    listeners = [{"name": spec.name, "payload_class": _named(spec.payload_class), "handler": _named(spec.handler), "agent": spec.agent,
                  "peers": sorted(spec.peers) if spec.peers is not None else None, "concurrency": spec.concurrency}
                 for spec in config.listeners]
    document = {"name": config.name, "listeners": sorted(listeners, key=lambda item: str(item["name"])),
                "limits": dataclasses.asdict(config.limits), "thread_scheduling": config.thread_scheduling,
                "max_concurrent_per_agent": config.max_concurrent_per_agent,
                "max_concurrent_per_listener": config.max_concurrent_per_listener,
                "llm": repr(config.llm) if config.llm is not None else None}
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _named(thing: Any) -> str:
    """A class or function by its import path (never its address), or the text as given."""
    if isinstance(thing, str):
        return thing
    return f"{getattr(thing, '__module__', '')}.{getattr(thing, '__qualname__', type(thing).__name__)}"


# -- the messages ------------------------------------------------------------------------
@dataclass
class Work:
    unit: str
    owner: str
    listener: str
    payload: str  # the payload element, as XML text
    meta: dict[str, Any]  # HandlerMetadata's plain fields, and `conversation` (the budget account)
    history: list[dict[str, Any]] = field(default_factory=list)
    kind: str = "work"


@dataclass
class Result:
    unit: str
    items: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None  # {"code", "reason"}: the handler's unit ended in this error
    worker: str = ""
    kind: str = "result"


@dataclass
class Ask:
    unit: str
    ask: str
    worker: str
    peer: str
    payload: str
    timeout: float | None = None
    kind: str = "ask"


@dataclass
class Answer:
    ask: str
    payload: str | None = None
    error: dict[str, str] | None = None  # {"code", "peer", "call_id", "message"}: PeerError; code "timeout": TimeoutError
    kind: str = "answer"


_KINDS: dict[str, type] = {"work": Work, "result": Result, "ask": Ask, "answer": Answer}


def encode(message: Work | Result | Ask | Answer) -> bytes:
    return json.dumps({"v": VERSION, **dataclasses.asdict(message)}, separators=(",", ":")).encode()


def decode(data: bytes) -> Work | Result | Ask | Answer:
    """One message of another member. Raises WireError."""
    try:
        document = json.loads(data)
        if document.pop("v", None) != VERSION:
            raise WireError(f"not a version-{VERSION} message of agentserver members")
        return _KINDS[document["kind"]](**document)
    except WireError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"a damaged message: {exc}") from None


Encode = Callable[[Any], str]  # a payload object -> its XML text (raises for what is not @xmlify)
Decode = Callable[[str], Any]  # XML text -> the payload object of its root tag


def encode_items(result: Any, to_xml: Encode) -> list[dict[str, Any]]:
    """A handler's return value as items (the shapes `build_responses` accepts). Raises
    TypeError for what a handler may not return, ValueError for a payload that cannot be
    written as XML (the owner reports both as wrong-type)."""
    items: list[dict[str, Any]] = []
    for item in result if isinstance(result, list) else [result]:
        if item is None:
            continue
        if isinstance(item, HandlerResponse) and isinstance(item.payload, (TodoUntil, TodoComplete)):
            item = item.payload
        if isinstance(item, (TodoUntil, TodoComplete)):
            items.append({"kind": "todo", "type": type(item).__name__, "fields": dataclasses.asdict(item)})
        elif isinstance(item, HandlerResponse):
            items.append({"kind": "send", "to": item.to, "respond": item.is_response, "payload": to_xml(item.payload)})
        elif isinstance(item, (bytes, bytearray)):
            items.append({"kind": "bytes", "xml": bytes(item).decode("utf-8", "replace")})
        else:
            raise TypeError(f"handler returned {type(item).__name__}; expected None, HandlerResponse, a list of them, or bytes")
    return items


def decode_items(items: list[dict[str, Any]], from_xml: Decode) -> list[Any]:
    """Items back as the handler's return value (a list `build_responses` takes)."""
    result: list[Any] = []
    for item in items:
        kind = item.get("kind")
        if kind == "todo":
            todo_class = TodoUntil if item["type"] == "TodoUntil" else TodoComplete
            result.append(todo_class(**item["fields"]))
        elif kind == "send":
            payload = from_xml(item["payload"])
            result.append(HandlerResponse.respond(payload) if item["respond"] else HandlerResponse(payload, to=item["to"]))
        elif kind == "bytes":
            result.append(item["xml"].encode())
        else:
            raise WireError(f"an item of unknown kind {kind!r}")
    return result


def encode_history(history: Any, to_xml: Encode) -> list[dict[str, Any]]:
    out = []
    for entry in history:
        try:
            payload = to_xml(entry.payload) if entry.payload is not None else None
        except Exception:  # a payload that cannot be written back: the entry keeps its place
            payload = None
        out.append({"sender": entry.sender, "to": entry.to, "root_tag": entry.root_tag, "payload": payload,
                    "timestamp": entry.timestamp, "message_id": entry.message_id, "call_id": entry.call_id})
    return out


def decode_history(history: list[dict[str, Any]], from_xml: Decode) -> list[HistoryEntry]:
    out = []
    for entry in history:
        payload = None
        if entry.get("payload"):
            try:
                payload = from_xml(entry["payload"])
            except Exception:
                payload = None
        out.append(HistoryEntry(entry["sender"], entry["to"], entry["root_tag"], payload, entry["timestamp"],
                                entry["message_id"], entry["call_id"]))
    return out


# -- the owner's journal operations (agentserver.journal's), kept per open conversation ----
def by_conversation(ops: list[tuple[Any, ...]], units: dict[int, str]) -> dict[str, list[tuple[Any, ...]]]:
    """`ops` (in order) split by the conversation each belongs to. `units` maps each
    journaled unit's number to its conversation, and is kept up to date here (a unit's
    `done` names only its number). A unit's outputs in another conversation than its
    own are appended there; `seen` (dedupe) is the owner's alone and is left out."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for op in ops:
        kind = op[0]
        if kind == "append":
            units[op[1].seq] = op[1].conversation
            out.setdefault(op[1].conversation, []).append(op)
        elif kind == "finish":
            key = units.pop(op[1], None)
            children = []
            for child in op[2]:
                units[child.seq] = child.conversation
                if child.conversation == key:
                    children.append(child)
                else:
                    out.setdefault(child.conversation, []).append(("append", child))
            if key is not None:
                out.setdefault(key, []).append(("finish", op[1], tuple(children)))
        elif kind == "done":
            key = units.pop(op[1], None)
            if key is not None:
                out.setdefault(key, []).append(op)
        elif kind in KEYED:
            out.setdefault(op[KEYED[kind]], []).append(op)
    return out


def _record(record: Record) -> dict[str, Any]:
    return {"seq": record.seq, "conversation": record.conversation, "message_id": record.message_id,
            "kind": record.kind, "sender": record.sender, "envelope": base64.b64encode(record.envelope).decode(),
            "context": record.context}


def _unrecord(found: dict[str, Any]) -> Record:
    return Record(found["seq"], found["conversation"], found["message_id"], found["kind"], found["sender"],
                  base64.b64decode(found["envelope"]), found["context"])


def encode_ops(ops: list[tuple[Any, ...]]) -> bytes:
    encoded: list[list[Any]] = []
    for op in ops:
        if op[0] == "append":
            encoded.append(["append", _record(op[1])])
        elif op[0] == "finish":
            encoded.append(["finish", op[1], [_record(child) for child in op[2]]])
        else:
            encoded.append(list(op))
    return json.dumps({"v": VERSION, "ops": encoded}, separators=(",", ":")).encode()


def decode_ops(data: bytes) -> list[tuple[Any, ...]]:
    """Journal operations another member published. Raises WireError."""
    try:
        document = json.loads(data)
        if document.get("v") != VERSION:
            raise WireError(f"not a version-{VERSION} journal message of agentserver members")
        ops: list[tuple[Any, ...]] = []
        for op in document["ops"]:
            if op[0] == "append":
                ops.append(("append", _unrecord(op[1])))
            elif op[0] == "finish":
                ops.append(("finish", op[1], tuple(_unrecord(child) for child in op[2])))
            else:
                ops.append(tuple(op))
        return ops
    except WireError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise WireError(f"a damaged journal message: {exc}") from None
