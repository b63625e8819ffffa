"""Argo CD load while many deployments wait: the waiter ladder (issue 12 §5), one run, or estates (issue 14).

    .venv/bin/python bench/argocd_load.py --ladder 10,100,1000,10000 [--runs 3] [--apps 10] [--poll 5]
    .venv/bin/python bench/argocd_load.py [--deployments 100] [--apps 10] [--poll 1.0]
    .venv/bin/python bench/argocd_load.py --selectors 10 --apps 100 --deployments 1000 --poll 10 [--hints]

`--ladder`: for each number of waiting deployments (spread over `--apps` applications), `--runs` runs; each run
registers every waiter first, then pushes the commit, so the fake's state changes happen while all of them wait.
Per step it prints the median over the runs (and the spread) of: status reads per application per poll interval
(max and mean over the intervals from the push to the last verdict; refreshes count as reads), and the lag from the
fake's own state change (the pass that turns the application Healthy at our commit, the first moment a verdict is
possible) to each deployment's verdict (median, p99, max), against one poll interval (the target's bound); with
the load average before and after. The fake's timings are the defaults below: 1 s controller period,
`--progressing` passes Progressing after the sync.

With `--selectors N` each of N environments names its applications by a label selector (apps/N apps each) and the
deployments are spread over the environments; `--hints` serves the bridge's `/webhooks/argocd` and lets the fake
post its notifications there. Also prints commit → verdict (median, p90) from the records.

The Argo CD fake (real socket) follows a real bare repository; one commit bumps all applications, each app then
stays Progressing for a while before turning Healthy. The product's worker class (BridgeWorker) runs in a child
process (so its RSS is the worker's alone) with the real verify/watch jobs and no-op reports. Prints Argo CD
requests per second (status reads, refreshes, syncs) against the target of one status read per application per poll
interval, and the worker's peak RSS. `BENCH_TRACE=file` logs every watcher tick, `BENCH_PROFILE=file` profiles it
(in the ladder from the push on).
Starts its own redis-server (tests/redis_server.py) unless `--redis` names one (whose database it flushes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from arq import create_pool  # noqa: E402
from arq.connections import RedisSettings  # noqa: E402
from redis_server import PrivateRedis  # noqa: E402

from bridge.queue import VERIFY_DEPLOYMENT, Keys  # noqa: E402
from bridge.records import DeploymentRecord, DeploymentStore  # noqa: E402
from bridge.routing import RoutingConfig, parse_routing  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake  # noqa: E402

PREFIX = "gb-bench-argocd"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, apps: int) -> tuple[Path, Path]:
    bare, work = root / "gitops.git", root / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    git(work, "config", "user.email", "bench@example.com")
    git(work, "config", "user.name", "bench")
    git(work, "checkout", "-q", "-b", "main")
    for i in range(apps):
        (work / f"app{i}").mkdir()
        (work / f"app{i}" / "values.yaml").write_text("image:\n  tag: '1'\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial")
    git(work, "push", "-q", "origin", "HEAD:main")
    return bare, work


def routing(apps: int, selectors: int = 0, discovery: float = 5.0) -> RoutingConfig:
    if selectors:
        envs = [{"name": f"group{g}", "repository": "gitops", "file": f"app{g}/values.yaml", "keys": [f"k{g}"],
                 "argocd": {"selector": f"group=g{g}", "project": "bench", "discovery_seconds": discovery,
                            "min_apps": apps // selectors}, "deadline_seconds": 600} for g in range(selectors)]
    else:
        envs = [{"name": f"app{i}", "repository": "gitops", "file": f"app{i}/values.yaml",
                 "argocd": {"app": f"app{i}", "project": "bench"}, "deadline_seconds": 600} for i in range(apps)]
    return parse_routing({"repositories": {"gitops": {"url": "https://example.com/gitops.git"}},
                          "routes": [{"name": "svc", "match": {"project": "p", "definition": "d"},
                                      "environments": envs}]})


def worker_process(redis_url: str, argocd_url: str, poll: float, apps: int, bare: str, selectors: int = 0,
                   discovery: float = 5.0) -> None:
    """The worker under measurement: real verify/watch jobs, no-op reports, burst until every wait is decided."""
    from arq.worker import func

    from bridge.queue import PROMOTE_BUILD, REPORT_DEPLOYMENT, WATCH_APPLICATION
    from workers.argocd import ArgoCDClient
    from workers.fakes.argocd import git_is_ancestor
    from workers.runtime import BridgeWorker
    from workers.verify import resume_watches, verify_deployment, watch_application

    trace = os.environ.get("BENCH_TRACE")  # a path: one line per watcher tick (start, seconds, key, outcome)
    lines: list[str] = []

    async def noop(ctx: dict[str, Any], *args: Any) -> None:
        if trace:  # when the follow-up jobs ran, against the ticks
            lines.append(f"{time.time():.3f} 0 - {ctx.get('job_id')}")

    async def traced_watch(ctx: dict[str, Any], key: str, cause: str = "tick") -> str:
        began = time.time()
        out = await watch_application(ctx, key, cause)
        lines.append(f"{began:.3f} {time.time() - began:.3f} {key} {out} {ctx.get('job_id')} {ctx.get('job_try')} "
                     f"{ctx['enqueue_time'].timestamp():.3f}")
        return out

    async def main() -> None:
        settings = bench_settings(argocd_url, poll)
        keys = Keys(PREFIX)
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        ctx: dict[str, Any] = {"settings": settings, "routing": routing(apps, selectors, discovery), "keys": keys,
                               "store": DeploymentStore(pool, keys, queue_name=settings.queue_name), "redis": pool,
                               "argocd": ArgoCDClient.from_settings(settings),
                               "is_ancestor": git_is_ancestor({"gitops": bare})}
        await resume_watches(ctx)
        watch = traced_watch if trace else watch_application
        worker = BridgeWorker(functions=[func(verify_deployment, name=VERIFY_DEPLOYMENT),
                                         func(watch, name=WATCH_APPLICATION, keep_result=0),
                                         func(noop, name=REPORT_DEPLOYMENT, keep_result=0),
                                         func(noop, name=PROMOTE_BUILD)],
                              redis_pool=pool, queue_name=settings.queue_name, burst=True, poll_delay=0.05,
                              handle_signals=False, ctx=ctx, max_jobs=10)
        await worker.main()
        await ctx["argocd"].aclose()
        await pool.aclose()
        if trace:
            Path(trace).write_text("\n".join(lines) + "\n")

    profile = os.environ.get("BENCH_PROFILE")  # a path: cProfile the worker into it (to see where a tick goes)
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        # the ladder signals the push (SIGUSR1): the profile covers the verdicts, not the registration before them
        signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
        if not os.environ.get("BENCH_PROFILE_FROM_PUSH"):
            profiler.enable()
        asyncio.run(main())
        profiler.disable()
        profiler.dump_stats(profile)
    else:
        asyncio.run(main())


def serve_hints(redis_url: str, fake: ArgoCDFake, settings: Settings) -> Any:
    """The web process's `/webhooks/argocd` on a socket, and the fake posting its notifications there."""
    from bridge.app import create_app
    from workers.fakes.server import ServedApp

    web = Settings(redis_url=redis_url, queue_name=settings.queue_name, key_prefix=PREFIX,
                   webhook={"tokens": ["bench-intake-token"]},
                   argocd={"url": fake.url, "webhook_token": HINT_TOKEN})
    served = ServedApp(create_app(web, routing(1)), lifespan=True).start()
    fake.notify(f"{served.url}/webhooks/argocd", {"Authorization": f"Bearer {HINT_TOKEN}"})
    return served


