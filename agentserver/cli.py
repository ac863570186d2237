"""`python -m agentserver VERB ...`: run an organism and talk to it.

Exit codes of the client verbs: 0 ok; 1 the server refused (a <huh>) or the
conversation failed (SystemError); 2 timeout; 3 no server to talk to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap

__all__ = ["main"]

EXAMPLES = {
    "run": """\
        Load .env, check the configuration, boot the organism and serve it on its socket
        until SIGINT or SIGTERM (then drain in-flight work and exit 0).

        example:
          python -m agentserver run config/organism.yaml
          python -m agentserver run config/organism.yaml --socket /tmp/hello.sock --log-level DEBUG""",
    "send": """\
        Send one payload and print its thread id once the server has accepted it (its ack;
        with a journal: once it is on disk). Replies are not awaited.
        Exit 0 when acked, 1 on a <huh> (reason on stderr), 2 when no ack came in time.

        example:
          python -m agentserver send --to greeter '<Greeting><Name>Ada</Name></Greeting>'
          echo '<Greeting><Name>Ada</Name></Greeting>' | python -m agentserver send --to greeter -""",
    "ask": """\
        Send one payload and print the reply's payload XML.
        Exit 0 on a reply, 1 on a <huh> or SystemError (reason on stderr), 2 on timeout.

        example:
          python -m agentserver ask --to greeter '<Greeting><Name>Ada</Name></Greeting>'
          -> <GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>""",
    "check": """\
        Check a configuration without starting anything and print its routing table:
        root tag, listeners, kind, peers, concurrency. Problems are printed as FILE:LINE: what.

        example:
          python -m agentserver check config/organism.yaml""",
    "schema": """\
        Print a listener's XSD, an example payload, and for agents the usage instructions
        (the text an LLM agent gets: its peers' schemas and the response rules).

        example:
          python -m agentserver schema config/organism.yaml greeter""",
    "status": """\
        Print the running server's counters (accepted, handled, errored by reason, in flight,
        per listener), queues and open conversations, as JSON.

        example:
          python -m agentserver status""",
    "deadletters": """\
        Print the most recent dead letters (messages that could not be delivered): time,
        reason, sender, the step that refused them and their bytes (truncated), as JSON lines.

        example:
          python -m agentserver deadletters --limit 20""",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agentserver",
        description="agentserver: an XML message pump for multi-agent systems.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            start here:
              python -m agentserver run config/organism.yaml        # in one terminal
              python -m agentserver ask --to greeter '<Greeting><Name>Ada</Name></Greeting>'

            'python -m agentserver VERB --help' explains each verb."""),
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, summary: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=summary, description=textwrap.dedent(EXAMPLES[name]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)

    def connection_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--socket", metavar="PATH", help="Unix socket of the server (default: $AGENTSERVER_SOCKET, "
                       "the socket named in --config, or run/agentserver.sock)")
        p.add_argument("--config", metavar="CONFIG", help="take the socket path from this organism.yaml")
        p.add_argument("--tcp", metavar="HOST:PORT", help="connect over TCP instead (token from $AGENTSERVER_TOKEN)")
        p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="how long to wait (default 30)")

    def message_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("xml", metavar="XML", help="the payload element, e.g. '<Greeting><Name>Ada</Name></Greeting>'; - reads stdin")
        p.add_argument("--to", metavar="NAME", help="the listener to send to (default: every listener of the root tag)")
        p.add_argument("--from", dest="sender", metavar="NAME", help="this client's name (default: a random client-xxxxxxxx)")

    run = verb("run", "serve an organism on its socket")
    run.add_argument("config", metavar="CONFIG", help="the organism's YAML, e.g. config/organism.yaml")
    run.add_argument("--socket", metavar="PATH", help="Unix socket path (default: organism.socket in CONFIG)")
    run.add_argument("--tcp", metavar="HOST:PORT", help="also listen on this loopback address (needs AGENTSERVER_TOKEN)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")

    send = verb("send", "send a payload, print its thread id")
    message_options(send)
    send.add_argument("--thread", metavar="UUID", help="continue this thread (default: a new one)")
    send.add_argument("--message-id", metavar="UUID",
                      help="the message's own id: resending it after a lost ack is safe (the server "
                           "acks a repeat again and does not process it twice)")
    connection_options(send)

    ask = verb("ask", "send a payload and print the reply")
    message_options(ask)
    connection_options(ask)

    check = verb("check", "validate a configuration, print the routing table")
    check.add_argument("config", metavar="CONFIG")

    schema = verb("schema", "print a listener's XSD, example and usage instructions")
    schema.add_argument("config", metavar="CONFIG")
    schema.add_argument("name", metavar="NAME", help="the listener")

    status = verb("status", "print the running server's counters")
    connection_options(status)

    dead = verb("deadletters", "print recent undeliverable messages")
    dead.add_argument("--limit", type=int, default=50, metavar="N", help="how many (default 50)")
    connection_options(dead)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "run": _run,
        "send": _send,
        "ask": _ask,
        "check": _check,
        "schema": _schema,
        "status": _status,
        "deadletters": _deadletters,
    }[args.verb]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


