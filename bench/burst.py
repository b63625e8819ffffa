"""Burst with Argo CD (issue 12 §3): 2,000 builds over 50 apps, one worker process, to the verdict.

    .venv/bin/python bench/burst.py [--runs 3] [--builds 2000] [--apps 50] [--window 2.0] [--reconcile 1.0]

The real product as deployed (`gitops-bridge web` + one `gitops-bridge worker`, BRIDGE_* variables only, a private
redis-server) on the reference repository of bench/gitops_repo.py (600 values files, 2,001 commits, local bare
remote), every app's dev environment verified by Argo CD: the fake of workers/fakes/argocd.py over a real socket,
following the same bare remote. Its timings are its defaults (`add_app`: auto-sync, the sync operation ends on the
controller pass after it starts, health Progressing for one pass then Healthy) with a controller pass every
`--reconcile` seconds (default 1 s; a `?refresh` blocks until the next pass, as in Argo CD). The bridge's settings
are its defaults (`argocd.poll_seconds` 5 s, `worker_max_jobs` 10).

`--builds` builds (ids increasing per app, shuffled) are sent within `--window` seconds over 20 keep-alive
connections. Per run: time from the first send until every app's file in the remote holds its highest build
(landed), until every deployment has its verdict (verdicts), commits, the verdicts by kind, lost (a deployment
without a verdict, or an app's highest build not succeeded), downgraded (a commit that lowered an app's tag), the
worker's peak RSS (VmHWM; its git children are sampled separately), the Argo CD requests. Then the median over the
runs, the spread, the load average, and each figure's ratio to its target (landed 12 s, verdicts 15 s, RSS 250 MB).
It prints figures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import load  # noqa: E402
from gitops_repo import SHAPES, apps, generate_remote  # noqa: E402
from pipeline import (  # noqa: E402
    BIN,
    BurstPoster,
    Events,
    RssSampler,
    bridge_env,
    downgrades,
    free_port,
    read_ref,
    stop_processes,
    vm,
    wait_http,
    wait_landed,
)

from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake  # noqa: E402

TARGETS = {"landed": 12.0, "verdicts": 15.0, "rss": 250.0}


def routing_document(url: str, names: list[str]) -> dict[str, Any]:
    return {
        "repositories": {"reference": {"url": url, "branch": "main"}},
        "routes": [{
            "name": f"reference-{a}", "match": {"project": "FabrikamFiberChat", "definition": f"reference-{a}",
                                                "branches": ["refs/heads/main"]},
            "environments": [{"name": "dev", "repository": "reference", "file": f"apps/{a}/dev/values.yaml",
                              "argocd": {"app": f"{a}-dev"}}],
        } for a in names],
    }


async def in_flight(redis_url: str) -> int:
    from arq.connections import RedisSettings, create_pool

    from bridge.queue import Keys
    from bridge.records import DeploymentStore

    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        return await DeploymentStore(pool, Keys(prefix="gitops-bridge")).in_flight()
    finally:
        await pool.aclose()


async def records(redis_url: str, ids: list[str]) -> list[Any]:
    from arq.connections import RedisSettings, create_pool

    from bridge.queue import Keys
    from bridge.records import DeploymentStore

    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        store = DeploymentStore(pool, Keys(prefix="gitops-bridge"))
        return [await store.get(i) for i in ids]
    finally:
        await pool.aclose()


def one_run(args: argparse.Namespace, run: int) -> dict[str, float]:
    from bridge.embedded_redis import EmbeddedRedis
    from workers.verdict import parse_time

    root = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    redis = EmbeddedRedis(root / "redis").start()
    procs: list[subprocess.Popen[bytes]] = []
    sampler: RssSampler | None = None
    (root / "reference").mkdir()
    remote = generate_remote(root / "reference", *SHAPES["reference"])
    names = apps(SHAPES["reference"][0])[: args.apps]
    fake = ArgoCDFake(remote)
    for a in names:
        fake.add_app(f"{a}-dev", f"apps/{a}/dev/values.yaml")
    try:
        with fake.serve(reconcile_period=args.reconcile):
            config = root / "bridge.yaml"
            config.write_text(json.dumps(routing_document(f"file://{remote}", names), indent=1))
            env = {"BRIDGE_ARGOCD__URL": fake.url, "BRIDGE_ARGOCD__TOKEN": FAKE_TOKEN}
            web_port, metrics_port = free_port(), free_port()
            procs.append(subprocess.Popen([str(BIN), "web", "--host", "127.0.0.1", "--port", str(web_port)], cwd=root,
                                          env={**bridge_env(root, redis.url, config, free_port()), **env}))
            worker = subprocess.Popen([str(BIN), "worker"], cwd=root,
                                      env={**bridge_env(root, redis.url, config, metrics_port), **env})
            procs.append(worker)
            wait_http(f"http://127.0.0.1:{web_port}/readyz", procs, timeout=120)
            wait_http(f"http://127.0.0.1:{metrics_port}/healthz", procs, timeout=120)
            events = Events()
            # warm-up: one build fetches the repository into the worker's cache (and is verified)
            warm = BurstPoster(web_port, [events.body(900, f"reference-{names[0]}")], 0.0, connections=1)
            warm.start()
            warm.ready.wait(30)
            warm.start_at = time.perf_counter()
            warm.go.set()
            warm.join(30)
            for _ in range(1200):
                if asyncio.run(in_flight(redis.url)) == 0:
                    break
                time.sleep(0.1)
            sampler = RssSampler([worker.pid])
            sampler.start()

            per_app = args.builds // len(names)
            builds = [(a, 1000 + k * 1000 + j) for j, a in enumerate(names) for k in range(per_app)]
            random.Random(run).shuffle(builds)
            top = {a: max(b for x, b in builds if x == a) for a in names}
            files_of = {a: f"apps/{a}/dev/values.yaml" for a in names}
            head_before = read_ref(remote)
            requests_before = len(fake.requests)
            load_before = load()
            poster = BurstPoster(web_port, [events.body(b, f"reference-{a}") for a, b in builds], args.window)
            poster.start()
            poster.ready.wait(30)
            if poster.error is not None:
                raise poster.error
            start, wall_start = time.perf_counter(), time.time()
            poster.start_at = start
            poster.go.set()
            print(f"  run {run + 1}: sending (worker pid {worker.pid})", flush=True)
            limit = time.monotonic() + 180
            landed = wait_landed(remote, head_before, files_of, top, start, limit, 0.005)
            poster.join(60)
            if poster.error is not None:
                raise poster.error
            ids = [a["deployments"][0]["id"] for a in poster.answers if a is not None]
            while time.monotonic() < limit and asyncio.run(in_flight(redis.url)) > 0:
                time.sleep(0.1)
            found = asyncio.run(records(redis.url, ids))
            argocd = fake.requests[requests_before:]
            lowered = len(downgrades(remote, head_before))
            sampler.stop_flag.set()
            hwm = vm(worker.pid, "VmHWM") / 2**20
    finally:
        if sampler is not None:
            sampler.stop_flag.set()
        stop_processes(procs)
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)

    finished = [parse_time(r.timeline.get("finished")) for r in found if r is not None and r.verdict]
    verdicts: dict[str, int] = {}
    for r in found:
        key = (r.verdict if r is not None else None) or "none"
        verdicts[key] = verdicts.get(key, 0) + 1
    by_build = {r.build_id: r for r in found if r is not None}
    lost = (len(builds) - len(finished)) + sum(
        1 for a in names if by_build.get(top[a]) is None or by_build[top[a]].verdict != "succeeded")
    result = {
        "landed": landed if landed is not None else float("inf"),
        "verdicts": max(f.timestamp() for f in finished if f) - wall_start if finished else float("inf"),
        "rss": hwm, "tree": sampler.peak_tree / 2**20 if sampler else 0.0,
        "commits": float(len(set(r.commit_sha for r in found if r is not None and r.commit_sha))),
        "lost": float(lost), "downgraded": float(lowered),
        "reads": float(len([r for r in argocd if r.method == "GET"])),
        "syncs": float(len([r for r in argocd if r.method == "POST"])),
    }
    # where the highest builds' time went: each timeline stamp, seconds after the first send (median / max)
    tops = [by_build[top[a]] for a in names if top[a] in by_build]
    stages = []
    for stamp in ("received", "started", "pushed", "synced", "healthy", "finished"):
        at = [t.timestamp() - wall_start for r in tops if (t := parse_time(r.timeline.get(stamp))) is not None]
        if at:
            stages.append(f"{stamp} {statistics.median(at):.1f}/{max(at):.1f}")
    print(f"  run {run + 1}: each app's highest build, s after the first send (median/max): {', '.join(stages)}")
    print(f"  run {run + 1}: landed {result['landed']:.2f} s, verdicts {result['verdicts']:.2f} s, "
          f"{result['commits']:.0f} commits, verdicts {dict(sorted(verdicts.items()))}, lost {lost}, "
          f"downgraded {lowered}, "
          f"worker VmHWM {hwm:.0f} MB (with git children, sampled: {result['tree']:.0f} MB), Argo CD GETs "
          f"{result['reads']:.0f}; load {load_before} → {load()}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--builds", type=int, default=2000)
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--window", type=float, default=2.0, help="seconds over which the builds are sent")
    parser.add_argument("--reconcile", type=float, default=1.0, help="the fake Argo CD's controller period (s)")
    args = parser.parse_args()
    print(f"burst with Argo CD: {args.builds} builds over {args.apps} apps sent within {args.window:g} s, one worker, "
          f"argocd.poll_seconds 5 (default), fake controller pass every {args.reconcile:g} s; load {load()}")
    results = [one_run(args, run) for run in range(args.runs)]
    print(f"\nmedian of {args.runs} runs (min–max), ratio of the median to its target; load {load()}")
    for key, label in (("landed", "all landed"), ("verdicts", "all verdicts"), ("rss", "worker RSS MB"),
                       ("tree", "worker + git children MB"), ("commits", "commits"), ("lost", "lost"),
                       ("downgraded", "downgraded"), ("reads", "Argo CD GETs")):
        values = [r[key] for r in results]
        median = statistics.median(values)
        ratio = f", {median / TARGETS[key]:.2f}× the target {TARGETS[key]:g}" if key in TARGETS else ""
        print(f"  {label}: {median:.2f} ({min(values):.2f}–{max(values):.2f}){ratio}")


if __name__ == "__main__":
    main()
