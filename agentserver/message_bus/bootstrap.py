"""`bootstrap(path)`: from a configuration file to a pump ready to `run()`."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import load_dotenv

from agentserver.config import load_config
from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["bootstrap"]


def bootstrap(path: str | os.PathLike[str] = "config/organism.yaml") -> StreamPump:
    """Load `.env` from the working directory, check the configuration, build the pump.

    Raises ConfigError (every problem, as FILE:LINE: message) before anything starts.
    The Boot message is queued and flows as soon as `run()` starts.
    """
    load_dotenv(Path.cwd() / ".env", override=False)
    return StreamPump(load_config(path))
