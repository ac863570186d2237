"""Loading and checking `organism.yaml` (DESIGN.md §3).

Every mistake is collected and reported together, each as `FILE:LINE: what is wrong`,
before anything starts: unknown keys, missing or mistyped fields, duplicate or reserved
names, peers that do not exist, an agent whose payload root tag is shared, a handler
that is not `async`, an import that fails (with the import error).
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from agentserver.limits import NAME_PATTERN, Limits, is_reserved

__all__ = ["ConfigError", "Checker", "ListenerConfig", "OrganismConfig", "load_config"]

class ConfigError(Exception):
    """One or more problems in a configuration file, each `FILE:LINE: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(slots=True)
class ListenerConfig:
    name: str
    payload_class: type
    handler: Callable
    description: str = ""
    agent: bool = False
    peers: list[str] | None = None  # None: not declared; []: declared empty (respond only)
    concurrency: int | None = None
    llm: Any = None  # agentserver.llm.AgentLlmConfig: its model and budgets; with prompt and reply_class, an LLM agent
    line: int = 0

    @property
    def llm_agent(self) -> bool:
        """Served by the built-in agent loop (an `llm:` block, no handler)."""
        return self.llm is not None and self.handler is None


@dataclass(slots=True)
class OrganismConfig:
    name: str
    socket: str = "run/agentserver.sock"
    tcp: str | None = None
    journal: str | None = None  # a SQLite file: what was accepted survives a crash (DESIGN.md §14)
    transport: str | None = None  # nats://HOST:PORT: the organism runs on NATS JetStream, one member per process (§15)
    http: str | None = None  # HOST:PORT (loopback) of /metrics, /healthz, /status and the live page (DESIGN.md §13)
    thread_scheduling: str = "breadth-first"
    max_concurrent_pipelines: int = 50
    max_concurrent_handlers: int = 20
    max_concurrent_per_agent: int = 5
    max_concurrent_per_listener: int = 10  # plain (non-agent) listeners: one hung listener cannot take every slot
    limits: Limits = field(default_factory=Limits)
    listeners: list[ListenerConfig] = field(default_factory=list)
    llm: Any = None  # agentserver.llm.LlmConfig: the model backends (the top-level llm: section)
    path: str = "<memory>"
    env: dict[str, str] = field(default_factory=dict, repr=False)  # the environment it was loaded with (.env included)


_TOP_KEYS = {"organism", "thread_scheduling", "max_concurrent_pipelines", "max_concurrent_handlers",
             "max_concurrent_per_agent", "max_concurrent_per_listener", "limits", "listeners", "llm"}
_ORGANISM_KEYS = {"name", "socket", "tcp", "journal", "http", "transport"}
_LISTENER_KEYS = {"name", "payload_class", "handler", "description", "agent", "peers", "concurrency", "llm"}


class Checker:
    """Walks the YAML node tree, converting values and collecting located problems."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._problems: list[tuple[int, str]] = []

    def problem(self, node: yaml.Node | None, message: str) -> None:
        self.problem_at(node.start_mark.line + 1 if node is not None else 1, message)

    def problem_at(self, line: int, message: str) -> None:
        self._problems.append((line, message))

    @property
    def problems(self) -> list[str]:
        return [f"{self.path}:{line}: {message}" for line, message in sorted(self._problems, key=lambda p: p[0])]

    def mapping(self, node: yaml.Node, what: str, allowed: set[str]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping")
            return {}
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.problem(key_node, f"unknown key {key!r} in {what} (known keys: {hint})")
            elif key in items:
                self.problem(key_node, f"key {key!r} appears twice in {what}")
            else:
                items[key] = (key_node, value_node)
        return items

    def scalar(self, node: yaml.Node, what: str, kind: type, *, positive: bool = False) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, f"{what} must be a {kind.__name__}")
            return None
        value: Any = yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(node, f"{what} must be a {kind.__name__}, not {node.value!r}")
            return None
        if positive and isinstance(value, (int, float)) and value <= 0:
            self.problem(node, f"{what} must be greater than 0, not {value}")
            return None
        return value

    def name(self, node: yaml.Node, what: str) -> str | None:
        value = self.scalar(node, what, str)
        if value is None:
            return None
        if not NAME_PATTERN.match(value):
            self.problem(node, f"{what} {value!r} is not a valid name (letters, digits, _ . -; starting with a letter or _)")
            return None
        return value

    def resolve(self, node: yaml.Node, what: str) -> Any:
        dotted = self.scalar(node, what, str)
        if dotted is None:
            return None
        module_name, _, attribute = dotted.rpartition(".")
        if not module_name:
            self.problem(node, f"{what} {dotted!r} must be a dotted path like package.module.Name")
            return None
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # the user's import error, whatever it is: where, what, and the fix
            from agentserver.authoring import explain_import_error

            self.problem(node, f"{what} {dotted!r}: {explain_import_error(module_name, exc)}")
            return None
        try:
            return getattr(module, attribute)
        except AttributeError:
            self.problem(node, f"{what} {dotted!r}: module {module_name!r} has no attribute {attribute!r}")
            return None


def load_config(path: str | os.PathLike[str], *, text: str | None = None, env: Mapping[str, str] | None = None) -> OrganismConfig:
    """Read and check a configuration. Raises ConfigError listing every problem.

    Import paths resolve against `sys.path` as it is; `env` (default: `os.environ`) is
    the environment secrets are read from."""
    shown = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{shown}:1: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        document = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{shown}:{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    check = Checker(shown)
    if document is None:
        raise ConfigError([f"{shown}:1: the file is empty (it needs organism: and listeners:)"])
    top = check.mapping(document, "the top level", _TOP_KEYS)
    config = OrganismConfig(name="", path=shown, env=dict(os.environ if env is None else env))

    if "organism" not in top:
        check.problem(document, "missing 'organism:' section (with at least a name)")
    else:
        organism = check.mapping(top["organism"][1], "organism", _ORGANISM_KEYS)
        if "name" not in organism:
            check.problem(top["organism"][0], "organism needs a name")
        else:
            config.name = check.scalar(organism["name"][1], "organism.name", str) or ""
        if "socket" in organism:
            config.socket = check.scalar(organism["socket"][1], "organism.socket", str) or config.socket
        if "journal" in organism:
            config.journal = check.scalar(organism["journal"][1], "organism.journal", str) or None
        if "tcp" in organism:
            tcp = check.scalar(organism["tcp"][1], "organism.tcp", str)
            if tcp is not None:
                host, _, port = tcp.rpartition(":")
                if not host or not port.isdigit() or not 0 < int(port) < 65536:
                    check.problem(organism["tcp"][1], f"organism.tcp must be HOST:PORT, not {tcp!r}")
                elif host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                    check.problem(organism["tcp"][1], f"organism.tcp must be a loopback address, not {host!r}")
                else:
                    config.tcp = tcp
        if "http" in organism:
            config.http = _loopback_http(check, organism["http"][1])
        if "transport" in organism:
            node = organism["transport"][1]
            config.transport = check.scalar(node, "organism.transport", str) or None
            problem = transport_problem(config.transport, config.journal)
            if problem:
                check.problem(node, problem)

    if "thread_scheduling" in top:
        node = top["thread_scheduling"][1]
        value = check.scalar(node, "thread_scheduling", str)
        if value is not None and value not in ("breadth-first", "depth-first"):
            check.problem(node, f"thread_scheduling must be breadth-first or depth-first, not {value!r}")
        elif value is not None:
            config.thread_scheduling = value
    for key in ("max_concurrent_pipelines", "max_concurrent_handlers", "max_concurrent_per_agent", "max_concurrent_per_listener"):
        if key in top:
            value = check.scalar(top[key][1], key, int, positive=True)
            if value is not None:
                setattr(config, key, value)

    if "limits" in top:
        limit_fields = {name: type(getattr(Limits(), name)) for name in Limits.__slots__}
        limits = check.mapping(top["limits"][1], "limits", set(limit_fields))
        for key, (_, value_node) in limits.items():
            value = check.scalar(value_node, f"limits.{key}", limit_fields[key], positive=True)
            if value is not None:
                setattr(config.limits, key, value)

    llm_agents: list[tuple[Any, yaml.Node]] = []  # (a listener's llm: block, its node)
    if "llm" in top:  # the llm package (httpx) is loaded only for organisms that use it
        from agentserver.llm.config import load_llm_section

        config.llm = load_llm_section(check, top["llm"][1], config.env)
    if "listeners" not in top:
        check.problem(document, "missing 'listeners:' (a list of listeners)")
    else:
        _load_listeners(check, top["listeners"][1], config, llm_agents)
    if llm_agents or config.llm is not None:
        from agentserver.llm.config import check_models

        check_models(check, config.llm, llm_agents)

    if check.problems:
        raise ConfigError(check.problems)
    return config


def transport_problem(transport: str | None, journal: str | None) -> str:
    """What is wrong with `organism.transport` (or `run --transport`), or ""."""
    if transport is None:
        return ""
    scheme, _, rest = transport.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme not in ("nats", "tls") or not host or not port.isdigit():
        return f"organism.transport must be nats://HOST:PORT (a NATS server with JetStream), not {transport!r}"
    if journal:
        return ("organism.journal and organism.transport do not go together: on NATS, JetStream keeps what was "
                "accepted (drop organism.journal)")
    return ""


def _loopback_http(check: Checker, node: yaml.Node) -> str | None:
    """`organism.http`: HOST:PORT on a loopback address (there is no TLS); port 0 takes a free one."""
    import ipaddress

    value = check.scalar(node, "organism.http", str)
    if value is None:
        return None
    host, _, port = value.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        check.problem(node, f"organism.http must be HOST:PORT (like 127.0.0.1:9100), not {value!r}")
        return None
    try:
        loopback = bare == "localhost" or ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        check.problem(node, f"organism.http must be a loopback address (127.0.0.1, ::1 or localhost; "
                            f"it has no TLS and no login), not {host!r}")
        return None
    return value


def _listener_llm(check: Checker, fields: dict[str, tuple[yaml.Node, yaml.Node]], label: str) -> Any:
    """A listener's `llm:` block. With a handler it only sets what `meta.llm` uses (model,
    limits, budget); without one it makes an LLM agent, which needs prompt and reply_class."""
    from agentserver.llm.config import load_agent_llm

    node = fields["llm"][1]
    agent = load_agent_llm(check, node)
    if "handler" in fields and (agent.prompt is not None or agent.reply_class is not None):
        check.problem(node, f"{label} has both handler: and an llm: agent (prompt, reply_class): an LLM agent is served "
                            "by the built-in agent loop; remove handler:, or keep it and leave prompt and reply_class out "
                            "(a handler calls meta.llm with the llm: block's model and budget)")
    elif "handler" not in fields and (agent.prompt is None or agent.reply_class is None):
        missing = " and ".join(key for key in ("prompt", "reply_class") if getattr(agent, key) is None)
        check.problem(node, f"{label} is an LLM agent (llm: without handler:) and needs {missing}")
    return agent


def _load_listeners(check: Checker, node: yaml.Node, config: OrganismConfig, llm_agents: list[tuple[Any, yaml.Node]]) -> None:
    if not isinstance(node, yaml.SequenceNode):
        check.problem(node, "listeners must be a list")
        return
    seen: dict[str, int] = {}
    peer_nodes: list[tuple[ListenerConfig, list[tuple[str, yaml.Node]]]] = []
    for item in node.value:
        fields = check.mapping(item, "a listener", _LISTENER_KEYS)
        line = item.start_mark.line + 1
        for required in ("name", "payload_class", "handler"):
            if required == "handler" and "llm" in fields:
                continue  # an LLM agent: the built-in agent loop is its handler
            if required not in fields and isinstance(item, yaml.MappingNode):
                check.problem(item, f"listener is missing {required!r}" + (" (or an llm: block, for an LLM agent)" if required == "handler" else ""))
        name = check.name(fields["name"][1], "listener name") if "name" in fields else None
        if name is not None:
            if is_reserved(name):
                check.problem(fields["name"][1], f"listener name {name!r} is reserved for the pump (system, core)")
            elif name in seen:
                check.problem(fields["name"][1], f"duplicate listener name {name!r} (first at line {seen[name]})")
            else:
                seen[name] = line
        label = f"listener {name!r}" if name else "listener"
        payload_class = handler = None
        if "payload_class" in fields:
            payload_class = check.resolve(fields["payload_class"][1], f"{label} payload_class")
            if payload_class is not None and not (
                isinstance(payload_class, type) and hasattr(payload_class, "xsd") and hasattr(payload_class, "parse")
            ):
                check.problem(fields["payload_class"][1], f"{label} payload_class {payload_class!r} is not an @xmlify dataclass")
                payload_class = None
        if "handler" in fields:
            handler = check.resolve(fields["handler"][1], f"{label} handler")
            if handler is not None and not inspect.iscoroutinefunction(handler):
                kind = "not callable" if not callable(handler) else "not async"
                check.problem(fields["handler"][1], f"{label} handler is {kind}: define it with 'async def'")
                handler = None
        listener = ListenerConfig(name=name or "", payload_class=payload_class, handler=handler, line=line)  # type: ignore[arg-type]
        if "description" in fields:
            listener.description = check.scalar(fields["description"][1], f"{label} description", str) or ""
        if "agent" in fields:
            listener.agent = bool(check.scalar(fields["agent"][1], f"{label} agent", bool))
        if "concurrency" in fields:
            listener.concurrency = check.scalar(fields["concurrency"][1], f"{label} concurrency", int, positive=True)
        if "llm" in fields:
            listener.llm = _listener_llm(check, fields, label)
            llm_agents.append((listener.llm, fields["llm"][1]))
        peers: list[tuple[str, yaml.Node]] = []
        if "peers" in fields:
            peers_node = fields["peers"][1]
            if not isinstance(peers_node, yaml.SequenceNode):
                check.problem(peers_node, f"{label} peers must be a list of listener names")
            else:
                for peer_node in peers_node.value:
                    peer = check.scalar(peer_node, f"{label} peer", str)
                    if peer is not None:
                        peers.append((peer, peer_node))
        listener.peers = [peer for peer, _ in peers] if "peers" in fields else None
        peer_nodes.append((listener, peers))
        config.listeners.append(listener)

    for listener, peers in peer_nodes:
        for peer, peer_node in peers:
            if peer not in seen:
                check.problem(peer_node, f"listener {listener.name!r} names peer {peer!r}, which is not a listener")

    by_tag: dict[str, list[ListenerConfig]] = {}
    for listener in config.listeners:
        if listener.payload_class is not None:
            by_tag.setdefault(listener.payload_class.__name__, []).append(listener)
    for tag, sharing in by_tag.items():
        classes = {id(listener.payload_class) for listener in sharing}
        if len(classes) > 1:
            lines = ", ".join(str(listener.line) for listener in sharing)
            for listener in sharing:
                check.problem_at(listener.line, f"root tag <{tag}> names different classes (listeners at lines {lines})")
        if len(sharing) > 1:
            for listener in sharing:
                if listener.agent:
                    others = ", ".join(repr(other.name) for other in sharing if other is not listener)
                    check.problem_at(
                        listener.line,
                        f"agent {listener.name!r} shares its payload root tag <{tag}> with {others}; an agent's root tag must be its own",
                    )
