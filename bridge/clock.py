"""UTC timestamps as the bridge writes them (records, log lines): ISO 8601 with milliseconds and `Z`.

The intake stamps every webhook twice (the job's `received`, the log line), so the date and time of the current
second are formatted once per second and only the milliseconds per call."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_second: tuple[int, str] = (-1, "")


def iso_ms(seconds: float) -> str:
    """`seconds` since the epoch as `2025-01-01T00:00:00.000Z` (milliseconds truncated)."""
    global _second
    whole, ms = divmod(int(seconds * 1000), 1000)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{ms:03d}Z"


def now_iso() -> str:
    return iso_ms(time.time())
