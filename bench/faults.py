"""Fault benchmark: builds over many apps while workers are killed (`kill -9`) and Redis connections are dropped.

    .venv/bin/python bench/faults.py [--runs 3] [--builds 200] [--apps 20] [--kills 10] [--drops 3]

What runs is the product as deployed: `gitops-bridge web` and two `gitops-bridge worker` processes on a private,
append-only redis-server (appendfsync always), the Argo CD and Azure DevOps fakes of the test suite and a real bare
GitOps repository with `--apps` apps (push environments, verified in Argo CD, reported to Azure DevOps with commit
statuses). The fault harness is tests/faults/conftest.py (the same one the fault suite uses), with the default job
lease and lock lease of production (15 s).

Each run sends `--builds` builds round-robin over the apps, spread over about 20 s, and meanwhile kills a random one
of the two workers `--kills` times (starting a new one each time) and drops every Redis client connection
(`CLIENT KILL TYPE normal`) `--drops` times. It then waits (at most 180 s) until nothing is left in an active state,
and counts:
  lost         builds answered 202 without a finished deployment
  unreported   finished deployments without exactly one final commit status
  duplicated   Deployment-Ids carried by more than one commit
  downgraded   apps whose values file does not hold the tag of their newest build
  recovery     per fault, the time until the next deployment finished after it; the longest is printed
  settle       from the last build (or the last fault, if later) to the moment nothing was left in flight
The anchor, measured in the same invocation: the same burst with no fault, its settle time measured the same way.
Prints the median of the runs, the spread (min-max), the load average, and the ratio of the settle time to the
anchor's. It prints figures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from e2e.conftest import KEY_PREFIX, READ_TOKEN  # noqa: E402
from faults.conftest import FaultStack  # noqa: E402
from redis_server import PrivateRedis  # noqa: E402

from bridge.lifecycle import ACTIVE_STATES  # noqa: E402
from bridge.routing import parse_routing  # noqa: E402

VALUES = 'image:\n  repository: registry.example.com/{app}\n  tag: "100"\nreplicaCount: 1\n'


class WideStack(FaultStack):
    """The fault stack with `apps` extra push apps (svc00…), each its own route, values file and Argo CD app."""

    def __init__(self, root: Path, redis: PrivateRedis, apps: int) -> None:
        super().__init__(root, redis, lease_seconds=15.0, sweep_seconds=10.0)  # production defaults
        self.apps = [f"svc{i:02d}" for i in range(apps)]
        for app in self.apps:
            self.push_human_commit(f"helm/{app}/values-dev.yaml", VALUES.format(app=app), f"add {app}")
        for app in self.apps:
            self.argocd.add_app(f"{app}-dev", f"helm/{app}/values-dev.yaml", sync_steps=1)
            self.document["routes"].append({
                "name": app, "match": {"project": "Storefront", "definition": f"{app}-ci"},
                "environments": [{"name": "dev", "repository": "gitops", "file": f"helm/{app}/values-dev.yaml",
                                  "keys": ["image.tag"], "argocd": {"app": f"{app}-dev"}}]})
        self.initial = self.head()
        (root / "bridge.yaml").write_text(json.dumps(self.document, indent=2))
        self.routing = parse_routing(self.document, "bench routing")

    def build(self, build_id: int, app: str, **fields: Any) -> dict[str, Any]:
        index = self.apps.index(app) if app in self.apps else 0
        return super().build(build_id, "cart", definition={"id": 500 + index, "name": f"{app}-ci"},
                             repository={"id": f"{app}-repo-id", "type": "TfsGit", "name": app}, **fields)

    def records_all(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            response = self.api("GET", "/api/deployments", token=READ_TOKEN, params={"limit": 500, "offset": offset})
            body = response.json()
            out += body["items"]
            if body.get("next_offset") is None:
                return out
            offset = body["next_offset"]


def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def one_run(builds: int, apps: int, kills: int, drops: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        root = Path(tmp)
        redis = PrivateRedis(root / "redis", appendonly=True)
        redis.start()
        stack = WideStack(root, redis, apps)
        try:
            stack.start()
            stack.spawn_worker("worker-a")
            stack.spawn_worker("worker-b")
            faults_at = sorted(rng.sample(range(5, builds - 5), kills + drops)) if kills + drops else []
            kinds = ["kill"] * kills + ["drop"] * drops
            rng.shuffle(kinds)
            plan = dict(zip(faults_at, kinds, strict=True))
            fault_times: list[float] = []
            sent = []
            pause = 20.0 / builds
            for i in range(builds):
                sent.append(stack.send(stack.apps[i % len(stack.apps)]))
                kind = plan.get(i)
                if kind == "kill":
                    victim = rng.choice([w for w in stack.workers if w.process and w.process.poll() is None])
                    stack.kill(victim)
                    stack.workers.remove(victim)
                    stack.spawn_worker(f"worker-{i}")
                    fault_times.append(time.time())
                elif kind == "drop":
                    with stack.redis_client() as client:
                        client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                    fault_times.append(time.time())
                time.sleep(pause)
            last = max([*fault_times, time.time()])  # the last fault or the last build, whichever came later
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                with stack.redis_client() as client:
                    if not any(client.zcard(f"{KEY_PREFIX}:state:{s}") for s in ACTIVE_STATES):
                        break
                time.sleep(0.2)
            settled = time.time()
            return measure(stack, sent, fault_times, last, settled)
        finally:
            stack.stop()
            redis.stop()


def measure(stack: WideStack, sent: list[Any], fault_times: list[float], last: float,
            settled: float) -> dict[str, float]:
    records = {r["build_id"]: r for r in stack.records_all()}
    lost = sum(1 for b in sent if b.build_id not in records or records[b.build_id]["state"] != "done")
    unreported = 0
    for b in sent:
        finals = [s for s in stack.commit_states(b.payload, "dev") if s != "pending"]
        if b.build_id in records and len(finals) != 1:
            unreported += 1
    trailers = re.findall(r"^Deployment-Id: (\S+)$", "\n".join(m for _, m in stack.commits_since(stack.initial)),
                          re.MULTILINE)
    duplicated = len(trailers) - len(set(trailers))
    downgraded = 0
    for app in stack.apps:
        newest = max((b for b in sent if b.app == app), key=lambda b: b.build_id, default=None)
        if newest is not None and records.get(newest.build_id, {}).get("tag") != stack.values_tag(app, "dev"):
            downgraded += 1
    finished = sorted(t for t in (_ts(r["timeline"].get("finished")) for r in records.values()) if t)
    recovery = 0.0
    for t in fault_times:
        after = next((f for f in finished if f > t), None)
        recovery = max(recovery, (after - t) if after else settled - t)
    return {"lost": lost, "unreported": unreported, "duplicated": duplicated, "downgraded": downgraded,
            "recovery_s": recovery, "settle_s": settled - last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--builds", type=int, default=200)
    parser.add_argument("--apps", type=int, default=20)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--drops", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores")
    anchor = one_run(args.builds, args.apps, 0, 0, seed=0)
    print(f"anchor (no fault): settle {anchor['settle_s']:.1f} s after the last build; lost {anchor['lost']:.0f}, "
          f"unreported {anchor['unreported']:.0f}")
    runs = []
    for n in range(args.runs):
        result = one_run(args.builds, args.apps, args.kills, args.drops, seed=n + 1)
        runs.append(result)
        print(f"run {n + 1}: " + ", ".join(f"{k} {v:.1f}" if k.endswith("_s") else f"{k} {v:.0f}"
                                            for k, v in result.items()))
    print(f"\n{args.builds} builds over {args.apps} apps, {args.kills} worker kills and {args.drops} Redis "
          f"connection drops per run, {args.runs} runs (median, spread min-max):")
    for key in ("lost", "unreported", "duplicated", "downgraded", "recovery_s", "settle_s"):
        values = [r[key] for r in runs]
        print(f"  {key:<12} median {statistics.median(values):7.1f}   spread {min(values):.1f}-{max(values):.1f}")
    settle = statistics.median(r["settle_s"] for r in runs)
    print(f"  settle time / anchor settle time: {settle / max(anchor['settle_s'], 0.001):.1f}x")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
