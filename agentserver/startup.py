"""Starting an organism as a process: the only code that changes process-wide state.

`python -m agentserver run` (cli.py) calls `prepare_process()` and then `serve()`:

- `.env` in the working directory goes into `os.environ` (without overriding what is
  set), so everything that reads the environment (tokens, API keys) sees it;
- the working directory goes on `sys.path`, so the import paths in organism.yaml
  resolve as they do under `python -m` (the installed `agentserver` script has its own
  directory there instead);
- SIGINT and SIGTERM start a graceful stop; a repeated signal is then ignored, so it
  cannot cut the drain short.

Library code (`bootstrap`, `StreamPump`, `Server`) does none of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import load_dotenv

from agentserver.config import ConfigError, OrganismConfig, load_config, transport_problem
from agentserver.journal import JournalError
from agentserver.limits import is_reserved
from agentserver.message_bus.bootstrap import organism_environment
from agentserver.message_bus.stream_pump import StreamPump
from agentserver.server import Server, ServerError

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.transport import Member
    from agentserver.web import HttpServer

__all__ = ["prepare_process", "serve", "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG"]

log = logging.getLogger("agentserver.server")

EXIT_OK = 0
EXIT_FAILED = 1  # could not start, or the pump failed while running
EXIT_CONFIG = 2  # the configuration has problems (printed as FILE:LINE: what)


def prepare_process(cwd: str | os.PathLike[str] | None = None) -> None:
    """Load `.env` into the environment and put the working directory on `sys.path`."""
    directory = Path(cwd or os.getcwd())
    load_dotenv(directory / ".env", override=False)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))


async def serve(config_path: str, *, socket_path: str | None = None, tcp: str | None = None,
                transport: str | None = None) -> int:
    """Boot, listen, serve until SIGINT/SIGTERM, drain, exit. Returns the exit code.

    With a transport (`organism.transport` or `transport`), this process is a member of
    an organism on NATS JetStream (DESIGN.md §15)."""
    try:
        config = load_config(config_path, env=organism_environment())
        if transport is not None:
            problem = transport_problem(transport, config.journal)
            if problem:
                raise ConfigError([f"--transport: {problem}"])
            config.transport = transport
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if config.transport is None:
        return await _serve(config, None, socket_path, tcp)
    from agentserver.transport import Member, TransportError

    try:
        member = await Member.join(config, config.transport)
    except TransportError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    async with member:
        log.info("member %s of organism %s on %s", member.id, config.name, config.transport)
        return await _serve(config, member, socket_path, tcp)


async def _serve(config: OrganismConfig, member: "Member | None", socket_path: str | None, tcp: str | None) -> int:
    try:
        pump = StreamPump(config, transport=member)
    except JournalError as exc:  # damaged, another organism's, another schema version: never silently dropped
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if member is not None:
        member.serve(pump, socket_path)  # this member's share of the organism's work, from now on
    server = Server(pump, socket_path=socket_path or config.socket, tcp=tcp or config.tcp,
                    token=os.environ.get("AGENTSERVER_TOKEN"))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with pump, contextlib.AsyncExitStack() as owned:  # owned: the HTTP server, stopped after the drain
            try:
                http = await owned.enter_async_context(_http(pump)) if config.http else None
                where = [*([http.url] if http else []), *await server.start()]
            except (ServerError, OSError) as exc:
                log.error("cannot start: %s", exc)
                return EXIT_FAILED
            names = ", ".join(name for name in sorted(pump.routes.by_name) if not is_reserved(name))
            log.info("organism %s listening on %s (listeners: %s)", config.name, " and ".join(where), names)
            await _until(stop, pump)
            log.info("stopping: draining in-flight work (deadline %ss)", config.limits.shutdown_timeout_s)
            report = await server.stop()
            if member is not None:  # its own conversations are done: the units it runs for others finish, or go back
                await member.drain(config.limits.shutdown_timeout_s)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)  # already stopping: a repeated signal must not kill the exit
    counters = pump.counters
    log.info("stopped: accepted=%d handled=%d errored=%d dropped=%d deferred=%d client_frames_dropped=%d",
             counters.accepted, counters.handled, counters.errored_total, report.dropped, report.deferred,
             server.frames_dropped)
    task = pump.task
    error = task.exception() if task is not None and task.done() and not task.cancelled() else None
    if error is not None:
        log.error("the pump failed: %r", error, exc_info=error)
        return EXIT_FAILED
    return EXIT_OK


def _http(pump: StreamPump) -> "HttpServer":
    """`organism.http`: /metrics, /healthz, /status and the live page (aiohttp, imported only when asked for)."""
    from agentserver.web import HttpServer

    assert pump.config.http is not None
    return HttpServer(pump, pump.config.http)


async def _until(stop: asyncio.Event, pump: StreamPump) -> None:
    """Wait for a stop signal, or for the pump to end on its own (it failed)."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([waiter, *([pump.task] if pump.task else [])], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