HINT_TOKEN = "bench-hint-token-0123"


def bench_settings(argocd_url: str, poll: float) -> Settings:
    return Settings(argocd={"url": argocd_url, "token": FAKE_TOKEN, "poll_seconds": poll,
                            "refresh_timeout_seconds": 5.0, "request_timeout_seconds": 5.0},
                    queue_name=f"{PREFIX}:queue", key_prefix=PREFIX)


async def seed(redis_url: str, deployments: int, apps: int, sha: str, queue: str, selectors: int = 0) -> None:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    await pool.flushdb()
    store = DeploymentStore(pool, Keys(PREFIX))

    async def one(n: int) -> None:
        env = f"group{n % selectors}" if selectors else f"app{n % apps}"
        record = DeploymentRecord(id=f"{n}-svc-{env}", build_key=f"org:p:{n}", build_id=n, route="svc",
                                  environment=env, repository="gitops", file=f"{env}/values.yaml",
                                  keys=["image.tag"], commit_sha=sha, state="verifying")
        record.stamp("pushed")
        await store.create(record)
        await pool.enqueue_job(VERIFY_DEPLOYMENT, record.id, _job_id=f"verify:{record.id}", _queue_name=queue)

    for start in range(0, deployments, 100):
        await asyncio.gather(*(one(n) for n in range(start, min(start + 100, deployments))))
    await pool.aclose()


