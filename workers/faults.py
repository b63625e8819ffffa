"""Deterministic crash points for the fault-injection tests: off unless configured.

A step calls `reached("after-push")` at each named boundary. When that point is armed (`BRIDGE_FAULTS__CRASH_AT`,
through Settings) the process writes a marker file named after the point into `BRIDGE_FAULTS__MARKER_DIR` — proof
that the point was reached — and kills itself with SIGKILL, as the kernel's OOM killer or a node failure would. A
point fires once per marker directory, so the restarted worker runs through it. In-process tests may set `hook`.

Points: after-edit, after-commit, after-push, after-record (the writer); after-verdict (the verdict and its queued
final report are saved); inside-report (the final commit status was posted, not yet recorded).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

POINTS = ("after-edit", "after-commit", "after-push", "after-record", "after-verdict", "inside-report")

hook: Callable[[str], None] | None = None
_armed: frozenset[str] = frozenset()
_marker_dir: Path | None = None


def configure(points: list[str], marker_dir: Path | None) -> None:
    global _armed, _marker_dir
    unknown = sorted(set(points) - set(POINTS))
    if unknown:
        raise ValueError(f"unknown crash point(s): {', '.join(unknown)} (known: {', '.join(POINTS)})")
    _armed, _marker_dir = frozenset(points), marker_dir


def reached(point: str) -> None:
    if hook is not None:
        hook(point)
    if point not in _armed or _marker_dir is None:
        return
    marker = _marker_dir / point
    try:
        with open(marker, "x") as f:  # only the first process to get here crashes
            f.write(str(os.getpid()))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
