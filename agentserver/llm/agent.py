"""The built-in agent loop: an LLM agent declared in organism.yaml, with no Python
handler (DESIGN.md §12).

    - name: planner
      agent: true
      peers: [calculator]
      payload_class: agentserver.examples.planner.Task
      llm: {model: m, prompt: "You plan...", reply_class: agentserver.examples.planner.Summary}

`Routes.from_config` gives such a listener an `AgentLoop` as its handler, made once,
after every listener is known (`agent_loop`). One handler call serves one message the
agent receives, in straight-line code:

1. **The chat.** The system prompt is the YAML `prompt` plus the agent's usage
   instructions (its peers' descriptions, schemas and examples; its `reply_class`'s
   schema and example; `agent_rules`, the response rules in XML terms). Then the
   agent's own thread as turns: what it received as user turns (XML), what it sent as
   assistant turns (the last `MAX_HISTORY` of them), ending with the message being
   handled.
2. **The model's answer** (`meta.llm`, so budgets count every turn and re-ask; with
   the grammar of `grammar.py` for backends that take one; streamed to the client at
   the root when it asked to see this agent's answer) is read by `read_answer`: the
   payload elements in it (text around them is ignored), parsed by the pump's safe
   parser, each validated against the compiled XSD of its root tag and read into its
   class. An element of `reply_class` answers the caller; an element a peer accepts
   is a call to that peer (to each peer accepting it).
3. **Calls** go through `meta.ask`, so the pump validates and routes each one like any
   handler output; several in one answer run concurrently. Their answers (or, for a
   failed call, `<SystemError>` with the code, call id and peer) come back as the next
   user turn, in the order of the calls; then the model answers again.
4. **The reply** ends the handler call: `HandlerResponse.respond(reply)`, which the pump
   validates again on its way to the caller.
5. **Re-asks.** An answer that cannot be used (not well-formed, no payload element, an
   unknown root tag, a listener that is not a peer, invalid against its schema,
   unreadable into its class, a reply mixed with calls, several replies, more than
   `MAX_ELEMENTS` elements) is re-asked with a short description of what was wrong,
   at most `max_reasks` times in a row (the count starts again after a usable
   answer). One more unusable answer raises `LlmInvalid`: the caller hears
   `SystemError` `llm-invalid`. Each re-ask is counted in the router's status
   (`agents.NAME.reasks`).
6. **Bounds.** At most `MAX_MODEL_CALLS` model calls per handler call, turns and
   re-asks together; past it, `LlmInvalid`. The chat grows by at most one answer
   (`max_tokens`) and one user turn per model call, so it is bounded too. An
   `LlmError` from the router (`budget`, `llm-unavailable`, ...) ends the call with its
   own code.

Streaming: when the client at the root asked to see this agent's answer (`meta.stream`)
and the agent's `llm.stream` is not false, each model call streams to it as it is
written; a turn after one that streamed starts with a newline. What streams is
provisional: the reply frame that follows (validated) is the answer, and the calls and
any re-asked answer streamed before it too.

Model output is untrusted input: it is only ever parsed (by the pump's safe parser,
`SafeXml`: no DTD, size and count limits) and validated; payloads sent on are objects
read from it, written out again by their class.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from agentserver.llm.grammar import MAX_ELEMENTS, GrammarError, grammar_for
from agentserver.llm.settings import AgentLlmConfig
from agentserver.llm.types import LlmInvalid, Message
from agentserver.message_bus.calls import PeerError
from agentserver.message_bus.message_state import HandlerMetadata, HandlerResponse
from agentserver.primitives import system_error
from agentserver.xmlsafe import SafeXml, UnsafeXml, schema_error

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.config import OrganismConfig
    from agentserver.message_bus.listeners import Listener, PayloadType, PayloadTypes, Routes

__all__ = ["AgentLoop", "agent_loop", "read_answer", "Answer", "Callee", "Unusable", "agent_rules", "reask_message",
           "AGENT_RULES", "MAX_MODEL_CALLS", "MAX_HISTORY", "MAX_ELEMENTS"]

log = logging.getLogger("agentserver.llm")

MAX_MODEL_CALLS = 12  # per handler call, turns and re-asks together
MAX_HISTORY = 32  # earlier messages of the agent's thread shown to the model, the most recent
MAX_PROBLEM_CHARS = 240  # of one problem described in a re-ask

AGENT_RULES = """\
## How to answer
Write only XML: payload elements, each exactly as its schema above says.
- To call a peer, write a payload element it accepts (like its example above). You
  may call only the peers listed above. Several elements call several peers at once.
  Their answers come back to you as the next message, in the order of your calls.