async def until_registered(redis_url: str, apps: int, count: int, proc: Any, limit: float = 300.0) -> float:
    """Wait until `count` waiters are registered on the applications; returns the seconds it took."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    began = time.time()
    while time.time() - began < limit and proc.is_alive():
        async with pool.pipeline(transaction=False) as pipe:
            for i in range(apps):
                pipe.hlen(Keys(PREFIX).waiting(f"app{i}"))
            if sum(await pipe.execute()) >= count:
                break
        await asyncio.sleep(0.05)
    await pool.aclose()
    return time.time() - began


async def until_watched(redis_url: str, count: int) -> None:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    for _ in range(6000):
        if await pool.hlen(Keys(PREFIX).watched_apps) >= count:
            break
        await asyncio.sleep(0.05)
    await pool.aclose()


async def verdicts(redis_url: str, pushed_at: float = 0.0) -> tuple[Counter[str], list[float]]:
    """Verdict counts, and each decided deployment's push → verdict seconds (from `pushed_at` when given)."""
    from workers.verdict import parse_time

    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    records, _ = await DeploymentStore(pool, Keys(PREFIX)).list(limit=10_000)
    await pool.flushdb()
    await pool.aclose()
    lead = []
    for r in records:
        done, pushed = parse_time(r.timeline.get("finished")), parse_time(r.timeline.get("pushed"))
        if done and pushed:
            lead.append(done.timestamp() - pushed_at if pushed_at else (done - pushed).total_seconds())
    return Counter(r.verdict or "in-flight" for r in records), sorted(lead)


