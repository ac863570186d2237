"""The loop-lag watchdog: names the handler that blocked the event loop, and for how long.

A handler that calls `time.sleep(2)`, or computes for a second without awaiting,
stalls every client: the event loop runs nothing else meanwhile. The loop cannot
watch itself while it is blocked, so a small thread does: the loop beats every
`interval`; while the last beat is older than the threshold, the thread looks at
the frame the loop's thread is running and walks up the stack to a handler's code,
so the log can name the listener (or, failing that, the code location). When the
loop runs again, its late beat logs one WARNING: who blocked it, for how long, and
the advice to run blocking code with `asyncio.to_thread`.

Owned by the pump's handler tasks: started and stopped with `run()`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from types import CodeType, FrameType
from typing import Mapping

__all__ = ["LoopWatchdog"]

log = logging.getLogger("agentserver.pump")


class LoopWatchdog:
    def __init__(self, threshold_s: float, handlers: Mapping[CodeType, str]) -> None:
        self.threshold_s = threshold_s
        self.interval_s = min(threshold_s / 4, 0.1)
        self.handlers = dict(handlers)  # a handler's code -> its listener's name
        self.stalls = 0  # how many times the loop was blocked longer than the threshold
        self._beat = time.monotonic()
        self._culprit: str | None = None  # what the loop was running during the current stall
        self._loop_thread: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._timer = loop.call_later(self.interval_s, self._on_beat)
        self._thread = threading.Thread(target=self._watch, name="agentserver-loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    # -- on the loop's thread -------------------------------------------------------
    def _on_beat(self) -> None:
        now = time.monotonic()
        lag = now - self._beat - self.interval_s
        if lag > self.threshold_s:
            self.stalls += 1
            log.warning("%s blocked the event loop for %.2fs: every client waited; run blocking code with "
                        "`await asyncio.to_thread(...)`", self._culprit or "something", lag)
        self._culprit = None
        self._beat = now
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._on_beat)

    # -- on the watchdog's thread -----------------------------------------------------
    def _watch(self) -> None:
        while not self._stopped.wait(self.interval_s):
            if self._culprit is None and time.monotonic() - self._beat - self.interval_s > self.threshold_s:
                frame = sys._current_frames().get(self._loop_thread or 0)
                if frame is not None:
                    self._culprit = self._name(frame)

    def _name(self, frame: FrameType) -> str:
        top = frame
        walker: FrameType | None = frame
        while walker is not None:
            listener = self.handlers.get(walker.f_code)
            if listener is not None:
                return f"the handler of listener {listener!r} ({walker.f_code.co_filename}:{walker.f_lineno})"
            walker = walker.f_back
        return f"code outside any handler ({top.f_code.co_filename}:{top.f_lineno} in {top.f_code.co_name})"
