"""Pipeline gate benchmark: the two figures of issue 10.

    .venv/bin/python bench/gate.py [--calls 500] [--concurrency 50] [--deployments 10]

1. Gate call → 200: `--calls` gate calls, `--concurrency` at a time, against the web app alone (one uvicorn
   process, as `gitops-bridge web` runs; its own Redis; no worker), every call a distinct build and plan (a real
   store + enqueue, never `attached`). Prints p50/p95/p99/max. Target: p99 ≤ 100 ms under 50 concurrent calls.
2. Verdict → TaskCompleted received: the whole bridge (web + worker in one loop, like `serve`) with the Azure DevOps
   and Argo CD fakes and a bare GitOps repository; `--deployments` gated deployments one after the other, each from
   the verdict's timestamp in the record to the moment the fake has the TaskCompleted (polled every 5 ms).
   Target: p50 ≤ 1 s.

The load generator is this process (httpx, asyncio); the figures depend on how busy the machine is: run it on an
idle one. It prints figures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from intake import exchange  # noqa: E402

from bridge.embedded_redis import EmbeddedRedis  # noqa: E402
from bridge.routing import parse_routing  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from workers.demo import ORG, PAT, PROJECT, WEBHOOK_TOKEN, BridgeThread, make_gitops_repo, routing_document  # noqa: E402
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake  # noqa: E402
from workers.fakes.azure_devops import FakeAzureDevOps  # noqa: E402

READ = "bench-read-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def settings_for(root: Path, redis_url: str, org_url: str, argocd_url: str, port: int) -> Settings:
    return Settings(
        config=root / "bridge.yaml", redis_url=redis_url, queue_name="bench-gate:queue", key_prefix="bench-gate",
        host="127.0.0.1", port=port, log_level="WARNING", allow_insecure_http=True,
        webhook={"tokens": [WEBHOOK_TOKEN]}, api={"read_tokens": [READ]},
        git={"work_dir": root / "clones", "author_name": "gitops-bridge", "author_email": "bridge@contoso.example"},
        argocd={"url": argocd_url, "token": FAKE_TOKEN, "poll_seconds": 0.2, "degraded_grace_seconds": 0.5,
                "refresh_timeout_seconds": 1.0},
        azure_devops={"token": PAT, "organization_url": org_url, "reconcile_seconds": 0},
    )


def gate_request(org_url: str, project_id: str, plan_id: str, token: str, build_id: int) -> tuple[dict[str, str],
                                                                                                   bytes]:
    headers = {"X-Bridge-Token": WEBHOOK_TOKEN, "Content-Type": "application/json", "PlanUrl": org_url,
               "ProjectId": project_id, "HubName": "build", "PlanId": plan_id, "JobId": str(uuid.uuid4()),
               "TimelineId": str(uuid.uuid4()), "TaskInstanceId": str(uuid.uuid4()), "AuthToken": token}
    body = f'{{"buildId": "{build_id}", "environment": "dev", "route": "cart", "timeoutMinutes": "30"}}'
    return headers, body.encode()


async def call_load(url: str, org_url: str, project_id: str, calls: int, concurrency: int) -> list[float]:
    """`concurrency` keep-alive connections on raw asyncio streams (httpx would be the bottleneck, as in intake.py)."""
    host, _, port = url.removeprefix("http://").partition(":")
    latencies: list[float] = []
    statuses: dict[bytes, int] = {}
    ids = iter(range(100_000, 100_000 + calls))
    requests = []
    for build_id in ids:
        headers, body = gate_request(org_url, project_id, str(uuid.uuid4()), f"job-{uuid.uuid4().hex}", build_id)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        requests.append((f"POST /webhooks/azure-devops/gate HTTP/1.1\r\nHost: {host}\r\n{head}"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    pending = iter(requests)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for request in pending:
                started = time.perf_counter()
                code = await exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    print(f"  answers: { {k.decode(): v for k, v in statuses.items()} }")
    return latencies


def _repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return make_gitops_repo(root)


def start_web(root: Path, redis_url: str, org_url: str, document: dict[str, Any]) -> tuple[Any, int]:
    """`uvicorn --factory bridge.app:app_from_environment` in its own process (as `gitops-bridge web` runs)."""
    import json
    import os
    import subprocess

    (root / "bridge.yaml").write_text(json.dumps(document))
    (root / "no-secrets").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update({"BRIDGE_REDIS_URL": redis_url, "BRIDGE_CONFIG": str(root / "bridge.yaml"),
                "BRIDGE_QUEUE_NAME": "bench-gate:queue", "BRIDGE_KEY_PREFIX": "bench-gate",
                "BRIDGE_WEBHOOK__TOKENS": WEBHOOK_TOKEN, "BRIDGE_LOG_LEVEL": "WARNING",
                "BRIDGE_SECRETS_DIR": str(root / "no-secrets"), "BRIDGE_ALLOW_INSECURE_HTTP": "true",
                "BRIDGE_ARGOCD__URL": "http://127.0.0.1:9", "BRIDGE_AZURE_DEVOPS__ORGANIZATION_URL": org_url,
                "BRIDGE_AZURE_DEVOPS__TOKEN": PAT})
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "bridge.app:app_from_environment", "--host",
               "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=(root / "web.log").open("wb"),
                               stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process, port
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"web did not start:\n{(root / 'web.log').read_text()[-2000:]}")
        time.sleep(0.1)


def part_one(root: Path, redis_url: str, ado: FakeAzureDevOps, calls: int, concurrency: int) -> None:
    org_url = ado.org_url(ORG)
    project_id = ado.add_project(ORG, PROJECT)["id"]
    document = routing_document(_repo(root / "p1"))
    process, port = start_web(root / "p1", redis_url, org_url, document)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(call_load(url, org_url, project_id, concurrency, concurrency))  # warm-up round
        latencies = asyncio.run(call_load(url, org_url, project_id, calls, concurrency))
    finally:
        process.terminate()
        process.wait(timeout=10)
    ms = [v * 1000 for v in latencies]
    print(f"gate call → 200, {calls} calls, {concurrency} concurrent: p50 {percentile(ms, 50):.1f} ms, "
          f"p95 {percentile(ms, 95):.1f} ms, p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms "
          f"(target p99 ≤ 100 ms)")


def part_two(root: Path, redis_url: str, ado: FakeAzureDevOps, deployments: int) -> None:
    bare = _repo(root / "p2")
    argocd = ArgoCDFake(bare, token=FAKE_TOKEN)
    argocd.add_app("cart-dev", "helm/cart/values-dev.yaml", sync_steps=1)
    argocd.start()
    argocd.start_reconciler(period=0.1)
    document = routing_document(bare)
    port = free_port()
    settings = settings_for(root, redis_url, ado.org_url(ORG), argocd.url, port)
    bridge = BridgeThread(settings, parse_routing(document), redis_url, port)
    bridge.start()
    delays: list[float] = []
    try:
        with httpx.Client(timeout=10) as http:
            for i in range(deployments):
                build_id = 200_000 + i
                plan_id, token = ado.add_plan()
                build = ado.add_build(ORG, PROJECT, {
                    "id": build_id, "definition": {"id": 12, "name": "cart-ci"},
                    "sourceBranch": "refs/heads/main", "orchestrationPlan": {"planId": plan_id}})
                headers, body = gate_request(ado.org_url(ORG), build["project"]["id"], plan_id, token, build_id)
                answer = http.post(f"http://127.0.0.1:{port}/webhooks/azure-devops/gate", content=body,
                                   headers=headers)
                assert answer.status_code == 200, answer.text
                deadline = time.monotonic() + 60
                while not any(e["name"] == "TaskCompleted" for e in ado.plan_events(plan_id)):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"no TaskCompleted for build {build_id} within 60 s")
                    time.sleep(0.005)
                received = time.time()
                items = http.get(f"http://127.0.0.1:{port}/api/deployments", params={"build_id": build_id},
                                 headers={"Authorization": f"Bearer {READ}"}).json()["items"]
                finished = datetime.fromisoformat(items[0]["timeline"]["finished"].replace("Z", "+00:00"))
                delays.append(received - finished.timestamp())
    finally:
        bridge.stop()
        argocd.stop()
    ms = [d * 1000 for d in delays]
    print(f"verdict → TaskCompleted received, {deployments} gated deployments: p50 {statistics.median(ms):.0f} ms, "
          f"max {max(ms):.0f} ms (target p50 ≤ 1 s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--deployments", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        root = Path(tmp)
        redis = EmbeddedRedis(root / "redis").start()
        ado = FakeAzureDevOps(pat=PAT).start()
        try:
            part_one(root, redis.url, ado, args.calls, args.concurrency)
            import redis as sync_redis

            with sync_redis.Redis.from_url(redis.url) as r:
                r.flushdb()  # part one's gates are not part two's work
            part_two(root, redis.url, ado, args.deployments)
        finally:
            ado.stop()
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