# -- server side -------------------------------------------------------------------------
def _run(args: argparse.Namespace) -> int:
    from agentserver.startup import prepare_process, serve

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    prepare_process()
    return asyncio.run(serve(args.config, socket_path=args.socket, tcp=args.tcp))


def _load(config_path: str):
    from agentserver.config import ConfigError
    from agentserver.message_bus.bootstrap import bootstrap
    from agentserver.startup import prepare_process

    prepare_process()
    try:
        return bootstrap(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    pump = _load(args.config)
    if pump is None:
        return 1
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
        return 1
    listener = pump.routes.by_name.get(args.name)
    if listener is None or listener.system:
        known = ", ".join(sorted(name for name, l in pump.routes.by_name.items() if not l.system))
        print(f"no listener named {args.name!r} (listeners: {known})", file=sys.stderr)
        return 1
    print(f"# {listener.name}: <{listener.root_tag}>" + (f" — {listener.description}" if listener.description else ""))
    print("\n## XSD\n" + listener.payload_type.xsd_text.rstrip())
    print("\n## Example\n" + listener.example_xml.rstrip())
    if listener.agent:
        print("\n## Usage instructions\n" + listener.usage_instructions)
    return 0


# -- client side -------------------------------------------------------------------------
def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return args.socket
    if args.config:
        from agentserver.config import ConfigError, load_config

        try:
            return load_config(args.config).socket
        except ConfigError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            raise SystemExit(3)
    from agentserver.client import DEFAULT_SOCKET

    return os.environ.get("AGENTSERVER_SOCKET") or DEFAULT_SOCKET


def _payload(args: argparse.Namespace) -> str:
    return sys.stdin.read() if args.xml == "-" else args.xml


async def _with_client(args: argparse.Namespace, work) -> int:
    from agentserver.client import ControlError, connect

    where = f"tcp {args.tcp}" if args.tcp else _socket_path(args)
    try:
        client = await connect(None if args.tcp else where, name=getattr(args, "sender", None), tcp=args.tcp,
                               timeout=min(args.timeout, 10.0))
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"no server answers on {where} (start one: python -m agentserver run config/organism.yaml)", file=sys.stderr)
        return 3
    except ControlError as exc:
        print(f"the server refused this client: {exc}", file=sys.stderr)
        return 3
    except (OSError, TimeoutError) as exc:
        print(f"cannot connect to {where}: {exc}", file=sys.stderr)
        return 3
    async with client:
        return await work(client)


def _send(args: argparse.Namespace) -> int:
    from agentserver.outbound import HuhError

    async def work(client) -> int:
        try:
            accepted = await client.send(_payload(args), to=args.to, thread_id=args.thread,
                                         message_id=args.message_id, timeout=args.timeout)
        except (ValueError, TypeError) as exc:
            print(f"not a payload: {exc}", file=sys.stderr)
            return 1
        except HuhError as exc:  # the server's <huh> for this message: it was not accepted
            print(f"refused ({exc.code}): {exc.message}", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"no ack within {args.timeout}s: the message may or may not have been accepted "
                  "(send it again with the same --message-id to be sure)", file=sys.stderr)
            return 2
        except ConnectionError as exc:
            print(f"connection lost before the ack: {exc}", file=sys.stderr)
            return 3
        print(accepted)  # acked: accepted (with a journal: on disk)
        return 0

    return asyncio.run(_with_client(args, work))


def _ask(args: argparse.Namespace) -> int:
    from agentserver.outbound import AskTimeout, HuhError, RemoteError

    async def work(client) -> int:
        try:
            reply = await client.ask(_payload(args), to=args.to, timeout=args.timeout)
        except (ValueError, TypeError) as exc:
            print(f"not a payload: {exc}", file=sys.stderr)
            return 1
        except HuhError as exc:
            print(f"refused ({exc.code}): {exc.message}", file=sys.stderr)
            return 1
        except RemoteError as exc:
            print(f"failed ({exc.code}): {exc.message}", file=sys.stderr)
            return 1
        except AskTimeout:
            print(f"no reply within {args.timeout}s", file=sys.stderr)
            return 2
        except ConnectionError as exc:
            print(f"connection lost: {exc}", file=sys.stderr)
            return 3
        print(reply.xml.decode("utf-8"))
        return 0

    return asyncio.run(_with_client(args, work))


def _status(args: argparse.Namespace) -> int:
    async def work(client) -> int:
        print(json.dumps(await client.status(), indent=2, sort_keys=True))
        return 0

    return asyncio.run(_with_client(args, work))


def _deadletters(args: argparse.Namespace) -> int:
    async def work(client) -> int:
        for record in await client.deadletters(args.limit):
            print(json.dumps(record, sort_keys=True))
        return 0

    return asyncio.run(_with_client(args, work))
