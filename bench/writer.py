"""Writer benchmark: latency from a submitted bump to the commit in the remote, a burst, and the seed's way as baseline.

    .venv/bin/python bench/writer.py [--builds 50] [--baseline 20] [--burst 200] [--burst-apps 50] [--workers 2]

The script starts its own redis-server (free port, no persistence), generates a realistic GitOps repository in a bare
remote (200 apps x 3 environments of commented Helm values files, 2,000+ commits of history, made with git fast-import)
and runs writer worker processes (arq, poll delay 0.05 s as in production, only the writer's jobs registered).

1. Latency: builds submitted one after the other (`workers.writer.submit_bump`, i.e. what `process_build` does after
   the webhook's 202) until the commit is in the remote; p50/p95. Baseline, per build: `git clone` + `sed -i` +
   `git commit` + `git push`, as the seed did.
2. Burst: `--burst` builds for `--burst-apps` apps submitted within one second: time until all are recorded, commits,
   push retries, and a check that every app ends at its highest build (nothing lost or downgraded).
Peak RSS (VmHWM) of each worker process is reported. It prints figures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENVS = ("dev", "staging", "prod")
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.com", "GIT_CONFIG_NOSYSTEM": "1"}

VALUES = """\
# Default values for {app}.
# This is a YAML-formatted file.
# Declare variables to be passed into your templates.

# -- Number of replicas ({env})
replicaCount: {replicas}

image:
  # -- Image repository
  repository: registry.example.com/platform/{app}
  # -- Image pull policy
  pullPolicy: IfNotPresent
  # -- Overrides the image tag whose default is the chart appVersion.
  tag: "{tag}"

imagePullSecrets: []
nameOverride: ""
fullnameOverride: ""

serviceAccount:
  # -- Specifies whether a service account should be created
  create: true
  annotations: {{}}
  name: ""

podAnnotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: "9090"

securityContext:
  capabilities:
    drop:
      - ALL
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: 1000

service:
  type: ClusterIP
  port: 80  # keep in sync with the ingress

ingress:
  enabled: {ingress}
  className: nginx
  hosts:
    - host: {app}.{env}.example.com
      paths:
        - path: /
          pathType: ImplementationSpecific

resources:
  limits:
    cpu: 500m
    memory: 256Mi
  requests:
    cpu: 100m
    memory: 128Mi

env:
  - name: LOG_LEVEL
    value: info
  - name: ENVIRONMENT
    value: {env}
