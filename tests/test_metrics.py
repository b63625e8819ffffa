"""bridge.metrics: every closed-set series exists from the start, the Redis-held gauges mean what their names say, a
verdict is counted exactly once, and both processes' /metrics pass `promtool check metrics` (real Redis, real
servers)."""

from __future__ import annotations

import ast
import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from prometheus_client.parser import text_string_to_metric_families

from bridge import metrics
from bridge.app import create_app
from bridge.lifecycle import ACTIVE_STATES, VERDICTS
from bridge.queue import Keys, report_job_id
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers import outcome
from workers.main import build_worker, health_app

DB = 11
ROOT = Path(__file__).resolve().parents[1]
ROUTING = parse_routing({
    "repositories": {"platform": {"url": "/nonexistent.git"}},
    "routes": [
        {"name": "shop", "match": {"project": "P", "definition": "shop-ci"},
         "environments": [{"name": "dev", "repository": "platform", "file": "shop/dev.yaml"},
                          {"name": "prod", "repository": "platform", "file": "shop/prod.yaml", "after": "dev"}]},
        {"name": "cart", "match": {"project": "P", "definition": "cart-ci"},
         "environments": [{"name": "dev", "repository": "platform", "file": "cart/dev.yaml"}]},
    ],
})


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_every_closed_set_series_is_exported_at_zero_from_the_start() -> None:
    metrics.init(ROUTING, "worker")
    assert metrics.environments(ROUTING) == ["dev", "prod"]
    for env in ("dev", "prod"):
        for verdict in VERDICTS:
            assert value("bridge_deployments_total", environment=env, verdict=verdict) is not None, (env, verdict)
    for event_type in metrics.EVENT_TYPES:
        for out in metrics.WEBHOOK_OUTCOMES:
            assert value("bridge_webhook_requests_total", event_type=event_type, outcome=out) is not None
    for stage in metrics.STAGES:
        assert value("bridge_deployment_stage_seconds_count", stage=stage) is not None
    for span in metrics.SPANS:
        assert value("bridge_lead_time_seconds_count", span=span) is not None
    for kind in metrics.REPORT_KINDS:
        assert value("bridge_reports_failed_total", kind=kind) is not None
    for operation in metrics.ADO_OPERATIONS:
        for out in metrics.CLIENT_OUTCOMES:
            assert value("bridge_azure_devops_requests_total", operation=operation, outcome=out) is not None
    for state in ACTIVE_STATES:
        assert value("bridge_sweeper_repairs_total", state=state) is not None
        assert value("bridge_deployments_in_state", state=state) is not None
    assert value("bridge_build_info", version=metrics.package_version(), role="worker") == 1
    assert metrics.package_version() != "unknown"
    text = metrics.generate_latest(metrics.REGISTRY).decode()
    assert "process_resident_memory_bytes" in text and "python_info" in text


# Which label values each metric may take (the closed sets `init` exports).
CLOSED = {
    "WEBHOOK_REQUESTS": {"event_type": metrics.EVENT_TYPES, "outcome": metrics.WEBHOOK_OUTCOMES},
    "GITHUB_WEBHOOKS": {"outcome": metrics.GITHUB_WEBHOOK_OUTCOMES},
    "API_REQUESTS": {"endpoint": metrics.API_ENDPOINTS, "outcome": metrics.API_OUTCOMES},
    "DEPLOYMENTS": {"verdict": VERDICTS},
    "STAGE_SECONDS": {"stage": metrics.STAGES},
    "LEAD_TIME": {"span": metrics.SPANS},
    "GIT_PUSHES": {"outcome": metrics.GIT_PUSH_OUTCOMES},
    "ARGOCD_REQUESTS": {"outcome": metrics.ARGOCD_OUTCOMES},
    "ADO_REQUESTS": {"operation": metrics.ADO_OPERATIONS, "outcome": metrics.CLIENT_OUTCOMES},
    "GITHUB_REQUESTS": {"outcome": metrics.CLIENT_OUTCOMES},
    "REPORTS_FAILED": {"kind": metrics.REPORT_KINDS},
    "SWEEP_REPAIRS": {"state": ACTIVE_STATES},
    "GATE_CALLS": {"kind": metrics.GATE_KINDS, "outcome": metrics.GATE_CALL_OUTCOMES},
    "GATE_CALLBACKS": {"result": ("succeeded", "failed"), "outcome": metrics.GATE_CALLBACK_OUTCOMES},
}


