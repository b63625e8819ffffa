"""End to end: deployments waiting on Argo CD (the fake, following a real bare repo) through a burst arq worker.

Redis db 4 only. Every verdict path, a newer commit landing first, a no-op commit, Argo CD unreachable, 5xx bursts,
manual-sync apps, and a worker restart that resumes the waits from Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func
from gitops_remote import Repo, git
from redis_server import shared_redis_url

from bridge import metrics
from bridge.queue import PROMOTE_BUILD, REPORT_DEPLOYMENT, VERIFY_DEPLOYMENT, WATCH_APPLICATION, Keys
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import RoutingConfig, parse_routing
from bridge.settings import Settings
from workers.argocd import ArgoCDClient
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake, git_is_ancestor
from workers.verify import resume_watches, verify_deployment, watch_application

REDIS_URL = shared_redis_url(4)
PREFIX = "gb-test-verify"
POLL = 0.1


APPS = {  # env name → (file, argocd block)
    "web": ("web/values.yaml", {"app": "web", "project": "team-a"}),
    "api": ("api/values.yaml", {"app": "api", "project": "team-a"}),
    "multi": ("multi/values.yaml", {"app": "multi", "project": "team-a", "source_index": 1}),
    "ghost": ("ghost/values.yaml", {"app": "ghost", "project": "team-a"}),
    "plain": ("plain/values.yaml", None),
}


def routing() -> RoutingConfig:
    envs = []
    for name, (file, argo) in APPS.items():
        env: dict[str, Any] = {"name": name, "repository": "gitops", "file": file, "deadline_seconds": 15,
                               "degraded_grace_seconds": 0}
        if argo:
            env["argocd"] = argo
        envs.append(env)
    return parse_routing({"repositories": {"gitops": {"url": "https://example.com/gitops.git"}},
                          "routes": [{"name": "svc", "match": {"project": "p", "definition": "d"},
                                      "environments": envs}]})


class Harness:
    def __init__(self, repo: Repo, fake: ArgoCDFake, redis: ArqRedis) -> None:
        self.repo, self.fake, self.redis = repo, fake, redis
        self.settings = Settings(argocd={"url": fake.url, "token": FAKE_TOKEN, "poll_seconds": POLL,
                                         "refresh_timeout_seconds": 0.5, "request_timeout_seconds": 3},
                                 queue_name=f"{PREFIX}:queue", key_prefix=PREFIX)
        self.keys = Keys(PREFIX)
        self.store = DeploymentStore(redis, self.keys, queue_name=self.settings.queue_name)
        self.reports: list[tuple[str, str]] = []
        self.ticks: list[str] = []
        self.ctx = self.new_ctx()

    def new_ctx(self, argocd_url: str | None = None) -> dict[str, Any]:
        client = ArgoCDClient(argocd_url or self.fake.url, FAKE_TOKEN, request_timeout=3, refresh_timeout=0.5)
        return {"settings": self.settings, "routing": routing(), "keys": self.keys, "store": self.store,
                "redis": self.redis, "argocd": client, "is_ancestor": git_is_ancestor({"gitops": self.repo.bare})}

    async def deployment(self, env: str, sha: str, n: int = 1) -> str:
        dep = f"{n}-svc-{env}"
        record = DeploymentRecord(id=dep, build_key=f"org:p:{n}", build_id=n, route="svc", environment=env,
                                  repository="gitops", file=APPS[env][0], keys=["image.tag"], commit_sha=sha,
                                  state="verifying", argocd_app=(APPS[env][1] or {}).get("app"))
        record.stamp("pushed")
        await self.store.create(record)
        await self.redis.enqueue_job(VERIFY_DEPLOYMENT, dep, _job_id=f"verify:{dep}",
                                     _queue_name=self.settings.queue_name)
        return dep

    def worker(self, ctx: dict[str, Any] | None = None, burst: bool = True) -> Worker:
        async def report(ctx: dict[str, Any], dep: str, phase: str) -> None:
            self.reports.append((dep, phase))

        async def promote(ctx: dict[str, Any], *args: Any) -> None:
            return None

        async def watch(ctx: dict[str, Any], key: str, cause: str = "tick") -> str:
            result = await watch_application(ctx, key, cause)
            self.ticks.append(result)
            return result

        return Worker(functions=[func(verify_deployment, name=VERIFY_DEPLOYMENT),
                                 func(watch, name=WATCH_APPLICATION, keep_result=0),
                                 func(report, name=REPORT_DEPLOYMENT), func(promote, name=PROMOTE_BUILD)],
                      redis_pool=self.redis, queue_name=self.settings.queue_name, burst=burst, poll_delay=0.02,
                      handle_signals=False, ctx=ctx or self.ctx, max_jobs=10)

    async def run(self, ctx: dict[str, Any] | None = None) -> None:
        await asyncio.wait_for(self.worker(ctx).main(), 60)

    async def record(self, dep: str) -> DeploymentRecord:
        record = await self.store.get(dep)
        assert record is not None
        return record


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path)
    r.commit({f"{env}/values.yaml": "image:\n  tag: '1'\n" for env in APPS} | {"README.md": "gitops\n"}, "initial")
    return r


@pytest.fixture
def fake(repo: Repo) -> Iterator[ArgoCDFake]:
    f = ArgoCDFake(repo.bare)
    f.add_app("web", "web/values.yaml", project="team-a")
    f.add_app("api", "api/values.yaml", project="team-a", auto_sync=False)
    f.add_app("multi", "multi/values.yaml", project="team-a", multi_source=True)
    with f.serve(reconcile_period=0.05):
        yield f


Scenario = Callable[[Harness], Awaitable[None]]


def scenario(repo: Repo, fake: ArgoCDFake, body: Scenario, harness: type[Harness] = Harness) -> Harness:
    holder: list[Harness] = []

    async def main() -> None:
        redis = await create_pool(RedisSettings.from_dsn(REDIS_URL))
        await redis.flushdb()
        h = harness(repo, fake, redis)
        holder.append(h)
        try:
            await body(h)
        finally:
            if h.ctx["argocd"] is not None:
                await h.ctx["argocd"].aclose()
            await redis.flushdb()
            await redis.aclose()

    asyncio.run(main())
    return holder[0]


def bump(repo: Repo, env: str, tag: str) -> str:
    return repo.commit({f"{env}/values.yaml": f"image:\n  tag: '{tag}'\n"}, f"{env} → {tag}")


def finished_count(env: str, verdict: str) -> float:
    return metrics.REGISTRY.get_sample_value("bridge_deployments_total", {"environment": env, "verdict": verdict}) \
        or 0.0


# -- verdicts ------------------------------------------------------------------------------------------------------


def test_a_long_wait_in_one_state_refreshes_once(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("web", health_sequence=["Progressing"] * 20 + ["Healthy"])
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        deps = [await h.deployment("web", sha, n) for n in range(1, 4)]
        await h.run()
        assert [(await h.record(d)).verdict for d in deps] == ["succeeded"] * 3
        assert fake.count("GET", "web", refresh=True) == 1  # the first read's flag is stored with the waiter
        assert h.ticks.count("waiting") >= 4

    scenario(repo, fake, body)


def test_auto_sync_success_with_one_request_per_tick(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("web", health_sequence=["Progressing", "Progressing", "Healthy"])
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        deps = [await h.deployment("web", sha, n) for n in range(1, 9)]
        await h.run()
        for dep in deps:
            rec = await h.record(dep)
            assert (rec.verdict, rec.state) == ("succeeded", "reporting"), rec.reason  # the final report is next
            assert "synced and Healthy" in (rec.reason or "")
            assert {"sync_started", "synced", "healthy", "finished"} <= set(rec.timeline)
            assert rec.argocd_url == f"{fake.url}/applications/web"
        # eight waiters, yet one status request per watcher tick that polled
        polls = sum(1 for t in h.ticks if t in ("waiting", "done", "failed", "unavailable"))
        assert fake.count("GET", "web") == polls
        assert fake.count("GET", "web", refresh=True) == 1  # the refresh after the push, once for all
        assert not await h.redis.hlen(h.keys.waiting("web"))
        assert not await h.redis.hexists(h.keys.watched_apps, "web")
        assert sorted(h.reports) == sorted((d, "final") for d in deps)

    scenario(repo, fake, body)


def test_newer_commit_landing_first_counts_as_ours(repo: Repo, fake: ArgoCDFake) -> None:
    fake.stop_reconciler()
    ours = bump(repo, "web", "2")
    newer = bump(repo, "web", "3")  # someone pushed after us before Argo CD reconciled

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", ours)
        fake.start_reconciler(0.05)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "succeeded", rec.reason
        assert fake.application("web")["status"]["sync"]["revision"] == newer
        assert all(e["revision"] != ours for e in fake.application("web")["status"]["history"])

    scenario(repo, fake, body)


def test_unrelated_newer_commit_is_not_ours(repo: Repo, fake: ArgoCDFake) -> None:
    """A revision that does not contain ours (a side branch pushed to main by force) never satisfies the wait."""
    base = git(repo.work, "rev-parse", "HEAD")
    ours = bump(repo, "web", "2")
    git(repo.work, "reset", "-q", "--hard", base)
    repo.commit({"web/values.yaml": "image:\n  tag: 'other'\n"}, "rewrite", force=True)

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", ours)
        # the deadline (15 s from the push) has passed: the first judgement after the refresh decides
        await h.store.update(dep, timeline={"pushed": "2000-01-01T00:00:00.000Z"})
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "timed-out", rec.reason
        assert f"did not finish deploying {ours[:10]}" in (rec.reason or "") and "last snapshot" in (rec.reason or "")

    scenario(repo, fake, body)


def test_no_op_commit_succeeds_without_operation(repo: Repo, fake: ArgoCDFake) -> None:
    sha = repo.commit({"README.md": "docs only\n"})

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", sha)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "succeeded", rec.reason
        assert "no change to this application's manifests" in (rec.reason or "")
        assert not any(r.method == "POST" for r in fake.requests)

    scenario(repo, fake, body)


def test_manual_sync_app_gets_one_tagged_sync(repo: Repo, fake: ArgoCDFake) -> None:
    sha = bump(repo, "api", "2")

    async def body(h: Harness) -> None:
        deps = [await h.deployment("api", sha, n) for n in (1, 2)]
        await h.run()
        for dep in deps:
            rec = await h.record(dep)
            assert rec.verdict == "succeeded", rec.reason
            assert "sync_started" in rec.timeline
        posts = [r for r in fake.requests if r.method == "POST"]
        assert len(posts) == 1 and posts[0].headers["content-type"] == "application/json"
        info = fake.application("api")["status"]["operationState"]["operation"]["info"]
        assert info == [{"name": "gitops-bridge.deployment", "value": d} for d in sorted(deps)]
        assert "revision" not in json.dumps(info)

    scenario(repo, fake, body)


def test_degraded_fails_with_failing_resources(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("web", degrade=True)
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", sha)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "failed"
        assert "Degraded" in (rec.reason or "") and "exceeded its progress deadline" in (rec.reason or "")
        assert rec.details["argocd"]["failing_resources"] == [
            'Deployment web/web: Degraded (Deployment "web" exceeded its progress deadline)']
        assert "synced" in rec.timeline and "healthy" not in rec.timeline

    scenario(repo, fake, body)


def test_sync_failure_after_retries_fails_with_message(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("web", sync_fails=True, sync_retries=2)
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", sha)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "failed"
        assert "one or more objects failed to apply" in (rec.reason or "") and "retried 2 times" in (rec.reason or "")
        assert rec.details["argocd"]["failing_resources"][0].startswith("Deployment web/web")

    scenario(repo, fake, body)


def test_comparison_error_fails_fast(repo: Repo, fake: ArgoCDFake) -> None:
    fake.stop_reconciler()
    sha = repo.commit({"web/values.yaml": "image: [broken\n"})

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", sha)
        fake.script("web", comparison_error="helm template: yaml: line 1: did not find expected ',' or ']'")
        fake.start_reconciler(0.05)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "failed"
        assert "ComparisonError" in (rec.reason or "") and "helm template" in (rec.reason or "")

    scenario(repo, fake, body)


def test_suspended_keeps_waiting_until_timed_out(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("web", suspend=True)
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", sha)
        # the environment deadline is 15 s from the push; pretend we pushed 14 s ago
        from datetime import UTC, datetime, timedelta

        pushed = (datetime.now(UTC) - timedelta(seconds=14)).isoformat().replace("+00:00", "Z")
        await h.store.update(dep, timeline={"pushed": pushed})
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "timed-out", rec.reason
        assert "health Suspended" in (rec.reason or "") and "last snapshot" in (rec.reason or "")
        assert rec.details["argocd"]["snapshot"].startswith("sync Synced at " + sha[:10])

    scenario(repo, fake, body)


def test_argocd_unreachable_is_timed_out(repo: Repo, fake: ArgoCDFake) -> None:
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        await h.ctx["argocd"].aclose()
        h.ctx = h.new_ctx(argocd_url="http://127.0.0.1:9")  # nothing listens there
        dep = await h.deployment("web", sha)
        from datetime import UTC, datetime, timedelta

        pushed = (datetime.now(UTC) - timedelta(seconds=13.5)).isoformat().replace("+00:00", "Z")
        await h.store.update(dep, timeline={"pushed": pushed})
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "timed-out"
        assert "Argo CD unreachable" in (rec.reason or "")
        assert "unavailable" in h.ticks

    scenario(repo, fake, body)


def test_5xx_burst_backs_off_and_recovers(repo: Repo, fake: ArgoCDFake) -> None:
    sha = bump(repo, "web", "2")
    fake.script("web", fail_5xx=4)

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", sha)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "succeeded", rec.reason
        assert sum(1 for r in fake.requests if r.status == 503) == 4
        assert h.ticks.count("unavailable") == 2  # refresh and its fallback GET fail twice, then it recovers

    scenario(repo, fake, body)


def test_hanging_refresh_falls_back_to_polling(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("web", hang_refresh=True)
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        dep = await h.deployment("web", sha)
        await h.run()
        assert (await h.record(dep)).verdict == "succeeded"
        assert fake.count("GET", "web", refresh=True) >= 1

    scenario(repo, fake, body)


def test_multi_source_compares_the_selected_source(repo: Repo, fake: ArgoCDFake) -> None:
    sha = bump(repo, "multi", "2")

    async def body(h: Harness) -> None:
        dep = await h.deployment("multi", sha)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "succeeded", rec.reason
        assert fake.application("multi")["status"]["sync"]["revisions"] == ["1.2.3", sha]

    scenario(repo, fake, body)


def test_missing_application_fails_with_not_found(repo: Repo, fake: ArgoCDFake) -> None:
    sha = bump(repo, "ghost", "2")

    async def body(h: Harness) -> None:
        dep = await h.deployment("ghost", sha)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "failed"
        assert "application ghost in project team-a not found" in (rec.reason or "")

    scenario(repo, fake, body)


def test_without_an_argocd_block_the_verdict_is_pushed_never_succeeded(repo: Repo, fake: ArgoCDFake) -> None:
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        plain = await h.deployment("plain", sha, 1)
        await h.run()
        rec = await h.record(plain)
        assert (rec.verdict, rec.reason) == ("pushed", "pushed, not verified: the environment names no Argo CD "
                                                       "application")
        await h.ctx["argocd"].aclose()
        h.ctx["argocd"] = None  # an application named while no Argo CD is configured: never a silent success
        web = await h.deployment("web", sha, 2)
        await h.run()
        rec = await h.record(web)
        assert rec.verdict == "failed" and "no Argo CD URL is configured" in (rec.reason or "")
        assert not fake.requests

    scenario(repo, fake, body)


# -- restart -------------------------------------------------------------------------------------------------------


def test_worker_restart_resumes_from_redis_and_finishes_once(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("web", frozen=True)  # the controller does nothing yet: the deployment keeps waiting
    sha = bump(repo, "web", "2")

    async def body(h: Harness) -> None:
        before = finished_count("web", "succeeded")
        dep = await h.deployment("web", sha)
        worker = h.worker(burst=False)
        task = asyncio.create_task(worker.main())
        for _ in range(500):
            if len(h.ticks) >= 3:
                break
            await asyncio.sleep(0.02)
        task.cancel()  # the worker dies mid-wait
        await asyncio.gather(task, return_exceptions=True)
        assert (await h.record(dep)).verdict is None
        # the stale Synced + Healthy at the old revision is not taken for ours
        waiter = json.loads(await h.redis.hget(h.keys.waiting("web"), dep))
        watcher = json.loads(await h.redis.hget(h.keys.watched_apps, "web"))  # the last snapshot is the app's
        assert waiter["reason"].endswith(f"not {sha[:10]} yet") and "Healthy" in watcher["last"]
        # lose every queued job and all in-memory state; only the Redis wait state survives
        await h.redis.delete(h.settings.queue_name, *[k async for k in h.redis.scan_iter(match="arq:job:*")])
        await h.ctx["argocd"].aclose()
        h.ctx = h.new_ctx()
        frozen = time.time()  # both calls in one poll interval, however slow the machine: the tick id is per interval
        with mock.patch("workers.verify.time.time", return_value=frozen):
            assert await resume_watches(h.ctx) == 1
            assert await resume_watches(h.ctx) == 1  # idempotent: still one tick job
        assert await h.redis.zcard(h.settings.queue_name) == 1
        fake.script("web", frozen=False)
        await h.run()
        rec = await h.record(dep)
        assert rec.verdict == "succeeded", rec.reason
        assert finished_count("web", "succeeded") == before + 1
        assert h.reports.count((dep, "final")) == 1

    scenario(repo, fake, body)
