"""Writer benchmark: the git write step alone (fetch → edit → commit → push) per repository shape, next to the floor.

    .venv/bin/python bench/writer.py [--runs 3] [--builds 20] [--shapes small,reference,wide,deep]

For each shape of bench/gitops_repo.py (51 files / 101 commits, the 600-file / 2,001-commit reference, 5,001 files,
20,001 commits) the script makes a bare remote and, in every run, measures back to back on it:

* the floor (bench/floor.py): a one-line change, `git commit`, `git push` from a plain clone;
* the writer: `workers.writer.apply_bumps` with one bump (a different app's file each time), exactly what a flush
  does under the repository lock: fetch, trailer scan, read the file from the fetched commit, the format-exact
  edit, one commit written with plumbing, the check of that commit, the push.

No Redis and no arq: this isolates the git part (the whole pipeline is bench/pipeline.py). The shapes are visited in
a different order in every run. It prints, per shape, the median over the runs of p50 and p95 with their spread, the
ratio to the floor of the same run and shape, the ratio to the small repository of the same run, the load average,
and the median time of each git command. It prints figures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import Floor, across, across_ms, git, load, pct  # noqa: E402
from gitops_repo import SHAPES, apps, generate_remote  # noqa: E402


class GitClock:
    """Wall time of every git process the writer starts, by subcommand (wraps `RepoCache._exec`)."""

    def __init__(self) -> None:
        from workers import gitrepo

        self.spent: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.current: dict[str, float] = defaultdict(float)
        original = gitrepo.RepoCache._exec
        clock = self

        def timed(cache: Any, path: Path, *args: str, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(cache, path, *args, **kwargs)
            finally:
                clock.current[args[0]] += time.perf_counter() - start

        gitrepo.RepoCache._exec = timed  # type: ignore[method-assign]

    def start(self) -> None:
        self.current.clear()

    def stop(self, shape: str) -> None:
        for name, value in self.current.items():
            self.spent[shape][name].append(value)


async def drive(args: argparse.Namespace) -> None:
    from bridge.routing import Repository
    from bridge.settings import GitSettings
    from workers.gitrepo import RepoCache
    from workers.writer import Bump, apply_bumps

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    root = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    clock = GitClock()
    try:
        remotes: dict[str, Path] = {}
        floors: dict[str, Floor] = {}
        caches: dict[str, RepoCache] = {}
        for shape in shapes:
            n_apps, history = SHAPES[shape]
            (root / shape).mkdir()
            t = time.perf_counter()
            remotes[shape] = generate_remote(root / shape, n_apps, history)
            files = git("ls-tree", "-r", "--name-only", "main", cwd=remotes[shape]).count("\n")
            commits = int(git("rev-list", "--count", "main", cwd=remotes[shape]))
            print(f"{shape}: {files} values files, {commits} commits (made in {time.perf_counter() - t:.1f}s)")
            floors[shape] = Floor(remotes[shape], root / shape / "floor")
            caches[shape] = RepoCache(GitSettings(work_dir=root / shape / "cache", author_name="gitops-bridge"),
                                      {"gitops": Repository(url=f"file://{remotes[shape]}", branch="main")})
            warm = Bump("warm-up", "app-000", "dev", "apps/app-000/dev/values.yaml", ("image.tag",), "0.0.1")
            await apply_bumps(caches[shape], "gitops", [warm])  # makes the cache
        print(f"load average before the runs: {load()}")

        p50: dict[str, list[float]] = defaultdict(list)
        p95: dict[str, list[float]] = defaultdict(list)
        floor50: dict[str, list[float]] = defaultdict(list)
        to_floor: dict[str, list[float]] = defaultdict(list)
        to_small: dict[str, list[float]] = defaultdict(list)
        build = 0
        for run in range(args.runs):
            order = shapes[run % len(shapes):] + shapes[:run % len(shapes)]
            for shape in order:
                floor = floors[shape].block("apps/app-001/dev/values.yaml", args.builds)
                names = apps(min(SHAPES[shape][0], 17))
                times = []
                for i in range(args.builds):
                    build += 1
                    app = names[i % len(names)]
                    bump = Bump(f"{build}-{app}-dev", app, "dev", f"apps/{app}/dev/values.yaml", ("image.tag",),
                                f"2.0.{build}", build_id=build)
                    clock.start()
                    start = time.perf_counter()
                    result = await apply_bumps(caches[shape], "gitops", [bump])
                    times.append(time.perf_counter() - start)
                    clock.stop(shape)
                    assert result.commit_sha and result.results[0].status == "changed", result
                p50[shape].append(pct(times, 50))
                p95[shape].append(pct(times, 95))
                floor50[shape].append(pct(floor, 50))
                to_floor[shape].append(p50[shape][-1] / floor50[shape][-1])
            if "small" in shapes:
                for shape in shapes:
                    to_small[shape].append(p50[shape][-1] / p50["small"][-1])
            print(f"run {run + 1}: " + ", ".join(
                f"{s} p50 {p50[s][-1] * 1000:.0f} ms (floor {floor50[s][-1] * 1000:.0f})" for s in shapes)
                + f"; load {load()}")

        print(f"\nwriter step (apply_bumps, one bump, {args.builds} per shape per run), medians over {args.runs} runs "
              f"(min–max):")
        for shape in shapes:
            line = (f"  {shape:9}: p50 {across_ms(p50[shape])}, p95 {across_ms(p95[shape])}; floor p50 "
                    f"{across_ms(floor50[shape])}; writer/floor {across(to_floor[shape])}")
            if to_small:
                line += f"; vs small {across(to_small[shape])}"
            print(line)
        print("git processes per write, median ms:")
        for shape in shapes:
            spent = clock.spent[shape]
            print(f"  {shape:9}: " + ", ".join(f"{c} {statistics.median(v) * 1000:.1f}"
                                               for c, v in sorted(spent.items(), key=lambda kv: -sum(kv[1]))))
        print(f"load average after the runs: {load()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--shapes", default="small,reference,wide,deep")
    asyncio.run(drive(parser.parse_args()))


if __name__ == "__main__":
    main()
