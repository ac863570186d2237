"""Listeners and the payload types they accept: the pump's routing table.

Registering a listener generates, once, everything the hot path needs: the XSD of its
payload class (`Cls.xsd()`) compiled to an `etree.XMLSchema`, an example instance, and
for agents the `usage_instructions` text (their peers' descriptions, schemas and
examples, plus the response rules). Per-message work is then dictionary lookups.

An LLM agent (a listener with `llm:` and no `handler:`) is an agent whose handler is
the built-in agent loop (agentserver/llm/agent.py), made once every listener is known;
its usage instructions also show its `reply_class`'s schema and example, and the
response rules of the agent loop. The loop counts its re-asks with the organism's model
router, which the pump makes after the routes: it gives it with `bind_llm`.

`PayloadTypes` maps a root tag to its class and schema. Besides listeners' classes it
learns the classes handlers emit (so replies to clients are validated and read too),
and it always knows the pump's own primitives.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from lxml import etree

from agentserver.config import ConfigError, ListenerConfig, OrganismConfig
from agentserver.message_bus.codec import Codec
from agentserver.primitives import Boot, SystemError, TodoComplete, TodoUntil

__all__ = ["Listener", "PayloadType", "PayloadTypes", "Routes", "example_of", "RESPONSE_RULES"]

RESPONSE_RULES = """\
## How to answer
Everything you send is XML: one or more payload elements, each exactly as its schema
above says (text around them is ignored).
- To call a peer, write a payload element that peer accepts, e.g. its example above.
  You may call only the peers listed above. Its answer comes back to you as a new
  message on this conversation.
- To answer whoever called you, write the payload element your caller expects. Your
  call is then finished: complete everything you need before you answer.
- Write several elements to send several messages at once; write nothing to end your
  part without answering.
- To be reminded when a payload arrives, write
  <TodoUntil><TodoId>t1</TodoId><WaitFor>RootTag</WaitFor><FromListener>peer</FromListener><Note></Note></TodoUntil>;
  close it with <TodoComplete><TodoId>t1</TodoId></TodoComplete>.