def test_every_literal_label_value_in_the_code_is_in_its_closed_set() -> None:
    """A label value used in the code but missing from the set would appear only on its first increment."""
    seen = 0
    for path in [*(ROOT / "bridge").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "labels"
                    and isinstance(node.func.value, ast.Attribute)):
                continue
            metric = node.func.value.attr
            for kw in node.keywords:
                if isinstance(kw.value, ast.Constant) and kw.arg in CLOSED.get(metric, {}):
                    seen += 1
                    assert kw.value.value in CLOSED[metric][kw.arg], f"{path.name}: {metric} {kw.arg}={kw.value.value}"
            for arg, label in zip(node.args, CLOSED.get(metric, {}), strict=False):
                if isinstance(arg, ast.Constant):
                    seen += 1
                    assert arg.value in CLOSED[metric][label], f"{path.name}: {metric} {label}={arg.value}"
    assert seen > 20
    assert {stage for stage, _, _ in outcome.STAGES} == set(metrics.STAGES)


# -- the gauges read from Redis -------------------------------------------------------------------------------------

@pytest.fixture
async def redis(redis_url: Callable[[int], str]) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url(DB)))
    yield pool
    await pool.aclose()


def record(dep: str, env: str, state: str) -> DeploymentRecord:
    return DeploymentRecord(id=dep, build_key=f"b-{dep}", build_id=1, route="shop", environment=env,
                            repository="platform", file=f"shop/{env}.yaml", keys=["image.tag"],
                            state=state)  # type: ignore[arg-type]


async def test_gauges_count_ready_and_deferred_jobs_apart_and_deployments_by_state(redis: ArqRedis) -> None:
    now_ms = int(time.time() * 1000)
    await redis.zadd("m:queue", {"ready-1": now_ms - 30_000, "ready-2": now_ms - 1_000})
    await redis.zadd("m:queue", {f"pr-check-{i}": now_ms + 60_000 for i in range(50)})  # 50 PRs polled each minute
    store = DeploymentStore(redis, Keys(prefix="m"))
    for dep, env, state in [("a", "dev", "queued"), ("b", "dev", "writing"), ("c", "prod", "awaiting-merge"),
                            ("d", "prod", "awaiting-merge"), ("e", "dev", "reporting"), ("f", "dev", "done")]:
        assert await store.create(record(dep, env, state))
    await redis.zadd(Keys(prefix="m").state_index("awaiting-merge"), {"c": time.time() - 3600})

    body = (await metrics.render(redis, "m:queue", "m")).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    assert samples[("bridge_queue_depth", ())] == 2
    assert samples[("bridge_queue_deferred", ())] == 50
    assert 30 <= samples[("bridge_queue_oldest_ready_age_seconds", ())] < 60
    in_state = {state: samples[("bridge_deployments_in_state", (("state", state),))] for state in ACTIVE_STATES}
    assert in_state == {"queued": 1, "writing": 1, "awaiting-merge": 2, "verifying": 0, "reporting": 1}
    assert samples[("bridge_deployments_in_flight", ())] == 4  # no verdict yet: reporting and done are not in flight
    assert 3600 <= samples[("bridge_deployments_oldest_age_seconds", (("state", "awaiting-merge"),))] < 3700
    assert samples[("bridge_deployments_oldest_age_seconds", (("state", "verifying"),))] == 0

    await redis.delete("m:queue")
    body = (await metrics.render(redis, "m:queue", "m")).decode()
    assert "bridge_queue_oldest_ready_age_seconds 0.0" in body and "bridge_queue_depth 0.0" in body