class Worker:
    """The worker under measurement in its own process: this script's `--worker` mode, run from `code` (this checkout,
    or a clone at another revision for `--against`)."""

    def __init__(self, code: Path, *args: str) -> None:
        script = code / "bench" / Path(__file__).name
        self.proc = subprocess.Popen([sys.executable, str(script), "--worker", *args], cwd=code)
        self.pid = self.proc.pid

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def join(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def until_done(proc: Any, child: psutil.Process, deadline: float, cpu: list[tuple[float, float]] | None = None) -> int:
    """Wait for the worker process to end (burst mode: every wait decided); returns its peak RSS in bytes. With `cpu`,
    appends (time, the worker's CPU seconds so far) every 0.1 s."""
    peak = 0
    while proc.is_alive() and time.time() < deadline:
        try:
            peak = max(peak, child.memory_info().rss)
            if cpu is not None:
                times = child.cpu_times()
                cpu.append((time.time(), times.user + times.system))
        except psutil.Error:
            break
        time.sleep(0.1)
    proc.join(timeout=30)
    return peak


def cpu_between(samples: list[tuple[float, float]], start: float, end: float) -> float:
    """The worker's CPU seconds from `start` to `end` (from the 0.1 s samples around them)."""
    before = max((c for t, c in samples if t <= start), default=0.0)
    after = min((c for t, c in samples if t >= end), default=samples[-1][1] if samples else 0.0)
    return after - before


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def ladder_run(redis_url: str, deployments: int, apps: int, poll: float, progressing: int,
               reconcile: float, code: Path = ROOT) -> dict[str, float]:
    """One rung of the ladder: register `deployments` waiters over `apps` applications, push, wait for the verdicts
    (the worker runs the product code of `code`)."""
    with tempfile.TemporaryDirectory() as tmp:
        bare, work = make_repo(Path(tmp), apps)
        fake = ArgoCDFake(bare)
        for i in range(apps):
            fake.add_app(f"app{i}", f"app{i}/values.yaml", project="bench",
                         health_sequence=["Progressing"] * progressing + ["Healthy"])
        for i in range(apps):
            (work / f"app{i}" / "values.yaml").write_text("image:\n  tag: '2'\n")
        git(work, "commit", "-q", "-am", "bump every app")
        sha = git(work, "rev-parse", "HEAD")
        with fake.serve(reconcile_period=reconcile):
            settings = bench_settings(fake.url, poll)
            asyncio.run(seed(redis_url, deployments, apps, sha, settings.queue_name))
            started = time.time()
            proc = Worker(code, redis_url, fake.url, str(poll), str(apps), str(bare))
            child = psutil.Process(proc.pid)
            registration = asyncio.run(until_registered(redis_url, apps, deployments, proc))
            git(work, "push", "-q", "origin", "HEAD:main")
            pushed_at = time.time()
            if os.environ.get("BENCH_PROFILE"):
                os.kill(proc.pid, signal.SIGUSR1)
            if os.environ.get("BENCH_TRACE"):
                print(f"    pushed at {pushed_at:.3f}", flush=True)
            cpu: list[tuple[float, float]] = []
            peak_rss = until_done(proc, child, started + 900, cpu)
            requests = [r for r in fake.requests if r.time >= started and r.method == "GET"
                        and r.path.startswith("/api/v1/applications/")]
            healthy = {name: t for t, name, health in fake.transitions if health == "Healthy" and t >= pushed_at}
            if os.environ.get("BENCH_TRACE"):
                print("    healthy at", sorted(f"{n}:{t:.3f}" for n, t in healthy.items()))
        pool_records = asyncio.run(finished_times(redis_url))
    lags = [done - healthy[env] for env, done, verdict in pool_records if env in healthy]
    # the lag in two parts: waiting for the first read after the change (polling's share, up to one interval), and
    # from that read to the verdict (the worker's share)
    first_read = {name: min((r.time for r in requests if r.path.rsplit("/", 1)[-1] == name and r.time >= t),
                            default=float("nan")) for name, t in healthy.items()}
    waits = [first_read[name] - t for name, t in healthy.items()]
    worker = [done - first_read[env] for env, done, _ in pool_records if env in first_read]
    # the worker's CPU from the first read after a change to the last verdict: what the lag's second part costs,
    # whatever else the machine runs
    window = (min(first_read.values(), default=pushed_at), max((d for _, d, _ in pool_records), default=pushed_at))
    cpu_window = cpu_between(cpu, *window)
    outcome = Counter(verdict for _, _, verdict in pool_records)
    last = max((done for _, done, _ in pool_records), default=pushed_at)
    first_bucket, last_bucket = int(pushed_at // poll), int(last // poll)
    per = Counter((r.path, int(r.time // poll)) for r in requests if first_bucket <= int(r.time // poll) <= last_bucket)
    intervals = apps * (last_bucket - first_bucket + 1)
    for (path, bucket), count in sorted(per.items()):
        if count > 1:
            times = ", ".join(f"{r.time - pushed_at:.2f}{'(refresh)' if 'refresh' in r.query else ''}"
                              for r in requests if r.path == path and int(r.time // poll) == bucket)
            print(f"    {count} reads of {path.rsplit('/', 1)[-1]} in one interval, at push + {times} s")
    return {"succeeded": outcome.get("succeeded", 0), "other": deployments - outcome.get("succeeded", 0),
            "registration": registration, "reads_max": max(per.values(), default=0),
            "reads_mean": sum(per.values()) / max(intervals, 1), "lag_p50": percentile(lags, 0.5),
            "lag_p99": percentile(lags, 0.99), "lag_max": max(lags, default=float("nan")),
            "wait_max": max(waits, default=float("nan")), "worker_max": max(worker, default=float("nan")),
            "cpu_us": cpu_window / max(len(worker), 1) * 1e6,
            "rss": peak_rss / 2**20, "lags": len(lags)}


async def finished_times(redis_url: str) -> list[tuple[str, float, str]]:
    """(environment, verdict time, verdict) of every deployment, then flush the database for the next run."""
    from workers.verdict import parse_time

    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    records, _ = await DeploymentStore(pool, Keys(PREFIX)).list(limit=100_000)
    await pool.flushdb()
    await pool.aclose()
    out = []
    for r in records:
        done = parse_time(r.timeline.get("finished"))
        out.append((r.environment, done.timestamp() if done else float("nan"), r.verdict or "in-flight"))
    return out


def run_ladder(args: argparse.Namespace, redis_url: str) -> None:
    steps = [int(x) for x in args.ladder.split(",")]
    os.environ["BENCH_PROFILE_FROM_PUSH"] = "1"  # read by the worker child (BENCH_PROFILE)
    print(f"Argo CD ladder: apps={args.apps} poll={args.poll:g}s (the target bound for the lag) runs={args.runs} "
          f"fake: controller period {args.reconcile:g}s, {args.progressing} passes Progressing, then Healthy")
    print("per run: waiters | verdicts ok/other | registration s | reads/app/interval max, mean | "
          "lag p50 / p99 / max s (max = the wait for the read + read → verdict) | worker CPU from the first read to "
          "the last verdict, per verdict | worker RSS MiB | load")
    codes = [("HEAD", ROOT)] + ([(args.against, checkout(args.against, Path(args.tmp)))] if args.against else [])
    rows = []
    for n in steps:
        before = os.getloadavg()
        results: dict[str, list[dict[str, float]]] = {label: [] for label, _ in codes}
        for _ in range(args.runs):
            for label, code in codes:  # alternating, so the revisions share the machine's load
                r = ladder_run(redis_url, n, args.apps, args.poll, args.progressing, args.reconcile, code)
                results[label].append(r)
                print(f"  {n:>6} {label:>8} | {r['succeeded']:.0f}/{r['other']:.0f} | {r['registration']:.1f} | "
                      f"{r['reads_max']:.0f}, {r['reads_mean']:.2f} | {r['lag_p50']:.2f} / {r['lag_p99']:.2f} / "
                      f"{r['lag_max']:.2f} ({r['wait_max']:.2f} + {r['worker_max']:.2f}) | {r['cpu_us']:.0f} µs | "
                      f"{r['rss']:.0f} | {os.getloadavg()[0]:.2f}", flush=True)
        rows += [(n, label, results[label], before, os.getloadavg()) for label, _ in codes]
    print()
    print("| waiting | code | reads/app/interval max | mean | lag p50 | lag p99 | lag max | max / poll interval | "
          "wait for the read, max | read → verdict, max | worker CPU per verdict | registration | "
          "load before → after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    def med(results: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in results]
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    for n, label, results, before, after in rows:
        ratio = statistics.median(r["lag_max"] for r in results) / args.poll
        cells = [label, med(results, "reads_max"), med(results, "reads_mean"),
                 *(med(results, f"lag_{q}") + " s" for q in ("p50", "p99", "max")), f"{ratio:.2f}",
                 med(results, "wait_max") + " s", med(results, "worker_max") + " s", med(results, "cpu_us") + " µs",
                 med(results, "registration") + " s", f"{before[0]:.2f} → {after[0]:.2f}"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if args.against:
        print()
        for n in steps:
            head, base = (results for m, _, results, _, _ in rows if m == n)
            for key, what in (("cpu_us", "worker CPU per verdict"), ("lag_max", "lag max")):
                ratios = [h[key] / b[key] for h, b in zip(head, base, strict=True)]
                print(f"{n} waiters, {what}: HEAD / {args.against} per run pair: median "
                      f"{statistics.median(ratios):.2f}× (spread {min(ratios):.2f}–{max(ratios):.2f})")


def checkout(rev: str, tmp: Path) -> Path:
    """A clone of this repository at `rev` with this script in it: the worker then runs that revision's code."""
    clone = tmp / "against"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", rev], check=True)
    shutil.copy(Path(__file__), clone / "bench" / Path(__file__).name)
    return clone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--apps", type=int, default=10)
    parser.add_argument("--poll", type=float, default=None,
                        help="argocd.poll_seconds (default: 5, the product default, with --ladder; else 1)")
    parser.add_argument("--progressing", type=int, default=15, help="controller passes each app stays Progressing")
    parser.add_argument("--reconcile", type=float, default=1.0, help="fake controller period (s)")
    parser.add_argument("--redis", default=None, help="a Redis URL to use (and flush); default: start our own")
    parser.add_argument("--ladder", default="", help="comma-separated waiter counts, e.g. 10,100,1000,10000")
    parser.add_argument("--runs", type=int, default=3, help="runs per ladder step (median, spread)")
    parser.add_argument("--selectors", type=int, default=0, help="environments naming their apps by label selector")
    parser.add_argument("--discovery", type=float, default=5.0, help="argocd.discovery_seconds (with --selectors)")
    parser.add_argument("--hints", action="store_true", help="the fake posts notifications to /webhooks/argocd")
    parser.add_argument("--against", metavar="REV", help="with --ladder: each run also runs the worker at REV")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)  # internal: redis, argocd, poll, apps, bare
    args = parser.parse_args()
    if args.worker:
        redis_url, argocd_url, poll, apps, bare = args.worker
        worker_process(redis_url, argocd_url, float(poll), int(apps), bare)
        return
    args.poll = args.poll or (5.0 if args.ladder else 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        server = None
        if args.redis is None:
            server = PrivateRedis(Path(tmp) / "redis")
            server.start()
            args.redis = server.url
        try:
            if args.ladder:
                run_ladder(args, args.redis)
            else:
                single(args)
        finally:
            if server is not None:
                server.stop()


def single(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bare, work = make_repo(Path(tmp), args.apps)
        fake = ArgoCDFake(bare)
        per = args.apps // args.selectors if args.selectors else 1
        for i in range(args.apps):
            fake.add_app(f"app{i}", f"app{i}/values.yaml", project="bench",
                         labels={"group": f"g{i // per}"} if args.selectors else None,
                         health_sequence=["Progressing"] * args.progressing + ["Healthy"])
        for i in range(args.apps):
            (work / f"app{i}" / "values.yaml").write_text("image:\n  tag: '2'\n")
        git(work, "commit", "-q", "-am", "bump every app")
        if not args.selectors:
            git(work, "push", "-q", "origin", "HEAD:main")
        sha = git(work, "rev-parse", "HEAD")
        pushed_at = 0.0

        with fake.serve(reconcile_period=args.reconcile):
            settings = bench_settings(fake.url, args.poll)
            bridge = serve_hints(args.redis, fake, settings) if args.hints else None
            asyncio.run(seed(args.redis, args.deployments, args.apps, sha, settings.queue_name, args.selectors))
            proc = mp.get_context("spawn").Process(
                target=worker_process,
                args=(args.redis, fake.url, args.poll, args.apps, str(bare), args.selectors, args.discovery))
            started = time.time()
            proc.start()
            peak_rss = 0
            child = psutil.Process(proc.pid)
            if args.selectors:
                # estates: push once every application has its watcher, so commit → verdict measures the wait
                asyncio.run(until_watched(args.redis, args.apps + args.selectors))
                git(work, "push", "-q", "origin", "HEAD:main")
                pushed_at = time.time()
            peak_rss = until_done(proc, child, started + 600)
            elapsed = time.time() - started
            log = [r for r in fake.requests if r.time >= started and r.path.startswith("/api/v1/applications/")]
            lists = [r for r in fake.requests if r.time >= started and r.path == "/api/v1/applications"]
            if bridge is not None:
                bridge.stop()

        outcome, lead = asyncio.run(verdicts(args.redis, pushed_at))

    reads = [r for r in log if r.method == "GET" and "refresh" not in r.query]
    refreshes = [r for r in log if r.method == "GET" and "refresh" in r.query]
    syncs = [r for r in log if r.method == "POST"]
    window = (max(r.time for r in log) - min(r.time for r in log)) if log else 0.0
    per_interval: Counter[tuple[str, int]] = Counter(
        (r.path, int(r.time // args.poll)) for r in reads + refreshes)
    target = args.apps / args.poll
    print(f"deployments={args.deployments} apps={args.apps} poll={args.poll:g}s "
          f"progressing_passes={args.progressing} reconcile={args.reconcile:g}s")
    print(f"selectors={args.selectors} discovery={args.discovery:g}s hints={'on' if args.hints else 'off'} "
          f"notifications sent={len(fake.notifications)} selector list requests={len(lists)}")
    print(f"verdicts: {dict(outcome)}  wall={elapsed:.1f}s  request window={window:.1f}s")
    if fake.notifications:
        print("notification answers:", dict(Counter(str(n.get("_status", "?"))[:60] for n in fake.notifications)))
    if lead:
        print(f"commit → verdict: median {lead[len(lead) // 2]:.1f}s, p90 {lead[int(len(lead) * 0.9)]:.1f}s, "
              f"max {lead[-1]:.1f}s over {len(lead)} deployments")
    print(f"Argo CD requests: {len(log)} total = {len(reads)} status reads + {len(refreshes)} refreshes "
          f"+ {len(syncs)} syncs")
    if window:
        print(f"status reads/s: {len(reads) / window:.2f} (target <= {target:.2f} = apps / poll interval); "
              f"all requests/s: {len(log) / window:.2f}")
    print(f"max status requests for one app in one poll interval: {max(per_interval.values(), default=0)}")
    gaps: list[float] = []
    for path in {r.path for r in reads + refreshes}:
        times = sorted(r.time for r in reads + refreshes if r.path == path)
        gaps += [b - a for a, b in zip(times, times[1:], strict=False)]
    if gaps:
        print(f"gap between status requests for one app: min {min(gaps):.2f}s, mean {sum(gaps) / len(gaps):.2f}s "
              f"(poll interval {args.poll:g}s)")
    print(f"requests per deployment: {len(log) / max(args.deployments, 1):.2f}")
    print(f"worker peak RSS: {peak_rss / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