- If something you sent fails you receive <SystemError> with <Code>, <Message>,
  <CallId> (the call that failed) and <Peer> (whom it was to)."""


@dataclass(slots=True, eq=False)
class PayloadType:
    cls: type
    root_tag: str
    schema: etree.XMLSchema
    xsd_text: str
    codec: Codec | None = None  # fast xml_value/parse for plain classes (codec.py)

    def to_element(self, payload: Any) -> etree._Element:
        return self.codec.to_element(payload) if self.codec is not None else payload.xml_value().getroot()

    def from_element(self, element: etree._Element) -> Any:
        return self.codec.from_element(element) if self.codec is not None else self.cls.parse(element)  # type: ignore[attr-defined]

    @classmethod
    def of(cls, payload_class: Any) -> "PayloadType":  # an @xmlify class: its methods are added at run time
        xsd_tree = payload_class.xsd(namespaces={}, imports={})  # fresh dicts: xmlable mutates them
        return cls(
            cls=payload_class,
            root_tag=payload_class.__name__,
            schema=etree.XMLSchema(xsd_tree),
            xsd_text=etree.tostring(xsd_tree, pretty_print=True, encoding="unicode"),
            codec=Codec.of(payload_class),
        )


class PayloadTypes:
    """Root tag -> PayloadType, for every class the pump can validate and read."""

    def __init__(self) -> None:
        self._by_tag: dict[str, PayloadType] = {}
        self._by_class: dict[type, PayloadType] = {}

    def add(self, payload_class: type) -> PayloadType:
        known = self._by_class.get(payload_class)
        if known is not None:
            return known
        payload_type = PayloadType.of(payload_class)
        if payload_type.root_tag in self._by_tag:
            # another class with the same root tag: the first one keeps the tag
            self._by_class[payload_class] = payload_type
            return payload_type
        self._by_tag[payload_type.root_tag] = payload_type
        self._by_class[payload_class] = payload_type
        return payload_type

    def get(self, root_tag: str) -> PayloadType | None:
        return self._by_tag.get(root_tag)

    def for_class(self, payload_class: type) -> PayloadType | None:
        """The PayloadType of `payload_class`, learning it on first sight; None if not @xmlify."""
        known = self._by_class.get(payload_class)
        if known is not None:
            return known
        if not (hasattr(payload_class, "xsd") and hasattr(payload_class, "xml_value")):
            return None
        return self.add(payload_class)


@dataclass(slots=True, eq=False)
class Listener:
    name: str
    payload_type: PayloadType
    handler: Callable[..., Any]
    description: str = ""
    agent: bool = False
    peers: frozenset[str] | None = None  # None: may forward anywhere (plain handlers only)
    concurrency: int = 1
    system: bool = False
    usage_instructions: str = ""
    example_xml: str = ""
    llm: Any = None  # agentserver.llm.AgentLlmConfig: model, limits and budget of its meta.llm calls

    @property
    def root_tag(self) -> str:
        return self.payload_type.root_tag

    def may_send_to(self, name: str) -> bool:
        """Peers rule: declared peers (and itself) only; an agent without peers forwards nowhere."""
        if name == self.name:
            return True
        if self.peers is None:
            return not self.agent
        return name in self.peers


class Routes:
    """The routing table of one pump: listeners by name and by root tag."""

    def __init__(self, payload_types: PayloadTypes) -> None:
        self.payload_types = payload_types
        self.by_name: dict[str, Listener] = {}
        self.by_tag: dict[str, list[Listener]] = {}
        self.llm_router: Any = None  # agentserver.llm.LlmRouter, once bound (bind_llm): LLM agents count re-asks there
        for primitive in (SystemError, Boot, TodoUntil, TodoComplete):
            payload_types.add(primitive)

    def add(self, listener: Listener) -> None:
        if listener.name in self.by_name:
            raise ValueError(f"duplicate listener name {listener.name!r}")
        self.by_name[listener.name] = listener
        self.by_tag.setdefault(listener.root_tag, []).append(listener)

    @classmethod
    def from_config(cls, config: OrganismConfig) -> "Routes":
        """The routes of `config`'s listeners; each LLM agent gets its agent loop. Raises
        ConfigError (FILE:LINE) for an LLM agent whose loop cannot be made (see
        `agentserver.llm.agent.agent_loop`)."""
        routes = cls(PayloadTypes())
        for spec in config.listeners:
            routes.add(routes._listener(spec, config))
        for listener in routes.by_name.values():
            listener.example_xml = _example_xml(listener.payload_type.cls)
        for listener in routes.by_name.values():
            if listener.agent:
                listener.usage_instructions = routes.usage_instructions(listener)
        llm_agents = [spec for spec in config.listeners if spec.llm_agent]
        if llm_agents:  # the agent loop (and the llm package) is loaded only for organisms that have one
            from agentserver.llm.agent import agent_loop

            problems = []
            for spec in llm_agents:
                try:
                    routes.by_name[spec.name].handler = agent_loop(routes.by_name[spec.name], routes, config)
                except ValueError as exc:
                    problems.append(f"{config.path}:{spec.llm.line or spec.line}: {exc}")
            if problems:
                raise ConfigError(problems)
        return routes

    def bind_llm(self, router: Any) -> None:
        """Give the LLM agents the organism's model router (`agentserver.llm.LlmRouter`,
        made by the pump after the routes; None: the organism has none), where they
        count their re-asks."""
        self.llm_router = router

    def note_reask(self, agent: str) -> None:
        """LLM agent `agent` re-asked its model: counted in the router's status
        (`llm.agents.NAME.reasks`), once the router is bound."""
        if self.llm_router is not None:
            self.llm_router.note_reask(agent)

    def _listener(self, spec: ListenerConfig, config: OrganismConfig) -> Listener:
        if spec.concurrency is not None:
            concurrency = spec.concurrency
        elif spec.agent:
            concurrency = config.max_concurrent_per_agent
        else:  # a plain listener: its own cap, so one that hangs cannot take every handler slot
            concurrency = min(config.max_concurrent_per_listener, config.max_concurrent_handlers)
        return Listener(
            name=spec.name,
            payload_type=self.payload_types.add(spec.payload_class),
            handler=spec.handler,  # an LLM agent's (None here) is its agent loop, set by from_config
            description=spec.description,
            agent=spec.agent or spec.llm_agent,
            peers=frozenset(spec.peers or ()) if (spec.peers is not None or spec.agent or spec.llm_agent) else None,
            concurrency=concurrency,
            llm=spec.llm,
        )

    def usage_instructions(self, agent: Listener) -> str:
        lines = [f"You are the agent '{agent.name}'."]
        if agent.description:
            lines.append(f"Your role: {agent.description}")
        lines.append(f"You receive <{agent.root_tag}> payloads.")
        peers = sorted(agent.peers or ())
        if not peers:
            lines.append("\nYou have no peers: you can only respond to your caller.")
        else:
            lines.append("\nYou can call these peers:")
            for peer_name in peers:
                peer = self.by_name[peer_name]
                lines.append(f"\n## {peer.name}")
                if peer.description:
                    lines.append(peer.description)
                lines.append(f"Send it a <{peer.root_tag}> payload. Schema:")
                lines.append("```xml\n" + peer.payload_type.xsd_text.rstrip() + "\n```")
                lines.append("Example:")
                lines.append("```xml\n" + peer.example_xml.rstrip() + "\n```")
        reply_class = getattr(agent.llm, "reply_class", None)  # only LLM agents have one (config.py)
        if reply_class is None:
            lines.append("\n" + RESPONSE_RULES)
            return "\n".join(lines)
        from agentserver.llm.agent import agent_rules

        reply = self.payload_types.add(reply_class)
        lines.append(f"\n## Your answer\nAnswer your caller with a <{reply.root_tag}> payload. Schema:")
        lines.append("```xml\n" + reply.xsd_text.rstrip() + "\n```")
        lines.append("Example:")
        lines.append("```xml\n" + _example_xml(reply_class).rstrip() + "\n```")
        lines.append("\n" + agent_rules(reply.root_tag, peers=bool(peers)))
        return "\n".join(lines)

    def table(self) -> list[tuple[str, list[Listener]]]:
        """(root tag, listeners) rows, sorted, for `check` and `status`."""
        return sorted(self.by_tag.items())


def example_of(payload_class: type) -> Any:
    """A filled-in instance of an @xmlify dataclass, for documentation and tests."""
    values = {}
    hints = typing.get_type_hints(payload_class)
    for f in dataclasses.fields(payload_class):
        values[f.name] = _example_value(hints.get(f.name, str), f.name)
    return payload_class(**values)


def _example_value(tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is str:
        return name.replace("_", " ")
    if tp is bool:
        return True
    if tp is int:
        return 1
    if tp is float:
        return 1.5
    if origin in (list, set, frozenset):
        (item,) = typing.get_args(tp) or (str,)
        return origin([_example_value(item, name)])
    if origin is tuple:
        return tuple(_example_value(arg, name) for arg in typing.get_args(tp) if arg is not Ellipsis)
    if origin is dict:
        key, value = typing.get_args(tp)
        return {_example_value(key, name): _example_value(value, name)}
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        return _example_value(options[0], name) if options else None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return example_of(tp)
    return None


def _example_xml(payload_class: Any) -> str:
    try:
        tree = example_of(payload_class).xml_value()
        return etree.tostring(tree, pretty_print=True, encoding="unicode")
    except Exception as exc:  # an exotic field type: show the template instead
        tree = payload_class.xml()
        return etree.tostring(tree, pretty_print=True, encoding="unicode") + f"<!-- no example: {exc} -->\n"
