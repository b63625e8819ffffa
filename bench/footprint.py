"""Redis footprint benchmark: bytes Redis keeps per finished deployment, by key family, next to the 1 KB target.

    .venv/bin/python bench/footprint.py [--runs 3] [--deployments 1000] [--apps 50]

The reference deployment is today's shape (issue 12, target 7): a push environment, one Argo CD application, verdict
`succeeded`, reported back to Azure DevOps (tags, properties, commit status). Each run starts its own everything:
a redis-server on a free port (`bridge.embedded_redis`), a bare GitOps repository with `--apps` apps, the Argo CD and
Azure DevOps fakes of the tests, and the real bridge (web + worker in one process, as `gitops-bridge serve` runs
them). Builds are posted to the webhook in waves of one build per app; a wave waits until every deployment is `done`
(so every deployment ends `succeeded`, none `superseded`). One warm-up wave first: the per-target keys (last setter,
last succeeded, ...) exist before the measurement, so only what grows with deployments is counted.

After `--deployments` more deployments are done and the queue is empty, per run:
  * `INFO memory used_memory` growth / deployments (what the process holds, allocator overhead included);
  * `MEMORY USAGE <key> SAMPLES 0` summed over every key, growth per key family / deployments, each family with
    whether it lasts the retention period (TTL > 1 day, or none) or is short-lived (e.g. arq job results).
Printed: the median of the runs, the spread (min–max), the load average, and the ratio to the 1,024-byte target.
It prints figures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import redis as redis_sync

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.embedded_redis import EmbeddedRedis  # noqa: E402
from bridge.lifecycle import ACTIVE_STATES  # noqa: E402

try:
    from bridge.records import decode_record  # noqa: E402
except ImportError:  # a checkout from before the compact records (to measure the "before")
    from bridge.records import DeploymentRecord  # noqa: E402

    decode_record = DeploymentRecord.model_validate_json  # type: ignore[assignment]
from bridge.routing import parse_routing  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from workers.demo import BridgeThread, build_complete  # noqa: E402
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake  # noqa: E402
from workers.fakes.azure_devops import FakeAzureDevOps  # noqa: E402

TARGET = 1024
PREFIX = "fp"
ORG, PROJECT = "contoso", "Storefront"
WEBHOOK_TOKEN = "bench-footprint-token"  # noqa: S105 - a throwaway credential for the benchmark's own bridge
PAT = "bench-pat"  # noqa: S105
MEMORY_FIELDS = ("used_memory_dataset", "used_memory_overhead", "mem_aof_buffer", "mem_clients_normal",
                 "used_memory_scripts")
# Families that do not grow with deployments: bounded per environment, reported apart from the per-deployment sum.
BOUNDED = {"last-ok": "the newest 20 successes per environment (what a rollback restores)"}
LONG = 86400  # a key whose TTL is above a day (or none) is kept for the retention period
VALUES = 'image:\n  repository: contoso.azurecr.io/{app}\n  tag: "100"\n'


def git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def app_names(n: int) -> list[str]:
    return [f"app{i:03d}" for i in range(n)]


def make_remote(root: Path, apps: list[str]) -> Path:
    bare, work = root / "gitops.git", root / "seed"
    git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    git(root, "init", "--quiet", "--initial-branch=main", str(work))
    for app in apps:
        (work / app).mkdir(parents=True)
        (work / app / "values-dev.yaml").write_text(VALUES.format(app=app))
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "layout")
    git(work, "push", "--quiet", str(bare), "main")
    shutil.rmtree(work)
    return bare


def routing_document(bare: Path, apps: list[str]) -> dict[str, Any]:
    return {
        "repositories": {"gitops": {"url": str(bare), "branch": "main"}},
        "routes": [{"name": app, "match": {"project": PROJECT, "definition": f"{app}-ci"},
                    "environments": [{"name": "dev", "repository": "gitops", "file": f"{app}/values-dev.yaml",
                                      "keys": ["image.tag"], "argocd": {"app": f"{app}-dev"}}]}
                   for app in apps],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def family(key: str) -> str:
    """`fp:dep:<id>` → `dep`; `arq:result:<id>` → `arq:result`; numbers and ids dropped."""
    if key.startswith("arq:"):
        return ":".join(key.split(":")[:2])
    parts = key.split(":")
    return parts[1] if len(parts) > 1 else key


def snapshot(r: redis_sync.Redis) -> tuple[int, dict[str, list[int]], dict[str, bool]]:
    """used_memory, {family: [bytes, keys]}, {family: kept for the retention period}."""
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    long: dict[str, bool] = {}
    for raw in r.scan_iter(count=1000):
        key = raw.decode()
        usage = r.memory_usage(key, samples=0) or 0
        ttl = int(r.ttl(key))
        fam = family(key)
        sizes[fam][0] += usage
        sizes[fam][1] += 1
        long[fam] = long.get(fam, False) or ttl == -1 or ttl > LONG
    info = r.info("memory")
    for field in MEMORY_FIELDS:
        sizes["info:" + field] = [int(info.get(field, 0)), 0]
    return int(info["used_memory"]), dict(sizes), long


class Run:
    def __init__(self, deployments: int, apps: int) -> None:
        self.n, self.apps = deployments, app_names(apps)
        self.root = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
        self.next_build = 1000

    def build(self, ado: FakeAzureDevOps, app: str) -> dict[str, Any]:
        self.next_build += 1
        build_id = self.next_build
        return ado.add_build(ORG, PROJECT, {
            "id": build_id, "buildNumber": f"2026.11.{build_id}", "result": "succeeded",
            "definition": {"id": 10 + self.apps.index(app), "name": f"{app}-ci"},
            "sourceBranch": "refs/heads/main", "sourceVersion": hashlib.sha1(str(build_id).encode()).hexdigest(),
            "repository": {"id": f"{app}-repo-id", "type": "TfsGit", "name": app},
        })

    def wave(self, client: httpx.Client, url: str, org_url: str, ado: FakeAzureDevOps,
             r: redis_sync.Redis, expected: int) -> None:
        def send(build: dict[str, Any]) -> None:
            for attempt in range(5):  # a keep-alive connection the server closed: deliver again (idempotent)
                try:
                    client.post(f"{url}/webhooks/azure-devops", json=build_complete(build, org_url)).raise_for_status()
                    return
                except httpx.TransportError:
                    time.sleep(0.1 * (attempt + 1))
            raise RuntimeError(f"build {build['id']} not delivered")

        builds = [self.build(ado, app) for app in self.apps]
        threads = [threading.Thread(target=send, args=(b,)) for b in builds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 120
        while True:
            busy = sum(int(r.zcard(f"{PREFIX}:state:{s}")) for s in ACTIVE_STATES)
            if busy == 0 and int(r.zcard(f"{PREFIX}:deps")) == expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"deployments not done after 120 s ({busy} active)")
            time.sleep(0.05)

    def quiet(self, r: redis_sync.Redis) -> None:
        """Until the queue holds nothing (the last watch ticks and reports ran)."""
        deadline = time.monotonic() + 60
        while int(r.zcard(f"{PREFIX}:queue")) and time.monotonic() < deadline:
            time.sleep(0.05)

    def verdicts(self, r: redis_sync.Redis) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for raw in r.mget([f"{PREFIX}:dep:{d.decode()}" for d in r.zrange(f"{PREFIX}:deps", 0, -1)]):
            counts[(decode_record(raw).verdict or "none") if raw else "gone"] += 1
        return dict(counts)

    def go(self) -> dict[str, Any]:
        bare = make_remote(self.root, self.apps)
        argocd = ArgoCDFake(bare, token=FAKE_TOKEN)
        for app in self.apps:
            argocd.add_app(f"{app}-dev", f"{app}/values-dev.yaml", sync_steps=1)
        ado = FakeAzureDevOps(pat=PAT)
        redis_server = EmbeddedRedis(self.root / "redis")
        port = free_port()
        started: list[Any] = []
        try:
            for thing in (redis_server, ado, argocd):
                thing.start()
                started.append(thing)
            argocd.start_reconciler(period=0.05)
            org_url = ado.org_url(ORG)
            document = routing_document(bare, self.apps)
            (self.root / "bridge.yaml").write_text(json.dumps(document))
            settings = Settings.model_validate({
                "config": self.root / "bridge.yaml", "redis_url": redis_server.url, "queue_name": f"{PREFIX}:queue",
                "key_prefix": PREFIX, "port": port, "log_level": "ERROR", "allow_insecure_http": True,
                "webhook": {"tokens": [WEBHOOK_TOKEN]},
                "git": {"work_dir": self.root / "clones", "author_name": "bench", "author_email": "b@example.com"},
                "argocd": {"url": argocd.url, "token": FAKE_TOKEN, "poll_seconds": 0.1, "deadline_seconds": 60,
                           "refresh_timeout_seconds": 2},
                "azure_devops": {"token": PAT, "organization_url": org_url, "reconcile_seconds": 0},
            })
            from bridge.logs import configure_logging

            configure_logging(settings)
            bridge = BridgeThread(settings, parse_routing(document, "footprint"), redis_server.url, port)
            bridge.start()
            started.append(bridge)
            url = f"http://127.0.0.1:{port}"
            r = redis_sync.Redis.from_url(redis_server.url)
            client = httpx.Client(timeout=30, headers={"X-Bridge-Token": WEBHOOK_TOKEN})
            done = len(self.apps)
            self.wave(client, url, org_url, ado, r, done)  # warm-up: the per-target keys
            self.quiet(r)
            before = snapshot(r)
            t0 = time.monotonic()
            while done < len(self.apps) + self.n:
                done += len(self.apps)
                self.wave(client, url, org_url, ado, r, done)
            self.quiet(r)
            seconds = time.monotonic() - t0
            after = snapshot(r)
            verdicts = self.verdicts(r)
            measured = done - len(self.apps)
            sample_record = r.get(f"{PREFIX}:dep:" + r.zrange(f"{PREFIX}:deps", -1, -1)[0].decode())
            client.close()
            r.close()
            return {"deployments": measured, "seconds": seconds, "verdicts": verdicts,
                    "used": (after[0] - before[0]) / measured,
                    "families": {fam: ((after[1].get(fam, [0, 0])[0] - before[1].get(fam, [0, 0])[0]) / measured,
                                       (after[1].get(fam, [0, 0])[1] - before[1].get(fam, [0, 0])[1]) / measured,
                                       after[2].get(fam, before[2].get(fam, False)))
                                 for fam in set(after[1]) | set(before[1])},
                    "record": len(sample_record or b""),
                    "record_json": decode_record(sample_record).model_dump_json() if sample_record else ""}
        finally:
            for thing in reversed(started):
                if isinstance(thing, ArgoCDFake):
                    thing.stop_reconciler()
                thing.stop()
            shutil.rmtree(self.root, ignore_errors=True)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.0f} ({min(values):.0f}–{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--show-record", action="store_true", help="print one stored record")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = []
    for i in range(args.runs):
        result = Run(args.deployments, args.apps).go()
        results.append(result)
        print(f"run {i + 1}: {result['deployments']} deployments in {result['seconds']:.1f} s, verdicts "
              f"{result['verdicts']}, used_memory +{result['used']:.0f} B per deployment", flush=True)
    load_after = os.getloadavg()
    families = sorted({fam for r in results for fam in r["families"]})
    print(f"\nRedis kept per finished deployment ({args.deployments} reference deployments, {args.apps} apps, "
          f"median of {args.runs} runs (min–max)):")
    print(f"  {'family':<16} {'bytes':>8} {'':13} {'keys':>6}  lasts")
    kept = [0.0] * len(results)
    short = [0.0] * len(results)
    for fam in families:
        if fam.startswith("info:"):
            continue
        rows = [r["families"].get(fam, (0.0, 0.0, False)) for r in results]
        if all(abs(b) < 0.5 for b, _, _ in rows):
            continue
        lasting = any(lst for _, _, lst in rows)
        what = "bounded: " + BOUNDED[fam] if fam in BOUNDED else "retention" if lasting else "short-lived"
        for i, (b, _, _) in enumerate(rows):
            if fam not in BOUNDED:
                (kept if lasting else short)[i] += b
        keys = statistics.median([k for _, k, _ in rows])
        print(f"  {fam:<16} {spread([b for b, _, _ in rows])} {keys:6.2f}  {what}")
    print(f"  {'kept (retention)':<16} {spread(kept)}   ratio to the 1,024 B target: "
          f"{statistics.median(kept) / TARGET:.2f}")
    print(f"  {'short-lived':<16} {spread(short)}")
    print(f"  {'used_memory':<16} {spread([r['used'] for r in results])}   ratio to the target: "
          f"{statistics.median([r['used'] for r in results]) / TARGET:.2f}")
    for field in MEMORY_FIELDS:
        print(f"    {field:<22} {spread([r['families']['info:' + field][0] for r in results])}")
    print(f"  one stored record (value only): {statistics.median([r['record'] for r in results]):.0f} B")
    print(f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} before, "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after (2 cores)")
    if args.show_record:
        print(re.sub(r"\s+", " ", results[-1]["record_json"]))


if __name__ == "__main__":
    main()