async def test_a_verdict_is_counted_once_however_many_steps_race_or_rerun(redis: ArqRedis) -> None:
    settings = Settings(queue_name="m:queue", key_prefix="m")
    store = DeploymentStore(redis, Keys(prefix="m"), queue_name=settings.queue_name)
    ctx: dict[str, Any] = {"settings": settings, "routing": ROUTING, "store": store, "redis": redis}
    assert await store.create(record("race", "prod", "verifying"))
    metrics.init(ROUTING, "worker")
    before = value("bridge_deployments_total", environment="prod", verdict="failed")
    results = await asyncio.gather(*[outcome.finish_deployment(ctx, "race", "failed", f"attempt {i}")
                                     for i in range(12)])
    assert results.count(True) == 1
    assert not await outcome.finish_deployment(ctx, "race", "failed", "a re-run after a restart")
    assert not await outcome.finish_deployment(ctx, "race", "succeeded", "a late watcher")
    assert value("bridge_deployments_total", environment="prod", verdict="failed") == (before or 0) + 1
    assert value("bridge_deployments_total", environment="prod", verdict="succeeded") == 0


def restores(env: str) -> tuple[float, float]:
    return (value("bridge_time_to_restore_seconds_count", environment=env) or 0.0,
            value("bridge_time_to_restore_seconds_sum", environment=env) or 0.0)


async def test_time_to_restore_runs_from_the_first_failure_to_the_next_success_once(redis: ArqRedis) -> None:
    settings = Settings(queue_name="m:queue", key_prefix="m")
    store = DeploymentStore(redis, Keys(prefix="m"), queue_name=settings.queue_name)
    ctx: dict[str, Any] = {"settings": settings, "routing": ROUTING, "store": store, "redis": redis}
    metrics.init(ROUTING, "worker")
    for dep in ("ok-0", "bad-1", "bad-2", "fix-3", "ok-4"):
        assert await store.create(record(dep, "dev", "verifying"))
    count, total = restores("dev")
    assert await outcome.finish_deployment(ctx, "ok-0", "succeeded", "healthy")  # nothing was failing
    assert restores("dev") == (count, total)

    assert await outcome.finish_deployment(ctx, "bad-1", "failed", "Degraded")
    clock = Keys(prefix="m").failing_since("shop", "dev")
    first = float(await redis.get(clock))
    await redis.set(clock, f"{first - 120:.3f}", keepttl=True)  # the first failure was two minutes ago
    assert await outcome.finish_deployment(ctx, "bad-2", "timed-out", "not healthy in time")
    assert float(await redis.get(clock)) == pytest.approx(first - 120, abs=0.01)  # the clock keeps its start
    assert 0 < await redis.ttl(clock) <= store.ttl

    # the fix: many racing steps and a re-run after a restart, one observation
    results = await asyncio.gather(*[outcome.finish_deployment(ctx, "fix-3", "succeeded", f"healthy {i}")
                                     for i in range(8)])
    assert results.count(True) == 1
    assert not await outcome.finish_deployment(ctx, "fix-3", "succeeded", "a re-run after a restart")
    after_count, after_total = restores("dev")
    assert after_count == count + 1
    assert 120 <= after_total - total < 130
    assert await redis.exists(clock) == 0

    assert await outcome.finish_deployment(ctx, "ok-4", "succeeded", "healthy")  # restored already: not again
    assert restores("dev") == (after_count, after_total)


