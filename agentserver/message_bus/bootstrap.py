"""`bootstrap(path)`: from a configuration file to a pump ready to run.

    pump = bootstrap("config/organism.yaml")
    async with pump:
        ...

It changes nothing process-wide: `.env` is read into the configuration's environment
(`config.env`: the process environment, with `.env` filling what it does not set), not
into `os.environ`, and `sys.path` is left as it is (`python -m agentserver` puts the
working directory there; so does `python` for the script it runs).
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

from agentserver.config import load_config
from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["bootstrap", "organism_environment"]


def organism_environment(cwd: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The process environment, with `.env` of `cwd` (default: the working directory)
    filling in what the environment does not set."""
    dotenv = dotenv_values(Path(cwd or os.getcwd()) / ".env")
    env = {key: value for key, value in dotenv.items() if value is not None}
    env.update(os.environ)
    return env


def bootstrap(path: str | os.PathLike[str] = "config/organism.yaml", *, journal: bool = True) -> StreamPump:
    """Check the configuration (with `.env` of the working directory) and build the pump.

    Raises ConfigError (every problem, as FILE:LINE: message) before anything starts.
    The Boot message is queued and flows as soon as the pump runs. `journal=False`
    leaves `organism.journal` unopened (and uncreated): for tools that only look.
    """
    config = load_config(path, env=organism_environment())
    if not journal:
        config.journal = None
    return StreamPump(config)
