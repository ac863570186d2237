"""Dead letters: a bounded record of messages that could not be delivered.

Each record keeps the reason code, the full reason, the time, the sender, the step that
refused it and the original bytes (truncated). The oldest records fall off. No I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ["DeadLetters", "DeadLetter"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    time: float  # seconds since the epoch
    code: str
    reason: str
    step: str
    sender: str
    thread: str
    raw: bytes
    truncated: bool
    conversation: str = ""  # the id its client used (as in logs and status)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the time in ISO-8601 (UTC), the bytes as text."""
        record = asdict(self)
        record["time"] = datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="milliseconds")
        record["raw"] = self.raw.decode("utf-8", "replace")
        return record


class DeadLetters:
    def __init__(self, capacity: int = 1000, max_raw_bytes: int = 4096) -> None:
        self.capacity = capacity
        self.max_raw_bytes = max_raw_bytes
        self._records: deque[DeadLetter] = deque(maxlen=capacity)
        self.total = 0

    def __len__(self) -> int:
        return len(self._records)

    def record(self, *, time: float, code: str, reason: str, step: str, sender: str, thread: str, raw: bytes,
               conversation: str = "") -> None:
        truncated = len(raw) > self.max_raw_bytes
        self._records.append(DeadLetter(time, code, reason[:2000], step, sender, thread, raw[: self.max_raw_bytes],
                                        truncated, conversation))
        self.total += 1

    def recent(self, limit: int | None = None) -> list[DeadLetter]:
        records = list(self._records)
        return records if limit is None else records[-limit:]