"""


def apps(n: int) -> list[str]:
    return [f"app-{i:03d}" for i in range(n)]


def values(app: str, env: str, tag: str) -> str:
    return VALUES.format(app=app, env=env, tag=tag, replicas=3 if env == "prod" else 1,
                         ingress="true" if env != "dev" else "false")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True).stdout


def generate_remote(root: Path, n_apps: int = 200, history: int = 2000) -> Path:
    """A bare remote made with git fast-import: one commit with every file, then `history` one-line tag bumps."""
    remote = root / "gitops.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(remote), cwd=root)
    rng = random.Random(1)
    chunks: list[bytes] = []
    ts = 1_700_000_000

    def data(text: str) -> bytes:
        raw = text.encode()
        return b"data %d\n" % len(raw) + raw + b"\n"

    def commit(mark: int, message: str, files: list[tuple[str, str]]) -> None:
        head = f"commit refs/heads/main\nmark :{mark}\ncommitter Dev <dev@example.com> {ts + mark * 60} +0000\n"
        chunks.append(head.encode() + data(message))
        if mark > 1:
            chunks.append(f"from :{mark - 1}\n".encode())
        for path, text in files:
            chunks.append(f"M 100644 inline {path}\n".encode() + data(text))
        chunks.append(b"\n")

    names = apps(n_apps)
    commit(1, "initial import", [(f"apps/{a}/{e}/values.yaml", values(a, e, "1.0.0")) for a in names for e in ENVS])
    for mark in range(2, history + 2):
        a, e = rng.choice(names), rng.choice(ENVS)
        commit(mark, f"ci: update {a} image tag to 0.{mark}.0 ({e})",
               [(f"apps/{a}/{e}/values.yaml", values(a, e, f"0.{mark}.0"))])
    subprocess.run(["git", "fast-import", "--quiet"], cwd=remote, input=b"".join(chunks), check=True)
    git("config", "core.logAllRefUpdates", "always", cwd=remote)
    return remote


def routing(url: str, n_apps: int) -> dict[str, Any]:
    return {
        "repositories": {"gitops": {"url": url, "branch": "main"}},
        "routes": [{"name": a, "match": {"project": "p", "definition": a},
                    "environments": [{"name": e, "repository": "gitops", "file": f"apps/{a}/{e}/values.yaml"}
                                     for e in ENVS]} for a in apps(n_apps)],
    }


# -- the worker process ---------------------------------------------------------------------------------------------

def worker_main(config_path: str) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    from bridge import metrics
    from bridge.queue import FLUSH_REPOSITORY, REPORT_DEPLOYMENT, VERIFY_DEPLOYMENT, Keys
    from bridge.records import DeploymentStore
    from bridge.routing import parse_routing
    from bridge.settings import Settings
    from workers.gitrepo import RepoCache
    from workers.writer import flush_repository

    config = json.loads(Path(config_path).read_text())
    settings = Settings(key_prefix=config["prefix"], queue_name=config["queue"],
                        git={"work_dir": config["work_dir"]})
    cfg = parse_routing(config["routing"])

    async def noop(ctx: dict[str, Any], *args: Any) -> None:
        return None

    async def startup(ctx: dict[str, Any]) -> None:
        keys = Keys(prefix=settings.key_prefix)
        ctx.update({"settings": settings, "routing": cfg, "keys": keys, "store": DeploymentStore(ctx["redis"], keys,
                                                                                                 queue_name=settings.queue_name),
                    "repos": RepoCache(settings.git, cfg.repositories)})
        await ctx["redis"].sadd(f"{settings.key_prefix}:ready", os.getpid())

    def stats() -> None:
        rss = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
        pushes = {s.labels["outcome"]: s.value for m in metrics.GIT_PUSHES.collect() for s in m.samples
                  if s.name.endswith("_total")}
        retries = sum(s.value for m in metrics.GIT_PUSH_RETRIES.collect() for s in m.samples
                      if s.name.endswith("_total"))
        Path(config["stats"] + f".{os.getpid()}").write_text(json.dumps(
            {"rss": rss, "retries": retries, "pushes": pushes}))

    async def run() -> None:
        worker = Worker(
            functions=[func(flush_repository, name=FLUSH_REPOSITORY), func(noop, name=VERIFY_DEPLOYMENT),
                       func(noop, name=REPORT_DEPLOYMENT)],
            redis_settings=RedisSettings.from_dsn(config["redis"]), queue_name=settings.queue_name,
            on_startup=startup, handle_signals=False, poll_delay=0.05, max_jobs=settings.worker_max_jobs,
            keep_result=3600,
        )
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, done.set)
        task = asyncio.ensure_future(worker.async_run())
        await done.wait()
        stats()
        task.cancel()
        os._exit(0)

    asyncio.run(run())


# -- the driver -----------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def read_ref(remote: Path) -> str:
    loose = remote / "refs" / "heads" / "main"
    if loose.exists():
        return loose.read_text().strip()
    return git("rev-parse", "main", cwd=remote).strip()


def baseline(root: Path, remote: Path, builds: int) -> list[float]:
    """The seed's way, per build: clone, sed -i, commit, push."""
    times = []
    for i in range(builds):
        work = root / f"baseline-{i}"
        start = time.perf_counter()
        git("clone", "-q", f"file://{remote}", str(work), cwd=root)
        subprocess.run(["sed", "-i", f's/^  tag: ".*"/  tag: "9.{i}.0"/', "apps/app-199/dev/values.yaml"], cwd=work,
                       check=True)
        git("commit", "-qam", f"ci: update app-199 image tag to 9.{i}.0 (dev)", cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        times.append(time.perf_counter() - start)
        shutil.rmtree(work)
    return times


async def drive(args: argparse.Namespace) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    from bridge.queue import Keys
    from bridge.records import DeploymentRecord, DeploymentStore
    from workers.writer import submit_bump

    root = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    redis_proc, redis_url = start_redis(root)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        t = time.perf_counter()
        remote = generate_remote(root, args.apps, args.history)
        n_commits = int(git("rev-list", "--count", "main", cwd=remote))
        files = int(git("ls-tree", "-r", "--name-only", "main", cwd=remote).count("\n"))
        print(f"repository: {files} values files, {n_commits} commits, made in {time.perf_counter() - t:.1f}s")

        prefix, queue = "bench", "bench:queue"
        raw = routing(f"file://{remote}", args.apps)
        config = {"routing": raw, "prefix": prefix, "queue": queue, "work_dir": str(root / "cache"),
                  "redis": redis_url, "stats": str(root / "stats")}
        (root / "worker.json").write_text(json.dumps(config))
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(root / "worker.json")], cwd=ROOT)
                 for _ in range(args.workers)]
        redis = await create_pool(RedisSettings.from_dsn(redis_url))
        keys = Keys(prefix=prefix)
        store = DeploymentStore(redis, keys, queue_name=queue)
        ctx = {"redis": redis, "keys": keys, "store": store,
               "settings": __import__("bridge.settings", fromlist=["Settings"]).Settings(
                   key_prefix=prefix, queue_name=queue)}
        deadline = time.monotonic() + 60
        while await redis.scard(f"{prefix}:ready") < args.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            await asyncio.sleep(0.05)

        def make(app: str, env: str, build: int) -> DeploymentRecord:
            return DeploymentRecord(id=f"{build}-{app}-{env}", build_key=f"org:p:{build}", build_id=build, route=app,
                                    environment=env, repository="gitops", file=f"apps/{app}/{env}/values.yaml",
                                    keys=["image.tag"], tag=f"2.0.{build}", state="writing",
                                    build_url=f"https://dev.azure.com/org/p/_build/results?buildId={build}")

        # Warm-up: the first flush clones the repository into the cache.
        warm = make("app-000", "prod", 1)
        await store.create(warm)
        await submit_bump(ctx, warm)
        while (await store.get(warm.id)).commit_sha is None:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)

        # 1. latency
        latencies = []
        for i in range(args.builds):
            rec = make(f"app-{i % args.apps:03d}", "dev", 10_000 + i)
            before = read_ref(remote)
            await store.create(rec)
            start = time.perf_counter()
            await submit_bump(ctx, rec)
            limit = time.monotonic() + 30
            while read_ref(remote) == before and time.monotonic() < limit:
                await asyncio.sleep(0.002)
            latencies.append(time.perf_counter() - start)
        landed = git("log", f"-{args.builds}", "--format=%(trailers:key=Deployment-Id,valueonly)", "main", cwd=remote)
        assert landed.count("-dev") == args.builds, "latency builds missing from the remote"
        base = baseline(root, remote, args.baseline)
        p50, p95, b50 = pct(latencies, 50), pct(latencies, 95), statistics.median(base)
        print(f"latency ({args.builds} sequential builds, submit_bump → commit in remote): "
              f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
        print(f"baseline ({args.baseline} builds, clone + sed + commit + push): p50 {b50 * 1000:.0f} ms, "
              f"p95 {pct(base, 95) * 1000:.0f} ms → writer is {b50 / p50:.1f}x faster at p50")

        # 2. burst
        burst_apps = apps(args.apps)[: args.burst_apps]
        per_app = args.burst // len(burst_apps)
        builds = [(a, 20_000 + k * 100 + j) for j, a in enumerate(burst_apps) for k in range(per_app)]
        random.Random(3).shuffle(builds)
        records = [make(a, "staging", b) for a, b in builds]
        for r in records:
            await store.create(r)
        head_before = read_ref(remote)
        start = time.perf_counter()
        waves = 10
        for w in range(waves):
            await asyncio.gather(*(submit_bump(ctx, r) for r in records[w::waves]))
            await asyncio.sleep(1.0 / waves)
        posted = time.perf_counter() - start
        limit = time.monotonic() + 120
        while time.monotonic() < limit:
            got = [await store.get(r.id) for r in records]
            if all(g is not None and (g.commit_sha or g.verdict) for g in got):
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        commits = int(git("rev-list", "--count", f"{head_before}..main", cwd=remote))
        verdicts = {"applied": 0, "superseded": 0, "other": 0}
        for g in got:
            key = "applied" if g is not None and g.verdict is None and g.commit_sha else (
                "superseded" if g is not None and g.verdict == "superseded" else "other")
            verdicts[key] += 1
        wrong = []
        for j, a in enumerate(burst_apps):
            top = 20_000 + (per_app - 1) * 100 + j
            text = git("show", f"main:apps/{a}/staging/values.yaml", cwd=remote)
            if f'tag: "2.0.{top}"' not in text:
                wrong.append(a)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=20)
        stats = [json.loads(f.read_text()) for f in root.glob("stats.*")]
        retries = sum(s["retries"] for s in stats)
        rss = max((s["rss"] for s in stats), default=0)
        print(f"burst ({len(records)} builds for {len(burst_apps)} apps, posted in {posted:.2f}s): all recorded "
              f"after {elapsed:.2f}s, {commits} commits, {retries:.0f} push retries, {verdicts['applied']} applied, "
              f"{verdicts['superseded']} superseded, {verdicts['other']} other; "
              f"apps not at their highest build: {len(wrong)}")
        print(f"worker peak RSS: {rss / 2**20:.0f} MB (max of {len(stats)} worker processes)")
        await redis.aclose()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--builds", type=int, default=50)
    parser.add_argument("--baseline", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--burst-apps", type=int, default=50)
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--history", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    asyncio.run(drive(args))


if __name__ == "__main__":
    main()
