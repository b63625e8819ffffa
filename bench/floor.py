"""The floor: a one-line change, `git commit`, `git push` to the same remote with the same git binary. Never tuned.

    .venv/bin/python bench/floor.py REMOTE [--file apps/app-000/dev/values.yaml] [--builds 20] [--runs 3]

Every latency figure in docs/benchmarks.md is printed next to this floor measured in the same run: the physical
cost of getting one changed line into the remote with plain git, with nothing of the bridge in it. The clone is
made (and, between blocks, fast-forwarded) outside the clock; inside the clock are exactly: rewrite one line of
`--file` (in Python, microseconds), `git commit -qam`, `git push -q origin HEAD:<branch>`. The clone has no
configuration beyond what `git clone` writes; the identity comes from the environment.

The module also holds what every bench script prints: the median of at least three runs, their spread, and the
machine's load average.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.com", "GIT_CONFIG_NOSYSTEM": "1"}
TAG_LINE = re.compile(rb'^(  tag: )"[^"\n]*"', re.M)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True).stdout


class Floor:
    """A persistent clone of `remote` from which one-line commits are pushed."""

    def __init__(self, remote: Path, work: Path, branch: str = "main") -> None:
        self.remote, self.work, self.branch = remote, work, branch
        git("clone", "-q", f"file://{remote}", str(work), cwd=work.parent)
        self.counter = 0

    def catch_up(self) -> None:
        """Outside the clock: bring the clone to the remote's head (others pushed meanwhile)."""
        git("fetch", "-q", "origin", cwd=self.work)
        git("reset", "-q", "--hard", f"origin/{self.branch}", cwd=self.work)

    def once(self, file: str) -> float:
        """One timed change + commit + push; seconds."""
        self.counter += 1
        path = self.work / file
        start = time.perf_counter()
        text = path.read_bytes()
        path.write_bytes(TAG_LINE.sub(rb'\1"floor.%d"' % self.counter, text, count=1))
        git("commit", "-qam", f"floor {self.counter}", cwd=self.work)
        git("push", "-q", "origin", f"HEAD:{self.branch}", cwd=self.work)
        return time.perf_counter() - start

    def block(self, file: str, builds: int) -> list[float]:
        self.catch_up()
        return [self.once(file) for _ in range(builds)]


def seed_way(root: Path, remote: Path, file: str, builds: int) -> list[float]:
    """The seed's way, per build: `git clone` (file://), `sed -i`, `git commit`, `git push`."""
    times = []
    for i in range(builds):
        work = root / f"seed-{i}"
        start = time.perf_counter()
        git("clone", "-q", f"file://{remote}", str(work), cwd=root)
        subprocess.run(["sed", "-i", f's/^  tag: ".*"/  tag: "9.{i}.0"/', file], cwd=work, check=True)
        git("commit", "-qam", f"ci: update image tag to 9.{i}.0", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        times.append(time.perf_counter() - start)
        shutil.rmtree(work)
    return times


# -- what every bench prints ------------------------------------------------------------------------------------------

def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


def across(per_run: Sequence[float]) -> str:
    """`median (min–max over N runs)` of one figure measured once per run."""
    return f"{statistics.median(per_run):.2f} ({min(per_run):.2f}–{max(per_run):.2f} over {len(per_run)} runs)"


def across_ms(per_run: Sequence[float]) -> str:
    return (f"{ms(statistics.median(per_run))} ms ({ms(min(per_run))}–{ms(max(per_run))} over {len(per_run)} "
            f"runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("remote", type=Path)
    parser.add_argument("--file", default="apps/app-000/dev/values.yaml")
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    try:
        floor = Floor(args.remote.absolute(), root / "clone")
        p50s, p95s = [], []
        for run in range(args.runs):
            times = floor.block(args.file, args.builds)
            p50s.append(pct(times, 50))
            p95s.append(pct(times, 95))
            print(f"run {run + 1}: p50 {ms(p50s[-1])} ms, p95 {ms(p95s[-1])} ms, load {load()}")
        print(f"floor (one-line change + git commit + git push, {args.builds} per run): p50 {across_ms(p50s)}, "
              f"p95 {across_ms(p95s)}; load average {load()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