def test_lead_time_for_changes_runs_from_the_build_queue_time_and_skips_rollbacks() -> None:
    metrics.init(ROUTING, "worker")

    def observed(span: str) -> tuple[float, float]:
        return (value("bridge_lead_time_seconds_count", span=span) or 0.0,
                value("bridge_lead_time_seconds_sum", span=span) or 0.0)

    build = record("lead", "dev", "reporting")
    build.build_queued, build.build_finished = "2026-11-27T10:00:00Z", "2026-11-27T10:05:00Z"
    build.timeline.update(received="2026-11-27T10:05:01Z", committed="2026-11-27T10:05:02Z",
                          synced="2026-11-27T10:05:10Z", healthy="2026-11-27T10:05:30Z")
    before = {span: observed(span) for span in metrics.SPANS}
    outcome.observe_lead_times(build)
    grew = {span: (observed(span)[0] - before[span][0], observed(span)[1] - before[span][1]) for span in metrics.SPANS}
    assert grew == {"build_to_commit": (1, pytest.approx(2)), "commit_to_synced": (1, pytest.approx(8)),
                    "build_to_healthy": (1, pytest.approx(30)), "queue_to_healthy": (1, pytest.approx(330))}

    legacy = record("legacy", "dev", "reporting")  # written before records kept the queue time
    legacy.timeline.update(received="2026-11-27T10:05:01Z", healthy="2026-11-27T10:05:30Z")
    before = {span: observed(span) for span in metrics.SPANS}
    outcome.observe_lead_times(legacy)
    assert observed("queue_to_healthy") == before["queue_to_healthy"]

    rollback = build.model_copy(update={"kind": "rollback"})  # carries the restored build's times
    before = {span: observed(span) for span in metrics.SPANS}
    outcome.observe_lead_times(rollback)
    assert {span for span in metrics.SPANS if observed(span) != before[span]} == {"commit_to_synced"}


async def test_a_batch_of_verdicts_is_counted_once_each_with_its_report_and_pointer(redis: ArqRedis) -> None:
    settings = Settings(queue_name="m:queue", key_prefix="m")
    store = DeploymentStore(redis, Keys(prefix="m"), queue_name=settings.queue_name)
    ctx: dict[str, Any] = {"settings": settings, "routing": ROUTING, "store": store, "redis": redis}
    for n in range(5):
        assert await store.create(record(f"b{n}", "dev", "verifying"))
    assert await outcome.finish_deployment(ctx, "b0", "failed", "decided before the batch")
    metrics.init(ROUTING, "worker")
    before = value("bridge_deployments_total", environment="dev", verdict="succeeded") or 0
    restored_before = restores("dev")[0]
    reasons = {f"b{n}": f"ok {n}" for n in range(5)} | {"gone": "no record"}
    assert await outcome.finish_deployments(ctx, "succeeded", reasons, stamp=("synced", "healthy"), batch=2) == 4
    assert await outcome.finish_deployments(ctx, "succeeded", reasons) == 0  # a re-run decides nothing
    assert value("bridge_deployments_total", environment="dev", verdict="succeeded") == before + 4
    # b0's failure started the restore clock; the batch stopped it once, whichever of its successes came first
    assert restores("dev")[0] == restored_before + 1
    assert await redis.exists(Keys(prefix="m").failing_since("shop", "dev")) == 0
    first = await store.get("b0")
    assert first is not None and first.verdict == "failed"
    for n in range(1, 5):
        done = await store.get(f"b{n}")
        assert done is not None and (done.verdict, done.reason, done.state) == ("succeeded", f"ok {n}", "reporting")
        assert list(done.timeline)[-3:] == ["synced", "healthy", "finished"]
        assert await redis.zscore(settings.queue_name, report_job_id(f"b{n}", outcome.FINAL)) is not None
    assert {p["deployment_id"] for p in await store.last_succeeded("shop", "dev")} == {"b1", "b2", "b3", "b4"}


# -- promtool check metrics on both processes' /metrics ----------------------------------------------------------------

def promtool_check_metrics(text: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian's prometheus package): apt-get install -y prometheus   "
                    "# or: make tools")
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def test_web_and_worker_metrics_pass_promtool(redis_url: Callable[[int], str], serve: Callable[[Any], Any],
                                              tmp_path: Path) -> None:
    url = redis_url(DB)
    settings = Settings(redis_url=url, queue_name="m:queue", key_prefix="m", webhook={"allow_unauthenticated": True})
    web = serve(create_app(settings, ROUTING))
    worker = build_worker(settings, ROUTING, redis_url=url)
    worker_health = serve(health_app(worker, settings))
    for server in (web, worker_health):
        response = httpx.get(f"{server.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert "bridge_queue_deferred" in response.text and 'bridge_build_info{role="web"' in response.text
        promtool_check_metrics(response.content)
