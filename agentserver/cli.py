"""`python -m agentserver VERB ...` (or the installed `agentserver` script): run an
organism and talk to it.

Every verb exits with the codes of EXIT_CODES: 0 ok; 1 refused or failed (a <huh>, a
SystemError, malformed input or arguments: one line on stderr, never a traceback);
2 timeout; 3 cannot reach the server, or the connection was lost; 4 configuration
error. A bare `python -m agentserver` prints the help and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap
import uuid
from datetime import datetime, timezone
from typing import Any, NoReturn, Sequence

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_TIMEOUT", "EXIT_UNREACHABLE", "EXIT_CONFIG"]

EXIT_OK = 0
EXIT_FAILED = 1  # refused (<huh>), failed (SystemError), malformed input or arguments
EXIT_TIMEOUT = 2  # no ack / reply / answer in time
EXIT_UNREACHABLE = 3  # no server answers, it refused this client, or the connection was lost
EXIT_CONFIG = 4  # the configuration (or the journal file) cannot be used

EXIT_CODES = """\
exit codes (every verb):
  0  ok
  1  refused or failed: a <huh>, a SystemError, malformed input or arguments
     (one line on stderr, never a traceback)
  2  timeout: no ack, reply or answer in time
  3  cannot reach the server, or the connection was lost
  4  configuration error (bad organism.yaml, unusable journal file)"""

EXAMPLES = {
    "run": """\
        Load .env, check the configuration, boot the organism and serve it on its socket
        until SIGINT or SIGTERM (then drain in-flight work and exit 0).
        Exit 4 when the configuration or the journal file cannot be used, 1 when the
        server cannot start (socket in use, no token for --tcp, NATS unreachable, a
        member whose configuration differs from the organism's) or the pump failed.

        With --transport (or organism.transport) the process is one member of an organism
        on NATS JetStream: start several with the same CONFIG and URL, each on its own
        --socket; they share the handler work, and a member that dies loses nothing acked.

        example:
          python -m agentserver run config/organism.yaml
          python -m agentserver run config/organism.yaml --socket /tmp/hello.sock --log-level DEBUG
          python -m agentserver run config/organism.yaml --transport nats://127.0.0.1:4222 --socket run/a.sock""",
    "send": """\
        Send one payload and print its thread id once the server has accepted it (its ack;
        with a journal: once it is on disk). Replies are not awaited. A refusal prints
        its thread id, the code and the full reason (from the server's dead letters).

        example:
          python -m agentserver send --to greeter '<Greeting><Name>Ada</Name></Greeting>'
          echo '<Greeting><Name>Ada</Name></Greeting>' | python -m agentserver send --to greeter -""",
    "ask": """\
        Send one payload and print the reply's payload XML (--json: {"thread", "sender",
        "xml"}). A refusal prints its thread id, the code and the full reason (from the
        server's dead letters). --timeout defaults to the conversation timeout the server
        announces, plus 5 s, so the server's own timeout error arrives first.

        example:
          python -m agentserver ask --to greeter '<Greeting><Name>Ada</Name></Greeting>'
          -> <GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>""",
    "cancel": """\
        Cancel an open conversation by the thread id it was started with: its handlers
        stop and its caller hears SystemError `cancelled`.
        On the Unix socket (the owner) any open conversation; over TCP only this client's.
        Exit 0 when cancelled, 1 when there is no such open conversation.

        example:
          python -m agentserver cancel 3f2a...-000000000001""",
    "watch": """\
        Print every hop as it happens, one line each: time, conversation, from -> to,
        root tag, bytes, outcome, duration (over TCP: only this client's conversations).
        Runs until Ctrl-C (exit 0), --count hops, or the server goes (exit 3). Hops this
        side cannot print in time are dropped, never queued without bound.

        example:
          python -m agentserver watch
          python -m agentserver watch --json --count 100 > hops.jsonl""",
    "check": """\
        Check a configuration without starting anything and print its routing table:
        root tag, listeners, kind, peers, concurrency. Problems are printed as FILE:LINE: what
        (exit 4).

        example:
          python -m agentserver check config/organism.yaml""",
    "schema": """\
        Print a listener's XSD, an example payload, and for agents the usage instructions
        (the text an LLM agent gets: its peers' schemas and the response rules).

        example:
          python -m agentserver schema config/organism.yaml greeter""",
    "status": """\
        Print the running server's state: uptime, counters, every listener (with p50/p99
        handler time) and the open conversations (age, what each waits on). --json prints
        the whole status document (the schema in the README).

        example:
          python -m agentserver status
          python -m agentserver status --json""",
    "deadletters": """\
        Print the most recent dead letters (messages that could not be delivered), oldest
        first: time (ISO-8601, UTC), code, thread, sender, the step that refused them and
        the full reason. --json prints one JSON object per line, with the bytes (truncated).

        example:
          python -m agentserver deadletters --limit 20""",
    "journal": """\
        Show what a journal file holds, without changing it (opened read-only): organism,
        schema version, size, units not done by kind, open conversations, the oldest
        unit's age and the remembered message ids. Works with the server stopped or running.
        Exit 4 when the file is missing, damaged or not an agentserver journal.

        example:
          python -m agentserver journal inspect run/journal.sqlite
          python -m agentserver journal inspect run/journal.sqlite --json""",
}