- When you have what you need, answer your caller with exactly one <{reply}> element,
  alone in its message. That ends your part.
- If a call fails, its answer is <SystemError> with <Code>, <Message>, <CallId> and
  <Peer> (whom the call was to).
- If a message of yours cannot be used you are told what was wrong: write it again,
  corrected."""

AGENT_RULES_ALONE = """\
## How to answer
Write only XML: answer your caller with exactly one <{reply}> element, exactly as its
schema above says.
If a message of yours cannot be used you are told what was wrong: write it again,
corrected."""


def agent_rules(reply_tag: str, *, peers: bool) -> str:
    """The response rules of an LLM agent, in XML terms (`AGENT_RULES`, or for an agent
    without peers `AGENT_RULES_ALONE`)."""
    return (AGENT_RULES if peers else AGENT_RULES_ALONE).format(reply=reply_tag)


REASK = """\
Your last message could not be used: {problem}
Write it again, as XML only: {what}."""

_FIRST_TAG = re.compile(r"<[A-Za-z_]")
_WRAPPER = b"answer"


class Unusable(ValueError):
    """The model's answer cannot be used; the message says why, briefly (it goes back
    to the model in the re-ask)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A usable answer: the calls it makes (peer, payload object), in order, or the reply."""

    calls: tuple[tuple[str, Any], ...] = ()
    reply: Any = None


@dataclass(frozen=True, slots=True)
class Callee:
    """A root tag the agent may write to call peers: its type and the peers accepting it."""

    payload_type: "PayloadType"
    peers: tuple[str, ...]


def read_answer(text: str, *, xml: SafeXml, calls: Mapping[str, Callee], reply: "PayloadType",
                listeners_of: Callable[[str], Sequence[str]], max_elements: int = MAX_ELEMENTS) -> Answer:
    """What the model's `text` says: the calls it makes or its reply. Pure (no I/O).

    The payload elements are those between the first `<` that opens a tag and the last
    `>` (text before, after and between them is ignored), parsed by `xml` (the pump's
    safe parser and its limits). Each must be the reply (`reply`'s root tag) or a call
    (a root tag in `calls`), valid against that type's compiled XSD and readable into
    its class. Raises `Unusable` saying what is wrong (`listeners_of(tag)` names the
    listeners that accept a root tag that is not the agent's to write)."""
    elements = _payload_elements(text, xml)
    if len(elements) > max_elements:
        raise Unusable(f"it has {len(elements)} payload elements; write at most {max_elements} at once.")
    problems: list[str] = []
    made: list[tuple[str, Any]] = []
    replies: list[Any] = []
    for element in elements:
        tag = element.tag
        assert isinstance(tag, str)  # comments and processing instructions are removed by the parser
        if tag.startswith("{"):
            problems.append(f"<{_short(etree.QName(tag).localname)}> is in a namespace; payload elements have none.")
            continue
        callee = calls.get(tag)
        payload_type = reply if tag == reply.root_tag else callee.payload_type if callee is not None else None
        if payload_type is None:
            accepting = listeners_of(tag)
            if accepting:
                problems.append(f"<{_short(tag)}> is accepted by {', '.join(accepting)}, which you may not call "
                                f"(not one of your peers).")
            else:
                problems.append(f"<{_short(tag)}> is not a payload anyone here accepts.")
            continue
        schema = payload_type.schema
        if not schema.validate(element):
            problems.append(f"<{tag}> does not match its schema: {_short(schema_error(schema))}")
            continue
        try:
            value = payload_type.from_element(element)
        except Exception as exc:  # xmlable and the classes raise many kinds; all mean "cannot read"
            problems.append(f"<{tag}> could not be read: {_short(str(exc))}")
            continue
        if payload_type is reply:
            replies.append(value)
        else:
            assert callee is not None
            made.extend((peer, value) for peer in callee.peers)
    if problems:
        allowed = ", ".join(f"<{tag}>" for tag in [*calls, reply.root_tag])
        more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
        raise Unusable(" ".join(problems[:3]) + more + f" You may write: {allowed}.")
    if len(replies) > 1:
        raise Unusable(f"it has {len(replies)} <{reply.root_tag}> elements; answer with exactly one.")
    if replies and made:
        raise Unusable(f"it both calls peers and answers with <{reply.root_tag}>. Call your peers first; answer "
                       f"with <{reply.root_tag}> alone once their answers are back.")
    return Answer(calls=tuple(made), reply=replies[0] if replies else None)


def _payload_elements(text: str, xml: SafeXml) -> list[etree._Element]:
    start = _FIRST_TAG.search(text)
    end = text.rfind(">")
    if start is None or end < start.start():
        raise Unusable("it has no XML payload element.")
    raw = text[start.start():end + 1].encode("utf-8")
    try:
        xml.precheck(raw)
        wrapper = etree.fromstring(b"<%s>%s</%s>" % (_WRAPPER, raw, _WRAPPER), xml.strict)
        xml.check_counts(raw, wrapper)
    except UnsafeXml as exc:
        raise Unusable(f"it was refused: {_short(exc.detail)}.") from None
    except etree.XMLSyntaxError as exc:
        raise Unusable(f"it is not well-formed XML: {_short(str(exc))}") from None
    elements = [child for child in wrapper.iterchildren() if isinstance(child.tag, str)]
    if not elements:
        raise Unusable("it has no XML payload element.")
    return elements


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_PROBLEM_CHARS else text[:MAX_PROBLEM_CHARS - 1] + "…"


def reask_message(problem: Unusable | str, reply_tag: str, *, peers: bool = True) -> str:
    """The user turn that re-asks after an unusable answer."""
    what = f"answer your caller with one <{reply_tag}> element"
    return REASK.format(problem=problem, what=f"call a peer with an element it accepts, or {what}" if peers else what)


class _TurnStream:
    """Passes the model's text on to the client's stream, a newline between turns."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink
        self._streamed = False
        self._fresh = True

    def next_turn(self) -> Callable[[str], None]:
        self._fresh = True
        return self._piece

    def _piece(self, text: str) -> None:
        if not text:
            return
        if self._fresh and self._streamed:
            self._sink("\n")
        self._fresh = False
        self._streamed = True
        self._sink(text)


@dataclass(eq=False)
class AgentLoop:
    """The handler of one LLM agent: `await loop(payload, meta)` serves one message
    (see the module docstring). Made once per agent by `agent_loop`; holds no state
    between calls, so concurrent calls share it safely."""

    name: str
    settings: AgentLlmConfig
    calls: Mapping[str, Callee]  # root tag -> the peers that accept it
    reply: "PayloadType"
    payload_types: "PayloadTypes"  # to write received payloads as XML for the model
    listeners_of: Callable[[str], Sequence[str]]  # root tag -> listeners accepting it (re-ask texts)
    xml: SafeXml
    grammar: str | None = None  # GBNF for backends that take one (None: none of them serves this model)
    note_reask: Callable[[], None] = field(default=lambda: None)  # counts a re-ask (the router's status)
    max_model_calls: int = MAX_MODEL_CALLS
    max_history: int = MAX_HISTORY

    async def __call__(self, payload: Any, meta: HandlerMetadata) -> HandlerResponse:
        turns: list[Message] = [Message(role="system", content=self._system_prompt(meta))]
        turns += self._history(payload, meta)
        stream = _TurnStream(meta.stream) if meta.stream is not None and self.settings.stream else None
        reasks = 0
        for _ in range(self.max_model_calls):
            completion = await meta.llm(_alternating(turns), grammar=self.grammar,
                                        on_token=stream.next_turn() if stream is not None else None)
            turns.append(Message(role="assistant", content=completion.text))
            try:
                answer = read_answer(completion.text, xml=self.xml, calls=self.calls, reply=self.reply,
                                     listeners_of=self.listeners_of)
            except Unusable as problem:
                if reasks >= self.settings.max_reasks:
                    raise LlmInvalid(f"agent {self.name!r}: no usable answer after {reasks} re-asks; the last: "
                                     f"{problem}") from None
                reasks += 1
                self.note_reask()
                log.info("llm agent %r: re-ask %d of %d in thread %s: %s", self.name, reasks,
                         self.settings.max_reasks, meta.thread_id, problem)
                turns.append(Message(role="user", content=reask_message(problem, self.reply.root_tag,
                                                                        peers=bool(self.calls))))
                continue
            reasks = 0
            if answer.reply is not None:
                return HandlerResponse.respond(answer.reply)
            turns.append(Message(role="user", content=await self._call_peers(meta, answer.calls)))
        raise LlmInvalid(f"agent {self.name!r}: no answer for its caller after {self.max_model_calls} model calls "
                         "(the agent loop's limit per message)")

    def _system_prompt(self, meta: HandlerMetadata) -> str:
        prompt = (self.settings.prompt or "").strip()
        return f"{prompt}\n\n{meta.usage_instructions}" if prompt else meta.usage_instructions

    def _history(self, payload: Any, meta: HandlerMetadata) -> list[Message]:
        """The agent's thread as turns: what it received (user) and sent (assistant)
        before this message, the most recent `max_history`, then this message."""
        entries = list(meta.history)
        current = next((i for i in range(len(entries) - 1, -1, -1)
                        if meta.message_id and entries[i].message_id == meta.message_id), None)
        earlier = entries[:current] if current is not None else entries
        turns: list[Message] = []
        for entry in earlier[-self.max_history:]:
            if entry.sender == self.name:
                turns.append(Message(role="assistant", content=self._xml_of(entry.payload)))
            elif entry.to == self.name:
                turns.append(Message(role="user", content=self._xml_of(entry.payload)))
        turns.append(Message(role="user", content=self._xml_of(payload)))
        return turns

    async def _call_peers(self, meta: HandlerMetadata, calls: Sequence[tuple[str, Any]]) -> str:
        """Make the calls (concurrently), and return their answers as one user turn."""
        answers: list[Any] = [None] * len(calls)

        async def call(index: int, peer: str, payload: Any) -> None:
            try:
                answers[index] = await meta.ask(peer, payload)
            except PeerError as failed:
                answers[index] = system_error(failed.code, failed.call_id, failed.peer)

        if len(calls) == 1:
            await call(0, *calls[0])
        else:
            async with asyncio.TaskGroup() as group:
                for index, (peer, payload) in enumerate(calls):
                    group.create_task(call(index, peer, payload), name=f"llm-agent:{self.name}->{peer}")
        return "\n".join(self._xml_of(answer) for answer in answers)

    def _xml_of(self, payload: Any) -> str:
        payload_type = self.payload_types.for_class(type(payload))
        if payload_type is None:  # everything the pump delivers was read into a payload class
            raise TypeError(f"agent {self.name!r}: {type(payload).__name__} is not a payload class")
        return etree.tostring(payload_type.to_element(payload), encoding="unicode")


def _alternating(turns: Sequence[Message]) -> list[Message]:
    """The turns with consecutive turns of one role merged (some APIs require user and
    assistant to alternate)."""
    merged: list[Message] = []
    for turn in turns:
        if merged and merged[-1]["role"] == turn["role"] and turn["role"] != "system":
            merged[-1] = Message(role=turn["role"], content=merged[-1]["content"] + "\n" + turn["content"])
        else:
            merged.append(turn)
    return merged


def agent_loop(listener: "Listener", routes: "Routes", config: "OrganismConfig") -> AgentLoop:
    """The handler of LLM agent `listener`, made when every listener of `routes` is
    known: its peers' root tags, its reply type, the pump's safe parser settings, and
    the grammar when a backend that takes one serves its model. Raises `ValueError`
    naming the listener for what the config check cannot see (a peer whose root tag
    is the reply's; a payload type the grammar cannot express)."""
    settings: AgentLlmConfig = listener.llm
    reply = routes.payload_types.add(settings.reply_class)
    calls: dict[str, Callee] = {}
    for peer_name in sorted(listener.peers or ()):
        peer = routes.by_name[peer_name]
        if peer.root_tag == reply.root_tag:
            raise ValueError(f"listener {listener.name!r}: its peer {peer.name!r} accepts <{peer.root_tag}>, the "
                             "root tag of its reply_class, so the agent could not call it (give the reply its own "
                             "class)")
        known = calls.get(peer.root_tag)
        calls[peer.root_tag] = Callee(peer.payload_type, (known.peers if known else ()) + (peer.name,))
    grammar = None
    backends = config.llm.backends if config.llm is not None else ()
    if any(backend.accepts_grammar and backend.serves(settings.model) for backend in backends):
        try:
            grammar = grammar_for([callee.payload_type.cls for callee in calls.values()], reply=reply.cls)
        except GrammarError as exc:
            raise ValueError(f"listener {listener.name!r}: a backend serving its model takes a grammar, and the "
                             f"grammar of its payloads cannot be made: {exc}") from None

    def listeners_of(tag: str) -> list[str]:
        return [other.name for other in routes.by_tag.get(tag, ()) if not other.system]

    return AgentLoop(name=listener.name, settings=settings, calls=calls, reply=reply,
                     payload_types=routes.payload_types, listeners_of=listeners_of,
                     xml=SafeXml.for_limits(config.limits), grammar=grammar,
                     note_reask=lambda: routes.note_reask(listener.name))