ASK_TIMEOUT_MARGIN_S = 5.0  # `ask` waits this much longer than the server's conversation timeout
DEFAULT_TIMEOUT_S = 30.0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error exiting 1 (malformed arguments), not 2 (a timeout here)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILED, f"{self.prog}: error: {message}\n")


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("agentserver")
    except (ImportError, PackageNotFoundError):
        from agentserver import __version__

        return __version__


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata costs startup time)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"agentserver {_version()}")
        parser.exit(EXIT_OK)


def _uuid(text: str) -> str:
    try:
        uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID (e.g. {uuid.uuid4()})") from None
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m agentserver",
        description="agentserver: an XML message pump for multi-agent systems.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            start here:
              python -m agentserver run config/organism.yaml        # in one terminal
              python -m agentserver ask --to greeter '<Greeting><Name>Ada</Name></Greeting>'

            'python -m agentserver VERB --help' explains each verb; the installed
            'agentserver' command is the same as 'python -m agentserver'.

            """) + EXIT_CODES,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, summary: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=summary, description=textwrap.dedent(EXAMPLES[name]), epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def connection_options(p: argparse.ArgumentParser, timeout_help: str = "how long to wait (default 30)") -> None:
        p.add_argument("--socket", metavar="PATH", help="Unix socket of the server (default: $AGENTSERVER_SOCKET, "
                       "the socket named in --config, or run/agentserver.sock)")
        p.add_argument("--config", metavar="CONFIG", help="take the socket path from this organism.yaml")
        p.add_argument("--tcp", metavar="HOST:PORT", help="connect over TCP instead (token from $AGENTSERVER_TOKEN)")
        p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help=timeout_help)

    def json_option(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--json", action="store_true", help=what)

    def message_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("xml", metavar="XML", help="the payload element, e.g. '<Greeting><Name>Ada</Name></Greeting>'; - reads stdin")
        p.add_argument("--to", metavar="NAME", help="the listener to send to (default: every listener of the root tag)")
        p.add_argument("--from", dest="sender", metavar="NAME", help="this client's name (default: a random client-xxxxxxxx)")

    run = verb("run", "serve an organism on its socket")
    run.add_argument("config", metavar="CONFIG", help="the organism's YAML, e.g. config/organism.yaml")
    run.add_argument("--socket", metavar="PATH", help="Unix socket path (default: organism.socket in CONFIG)")
    run.add_argument("--tcp", metavar="HOST:PORT", help="also listen on this loopback address (needs AGENTSERVER_TOKEN)")
    run.add_argument("--transport", metavar="URL", help="run as a member of the organism on this NATS JetStream server "
                     "(nats://HOST:PORT; default: organism.transport in CONFIG, else one process alone)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")

    send = verb("send", "send a payload, print its thread id")
    message_options(send)
    send.add_argument("--thread", type=_uuid, metavar="UUID", help="continue this thread (default: a new one)")
    send.add_argument("--message-id", type=_uuid, metavar="UUID",
                      help="the message's own id: resending it after a lost ack is safe (the server "
                           "acks a repeat again and does not process it twice)")
    connection_options(send, "how long to wait for the ack (default 30)")

    ask = verb("ask", "send a payload and print the reply")
    message_options(ask)
    json_option(ask, 'print the reply as JSON: {"thread", "sender", "xml"}')
    connection_options(ask, "how long to wait for the reply (default: the server's conversation timeout + 5)")

    cancel = verb("cancel", "cancel an open conversation")
    cancel.add_argument("thread", metavar="THREAD", help="the thread id the conversation was started with")
    cancel.add_argument("--from", dest="sender", metavar="NAME", help="this client's name (default: a random one)")
    connection_options(cancel)

    watch = verb("watch", "print every hop as it happens")
    json_option(watch, "print one JSON object per hop and line")
    watch.add_argument("--count", type=int, metavar="N", help="stop after N hops")
    connection_options(watch, "how long to wait for the server to start the watch (default 30)")

    check = verb("check", "validate a configuration, print the routing table")
    check.add_argument("config", metavar="CONFIG")

    schema = verb("schema", "print a listener's XSD, example and usage instructions")
    schema.add_argument("config", metavar="CONFIG")
    schema.add_argument("name", metavar="NAME", help="the listener")

    status = verb("status", "print the running server's state")
    json_option(status, "print the whole status document as JSON")
    connection_options(status)

    dead = verb("deadletters", "print recent undeliverable messages")
    dead.add_argument("--limit", type=int, default=50, metavar="N", help="how many (default 50)")
    json_option(dead, "print one JSON object per line (with the message's bytes)")
    connection_options(dead)

    journal = verb("journal", "inspect a journal file (journal inspect PATH)")
    actions = journal.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser("inspect", help="show what a journal file holds (read-only)",
                                 description=textwrap.dedent(EXAMPLES["journal"]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("path", metavar="PATH", help="the journal file (organism.journal), e.g. run/journal.sqlite")
    json_option(inspect, "print it as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verb is None:  # a bare `python -m agentserver`: the help, not an error
        parser.print_help()
        return EXIT_OK
    handler = {
        "run": _run,
        "send": _send,
        "ask": _ask,
        "cancel": _cancel,
        "watch": _watch,
        "check": _check,
        "schema": _schema,
        "status": _status,
        "deadletters": _deadletters,
        "journal": _journal,
    }[args.verb]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


# -- server side -------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from agentserver import startup

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    startup.prepare_process()
    code = asyncio.run(startup.serve(args.config, socket_path=args.socket, tcp=args.tcp, transport=args.transport))
    # serve() says "configuration" with its own EXIT_CONFIG (2): here 2 means a timeout
    return EXIT_CONFIG if code == startup.EXIT_CONFIG else code


def _load(config_path: str):
    from agentserver.config import ConfigError
    from agentserver.journal import JournalError
    from agentserver.message_bus.bootstrap import bootstrap
    from agentserver.startup import prepare_process

    prepare_process()
    try:
        return bootstrap(config_path, journal=False)  # check and schema only look: the journal file is left alone
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    except JournalError as exc:
        print(_one_line(exc), file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    pump = _load(args.config)
    if pump is None:
        return EXIT_CONFIG
    config = pump.config
    rows = [("ROOT TAG", "LISTENER", "KIND", "PEERS", "CONCURRENCY")]
    for tag, listeners in pump.routes.table():
        for listener in listeners:
            if listener.system:
                continue
            kind = "agent" if listener.agent else "handler"
            peers = ", ".join(sorted(listener.peers)) if listener.peers else ("(none: respond only)" if listener.agent else "(any)")
            rows.append((f"<{tag}>", listener.name, kind, peers, str(listener.concurrency)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    print(f"{config.path}: organism {config.name!r} is valid; socket {config.socket}" + (f", tcp {config.tcp}" if config.tcp else ""))
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _schema(args: argparse.Namespace) -> int:
    pump = _load(args.config)
    if pump is None:
        return EXIT_CONFIG
    listener = pump.routes.by_name.get(args.name)
    if listener is None or listener.system:
        known = ", ".join(sorted(name for name, l in pump.routes.by_name.items() if not l.system))
        print(f"no listener named {args.name!r} (listeners: {known})", file=sys.stderr)
        return EXIT_FAILED
    print(f"# {listener.name}: <{listener.root_tag}>" + (f" — {listener.description}" if listener.description else ""))
    print("\n## XSD\n" + listener.payload_type.xsd_text.rstrip())
    print("\n## Example\n" + listener.example_xml.rstrip())
    if listener.agent:
        print("\n## Usage instructions\n" + listener.usage_instructions)
    return 0



# -- client side -------------------------------------------------------------------------
class _Exit(Exception):
    """Leave a verb with this exit code (its message is already printed)."""

    def __init__(self, code: int) -> None:
        self.code = code


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return args.socket
    if args.config:
        from agentserver.config import ConfigError, load_config

        try:
            return load_config(args.config).socket
        except ConfigError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            raise _Exit(EXIT_CONFIG)
    from agentserver.client import DEFAULT_SOCKET

    return os.environ.get("AGENTSERVER_SOCKET") or DEFAULT_SOCKET


def _payload(args: argparse.Namespace) -> str:
    """The payload text, checked before connecting: malformed input is one line, exit 1."""
    from agentserver.protocol import CLIENT_MAX_FRAME
    from agentserver.sender import payload_to_element
    from agentserver.xmlsafe import SafeXml

    text = sys.stdin.read() if args.xml == "-" else args.xml
    try:
        payload_to_element(text, SafeXml(CLIENT_MAX_FRAME))  # as the client will, when it sends it
    except (ValueError, TypeError, SyntaxError) as exc:  # lxml's XMLSyntaxError is a SyntaxError
        print(f"not a payload: {_one_line(exc) or type(exc).__name__}", file=sys.stderr)
        raise _Exit(EXIT_FAILED)
    return text


def _client_verb(args: argparse.Namespace, work) -> int:
    """Connect, run `work(client)`, map what goes wrong to the exit codes."""
    try:
        payload = _payload(args) if hasattr(args, "xml") else None
        return asyncio.run(_with_client(args, work, payload))
    except _Exit as exit:
        return exit.code


async def _with_client(args: argparse.Namespace, work, payload: str | None) -> int:
    from agentserver.client import ControlError, connect

    where = f"tcp {args.tcp}" if args.tcp else _socket_path(args)
    try:
        client = await connect(None if args.tcp else where, name=getattr(args, "sender", None), tcp=args.tcp,
                               timeout=min(args.timeout or 10.0, 10.0))
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"no server answers on {where} (start one: python -m agentserver run config/organism.yaml)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ControlError as exc:
        print(f"the server refused this client: {_one_line(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (OSError, TimeoutError) as exc:
        print(f"cannot connect to {where}: {_one_line(exc) or type(exc).__name__}", file=sys.stderr)
        return EXIT_UNREACHABLE
    async with client:
        try:
            return await (work(client) if payload is None else work(client, payload))
        except TimeoutError:
            print(f"no answer from the server within {args.timeout or DEFAULT_TIMEOUT_S}s", file=sys.stderr)
            return EXIT_TIMEOUT
        except ConnectionError as exc:
            print(f"connection lost: {_one_line(exc)}", file=sys.stderr)
            return EXIT_UNREACHABLE


async def _refusal(client, exc) -> str:
    """`refused (code) thread=...: canned; reason: full reason`, the full reason read from
    the server's dead letter for that thread (only the owner, or the sender over TCP, sees it)."""
    reason = ""
    if exc.thread_id:
        try:
            async with asyncio.timeout(5.0):
                letters = await client.deadletters()
        except (ConnectionError, TimeoutError):
            letters = []
        mine = [letter for letter in letters if exc.thread_id in (letter.get("conversation"), letter.get("thread"))]
        exact = [letter for letter in mine if str(letter.get("code")) == exc.code]
        if exact or mine:
            reason = _one_line((exact or mine)[-1].get("reason", ""))
    line = f"refused ({exc.code}) thread={exc.thread_id or '?'}: {exc.message.rstrip('.')}"
    return line + (f"; reason: {reason}" if reason else "")


def _send(args: argparse.Namespace) -> int:
    from agentserver.outbound import HuhError

    timeout = args.timeout or DEFAULT_TIMEOUT_S

    async def work(client, payload: str) -> int:
        try:
            accepted = await client.send(payload, to=args.to, thread_id=args.thread,
                                         message_id=args.message_id, timeout=timeout)
        except (ValueError, TypeError, SyntaxError) as exc:
            print(f"not a payload: {_one_line(exc)}", file=sys.stderr)
            return EXIT_FAILED
        except HuhError as exc:  # the server's <huh> for this message: it was not accepted
            print(await _refusal(client, exc), file=sys.stderr)
            return EXIT_FAILED
        except TimeoutError:
            print(f"no ack within {timeout}s: the message may or may not have been accepted "
                  "(send it again with the same --message-id to be sure)", file=sys.stderr)
            return EXIT_TIMEOUT
        print(accepted)  # acked: accepted (with a journal: on disk)
        return EXIT_OK

    return _client_verb(args, work)


def _ask(args: argparse.Namespace) -> int:
    from agentserver.outbound import AskTimeout, HuhError, RemoteError

    async def work(client, payload: str) -> int:
        timeout = args.timeout
        if timeout is None:  # outlast the server's own conversation timeout, so its error reaches us
            announced = client.conversation_timeout
            timeout = announced + ASK_TIMEOUT_MARGIN_S if announced else DEFAULT_TIMEOUT_S
        try:
            reply = await client.ask(payload, to=args.to, timeout=timeout)
        except (ValueError, TypeError, SyntaxError) as exc:
            print(f"not a payload: {_one_line(exc)}", file=sys.stderr)
            return EXIT_FAILED
        except HuhError as exc:
            print(await _refusal(client, exc), file=sys.stderr)
            return EXIT_FAILED
        except RemoteError as exc:
            print(f"failed ({exc.code}) thread={exc.thread_id}: {_one_line(exc.message)}", file=sys.stderr)
            return EXIT_FAILED
        except AskTimeout:
            print(f"no reply within {timeout}s", file=sys.stderr)
            return EXIT_TIMEOUT
        xml = reply.xml if isinstance(reply.xml, str) else reply.xml.decode("utf-8")
        if args.json:
            print(json.dumps({"thread": reply.thread_id, "sender": reply.sender, "xml": xml}))
        else:
            print(xml)
        return EXIT_OK

    return _client_verb(args, work)


def _cancel(args: argparse.Namespace) -> int:
    async def work(client) -> int:
        async with asyncio.timeout(args.timeout or DEFAULT_TIMEOUT_S):
            cancelled = await client.cancel(args.thread)
        if not cancelled:
            print(f"no open conversation {args.thread} of this client to cancel", file=sys.stderr)
            return EXIT_FAILED
        print(f"cancelled {args.thread}")
        return EXIT_OK

    return _client_verb(args, work)


def _watch(args: argparse.Namespace) -> int:
    async def work(client) -> int:
        seen = 0
        if args.count is not None and args.count < 1:
            return EXIT_OK
        async for hop in client.watch():
            print(json.dumps(hop, sort_keys=True) if args.json else _hop_line(hop), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
        return EXIT_OK

    try:
        return _client_verb(args, work)
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        return EXIT_OK


def _hop_line(hop: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(float(hop.get("time", 0.0)), timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    return (f"{when} {hop.get('conversation', '')} {hop.get('sender', '')} -> {hop.get('to', '')} "
            f"<{hop.get('root_tag', '')}> {hop.get('bytes', 0)} B {hop.get('outcome', '')} "
            f"{float(hop.get('duration_s', 0.0)) * 1000:.1f} ms")


def _status(args: argparse.Namespace) -> int:
    async def work(client) -> int:
        async with asyncio.timeout(args.timeout or DEFAULT_TIMEOUT_S):
            status = await client.status()
        print(json.dumps(status, indent=2, sort_keys=True) if args.json else _status_text(status))
        return EXIT_OK

    return _client_verb(args, work)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _status_text(status: dict[str, Any]) -> str:
    counters = status.get("counters", {})
    uptime = float(status.get("uptime_s") or 0.0)
    started = _iso(datetime.now(timezone.utc).timestamp() - uptime)
    lines = [f"organism {status.get('organism')} (agentserver {status.get('version')}), up {uptime:.0f}s "
             f"(since {started})"]
    lines.append("  " + " ".join(f"{key}={counters[key]}" for key in
                                 ("accepted", "handled", "errored", "in_flight", "queued", "parked", "dead_letters")
                                 if key in counters))
    if counters.get("errored_by_reason"):
        lines.append("  errored: " + ", ".join(f"{code}={n}" for code, n in counters["errored_by_reason"].items()))
    rows: list[tuple[str, ...]] = [
        ("LISTENER", "KIND", "DELIVERED", "HANDLED", "ERRORED", "RUNNING", "WAITING", "P50 MS", "P99 MS")]
    for name, listener in status.get("listeners", {}).items():
        rows.append((name, str(listener.get("kind")), *(str(listener.get(key, "")) for key in
                     ("delivered", "handled", "errored", "running", "waiting")),
                     _ms(listener.get("p50_ms")), _ms(listener.get("p99_ms"))))
    lines.append("")
    lines.extend(_table(rows))
    conversations = status.get("conversations", {})
    lines.append("")
    lines.append(f"open conversations: {conversations.get('open', 0)}")
    for c in conversations.get("shown", []):
        waiting = "; ".join(c.get("waiting_on") or []) or "nothing"
        lines.append(f"  {c.get('id')} client={c.get('client')} age={c.get('age_s')}s idle={c.get('idle_s')}s "
                     f"hops={c.get('hops')} waiting on: {waiting}")
    members = status.get("members")
    if members:  # on NATS JetStream: the organism-wide view (DESIGN.md §15)
        lines += ["", f"on {members.get('transport')} ({'connected' if members.get('connected') else 'NATS AWAY'}), "
                      f"this member {members.get('member')}; members: {len(members.get('members', []))}; "
                      f"conversations adopted: {members.get('adopted', 0)}"]
        lines.extend("  " + row for row in _table(
            [("MEMBER", "PID", "SOCKET", "EXECUTED", "RUNNING")] +
            [(str(m.get("id")), str(m.get("pid")), str(m.get("socket")), str(m.get("executed")), str(m.get("running")))
             for m in members.get("members", [])]))
        lines.extend("  " + row for row in _table(
            [("LISTENER", "PENDING", "IN FLIGHT", "CAP", "REDELIVERED")] +
            [(name, str(w.get("pending")), str(w.get("in_flight")), str(w.get("cap")), str(w.get("redelivered")))
             for name, w in members.get("listeners", {}).items()]))
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _deadletters(args: argparse.Namespace) -> int:
    async def work(client) -> int:
        async with asyncio.timeout(args.timeout or DEFAULT_TIMEOUT_S):
            letters = await client.deadletters(args.limit)
        for record in letters:
            if args.json:
                print(json.dumps(record, sort_keys=True))
            else:
                thread = record.get("conversation") or record.get("thread") or "-"
                print(f"{record.get('time')} {record.get('code')} thread={thread} from={record.get('sender')} "
                      f"step={record.get('step')}: {_one_line(record.get('reason', ''))}")
        return EXIT_OK

    return _client_verb(args, work)


# -- files -------------------------------------------------------------------------------
def _journal(args: argparse.Namespace) -> int:
    try:
        report = _inspect_journal(args.path)
    except _Exit as exit:
        return exit.code
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else _journal_text(report))
    return EXIT_OK


def _inspect_journal(path_text: str) -> dict[str, Any]:
    """What the journal at `path_text` holds, read through a read-only connection (the
    file, its WAL and its schema are left exactly as they are)."""
    import sqlite3
    from pathlib import Path

    from agentserver.journal import SCHEMA_VERSION

    path = Path(path_text)

    def refuse(why: str) -> NoReturn:
        print(f"{path}: {why}", file=sys.stderr)
        raise _Exit(EXIT_CONFIG)

    if not path.is_file():
        refuse("no such journal file")
    # no WAL beside it: no server has it open and nothing waits to be checkpointed, so open it
    # immutable (SQLite would otherwise create an empty -wal and -shm, even read-only)
    options = "mode=ro" if Path(f"{path}-wal").exists() else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?{options}", uri=True)
    except sqlite3.Error as exc:
        refuse(f"cannot open it read-only ({_one_line(exc)})")
    try:
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            refuse(f"the journal is damaged ({_one_line(check)})")
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = {"meta", "units", "conversations", "seen"} - tables
        if missing:
            refuse(f"not an agentserver journal (no table {', '.join(sorted(missing))})")
        meta = dict(db.execute("SELECT key, value FROM meta"))
        units_by_kind = dict(db.execute("SELECT kind, count(*) FROM units GROUP BY kind ORDER BY kind"))
        oldest = db.execute("SELECT u.seq, u.conversation, u.kind, c.started FROM units u "
                            "LEFT JOIN conversations c ON c.key = u.conversation ORDER BY u.seq LIMIT 1").fetchone()
        conversations = db.execute("SELECT count(*), min(started) FROM conversations").fetchone()
        seen = db.execute("SELECT count(*), min(time), max(time) FROM seen").fetchone()
        counts = {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                  for table in ("threads", "history", "todos", "calls") if table in tables}
    except sqlite3.Error as exc:
        refuse(f"not a journal SQLite can read ({_one_line(exc)})")
    finally:
        db.close()
    now = datetime.now(timezone.utc).timestamp()
    sizes = {}
    for key, file in (("bytes", path), ("wal_bytes", Path(f"{path}-wal"))):
        sizes[key] = file.stat().st_size if file.exists() else 0
    created = meta.get("created")
    return {
        "path": str(path),
        "organism": meta.get("organism"),
        "schema_version": meta.get("schema_version"),
        "schema_version_supported": meta.get("schema_version") == SCHEMA_VERSION,
        "created": _iso(float(created)) if created else None,
        **sizes,
        "units_not_done": sum(units_by_kind.values()),
        "units_by_kind": units_by_kind,
        "oldest_unit": None if oldest is None else {
            "seq": oldest[0], "conversation": oldest[1], "kind": oldest[2],
            "conversation_started": _iso(oldest[3]) if oldest[3] is not None else None,
            "age_s": round(now - oldest[3], 3) if oldest[3] is not None else None,
        },
        "open_conversations": conversations[0],
        "oldest_conversation_started": _iso(conversations[1]) if conversations[1] is not None else None,
        "dedupe_ids": seen[0],
        "dedupe_oldest": _iso(seen[1]) if seen[1] is not None else None,
        "dedupe_newest": _iso(seen[2]) if seen[2] is not None else None,
        "rows": counts,
    }


def _journal_text(report: dict[str, Any]) -> str:
    version = report["schema_version"]
    supported = "" if report["schema_version_supported"] else " (not the version this agentserver writes)"
    kinds = ", ".join(f"{kind} {n}" for kind, n in report["units_by_kind"].items())
    lines = [
        f"journal {report['path']}",
        f"  organism: {report['organism']}",
        f"  schema version: {version}{supported}",
        f"  created: {report['created'] or '-'}",
        f"  size: {report['bytes']} bytes (+ {report['wal_bytes']} bytes of WAL)",
        f"  units not done: {report['units_not_done']}" + (f" ({kinds})" if kinds else ""),
    ]
    oldest = report["oldest_unit"]
    if oldest is not None:
        age = f", its conversation started {oldest['conversation_started']} ({oldest['age_s']:.0f}s ago)" \
            if oldest["age_s"] is not None else ""
        lines.append(f"  oldest unit: seq {oldest['seq']} ({oldest['kind']}){age}")
    lines.append(f"  open conversations: {report['open_conversations']}"
                 + (f" (oldest started {report['oldest_conversation_started']})"
                    if report["oldest_conversation_started"] else ""))
    lines.append(f"  dedupe ids remembered: {report['dedupe_ids']}"
                 + (f" ({report['dedupe_oldest']} .. {report['dedupe_newest']})" if report["dedupe_ids"] else ""))
    if report["rows"]:
        lines.append("  rows: " + ", ".join(f"{table} {n}" for table, n in report["rows"].items()))
    return "\n".join(lines)
