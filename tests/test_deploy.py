"""The deployment job's own decisions: routing of queued builds, holds, bad tags, promotion rules (real Redis)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis_server import shared_redis_url

from bridge.events import parse_event
from bridge.queue import OPEN_PULL_REQUEST, PROMOTE_BUILD, Keys
from bridge.records import DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.deploy import process_build, promote_build
from workers.lifecycle import sweep_deployments
from workers.outcome import finish_deployment
from workers.report import report_deployment

REDIS_URL = shared_redis_url(6)
EVENTS = Path(__file__).resolve().parent / "data" / "azure-devops-events"  # copies of the reference samples

ROUTING = {
    "repositories": {"platform": {"url": "/nonexistent.git", "github": "org/gitops"}},
    "routes": [
        {
            "name": "chat",
            "match": {"project": "FabrikamFiberChat", "definition": "MainRepo (1)",
                      "branches": ["refs/heads/main"]},
            "tag": "{build.number}-{commit7}",
            "environments": [
                {"name": "staging", "repository": "platform", "file": "chat/values-staging.yaml",
                 "promotion": "pull-request"},
                {"name": "prod", "repository": "platform", "file": "chat/values-prod.yaml",
                 "promotion": "pull-request", "after": "staging"},
            ],
        },
        {
            "name": "pipeline",
            "match": {"project": "11bb11bb-cc22-dd33-ee44-55ff55ff55ff", "definition": "1"},
            "environments": [{"name": "dev", "repository": "platform", "file": "p/values-dev.yaml",
                              "promotion": "pull-request"}],
        },
        {
            "name": "pipeline-main-only",
            "match": {"project": "11bb11bb-cc22-dd33-ee44-55ff55ff55ff", "definition": "1",
                      "branches": ["refs/heads/main"]},
            "environments": [{"name": "dev", "repository": "platform", "file": "q/values-dev.yaml"}],
        },
    ],
}


def full_event(**resource: Any) -> dict[str, Any]:
    body = json.loads((EVENTS / "build.complete.2-full.json").read_text())
    body["publisherId"] = "tfs"
    body["resource"]["sourceVersion"] = "6e12f614bd0c5a9e3b84d6f7bcb5d0a1c2e3f405"
    body["resource"].update(resource)
    event = parse_event(body)
    return {"event": event.to_json(), "received": "2026-11-26T05:00:00.000Z"}  # type: ignore[union-attr]


@pytest.fixture
async def ctx() -> AsyncIterator[dict[str, Any]]:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    await redis.flushdb()
    keys = Keys(prefix="t6")
    settings = Settings(queue_name="t6:queue", key_prefix="t6")
    yield {
        "settings": settings, "routing": parse_routing(ROUTING), "keys": keys, "redis": redis,
        "store": DeploymentStore(redis, keys, queue_name=settings.queue_name), "ado": None, "job_try": 1,
    }
    await redis.flushdb()
    await redis.aclose()


async def queued(ctx: dict[str, Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """(function, args) of every job waiting in the test queue."""
    jobs = await ctx["redis"].queued_jobs(queue_name="t6:queue")
    return sorted((j.function, tuple(j.args)) for j in jobs)


async def test_build_starts_one_deployment_per_direct_environment_with_rendered_tag(ctx: dict[str, Any]) -> None:
    result = await process_build(ctx, full_event())
    assert len(result["deployments"]) == 1
    record = await ctx["store"].get(result["deployments"][0])
    assert record.environment == "staging"  # prod waits for `after: staging`
    assert record.tag == "20241202.1-6e12f61"
    assert record.state == "writing"
    assert record.timeline["received"] == "2026-11-26T05:00:00.000Z"
    assert record.build_queued == "2024-12-02T12:18:45.7367977Z"  # the event's queueTime: DORA's lead time starts
    jobs = await queued(ctx)
    assert ("open_pull_request", (record.id,)) in jobs
    # no Azure DevOps token in this ctx: a `started` report would have nothing to do, so none is queued
    assert ("report_deployment", (record.id, "started")) not in jobs


async def test_with_report_back_the_started_report_is_queued(ctx: dict[str, Any]) -> None:
    class EnabledClient:
        enabled = True

    ctx["ado"] = EnabledClient()
    result = await process_build(ctx, full_event())
    [dep] = result["deployments"]
    assert ("report_deployment", (dep, "started")) in await queued(ctx)


async def test_rerun_of_the_same_build_dispatches_nothing_new(ctx: dict[str, Any]) -> None:
    first = await process_build(ctx, full_event())
    await ctx["store"].update(first["deployments"][0], state="awaiting-merge")
    second = await process_build(ctx, full_event())
    assert second["deployments"] == []
    assert len([j for j in await queued(ctx) if j[0] == OPEN_PULL_REQUEST]) == 1


async def test_held_environment_ends_held_and_writes_nothing(ctx: dict[str, Any]) -> None:
    await ctx["store"].set_hold("chat", "staging", "incident 42")
    result = await process_build(ctx, full_event())
    assert result["deployments"] == []
    records, _ = await ctx["store"].list(build_id=2727068)
    assert [(r.environment, r.verdict) for r in records] == [("staging", "held")]
    assert "incident 42" in (records[0].reason or "")
    assert not [j for j in await queued(ctx) if j[0] == OPEN_PULL_REQUEST]
    assert ("report_deployment", (records[0].id, "final")) in await queued(ctx)  # queued with the verdict


@pytest.mark.parametrize("number", ["1.0 $(Rev)", "20241202.1\nimage: evil", "-leading-dash"])
async def test_tag_that_is_not_an_oci_tag_fails_permanently(ctx: dict[str, Any], number: str) -> None:
    result = await process_build(ctx, full_event(buildNumber=number))
    assert result["deployments"] == []
    records, _ = await ctx["store"].list(build_id=2727068)
    assert records[0].verdict == "failed"
    assert "not a valid OCI tag" in (records[0].reason or "")
    assert records[0].tag is None


async def test_branch_not_matching_routes_nowhere(ctx: dict[str, Any]) -> None:
    result = await process_build(ctx, full_event(sourceBranch="refs/heads/feature/x"))
    assert result["deployments"] == []
    assert await ctx["store"].list() == ([], None)


async def test_run_event_without_lookup_only_deploys_routes_open_to_every_branch(ctx: dict[str, Any]) -> None:
    body = json.loads((EVENTS / "ms.vss-pipelines.run-state-changed-event.json").read_text())
    event = parse_event(body)
    result = await process_build(ctx, {"event": event.to_json()})  # type: ignore[union-attr]
    records = [await ctx["store"].get(d) for d in result["deployments"]]
    assert [(r.route, r.environment, r.tag) for r in records if r] == [("pipeline", "dev", "11")]


async def test_promotion_refused_until_previous_environment_succeeded(ctx: dict[str, Any]) -> None:
    result = await process_build(ctx, full_event())
    staging = result["deployments"][0]
    refused = await promote_build(ctx, staging, "prod", False, "test")
    assert refused["status"] == "refused" and "staging did not succeed" in refused["reason"]
    assert await ctx["store"].get(staging.replace("-staging-", "-prod-")) is None

    forced = await promote_build(ctx, staging, "prod", True, "test")
    assert forced["status"] == "started"
    prod = await ctx["store"].get(forced["deployment"])
    assert prod.environment == "prod" and prod.promoted_from == staging and prod.details["force"] is True
    assert prod.build_queued == "2024-12-02T12:18:45.7367977Z"  # the build's fields travel with a promotion


async def test_success_starts_the_after_environment(ctx: dict[str, Any]) -> None:
    result = await process_build(ctx, full_event())
    staging = result["deployments"][0]
    assert await finish_deployment(ctx, staging, "succeeded", "synced and healthy")
    assert not await finish_deployment(ctx, staging, "failed", "second verdict is ignored")
    assert (PROMOTE_BUILD, (staging, "prod", False, "after:staging")) not in await queued(ctx)
    assert await report_deployment(ctx, staging, "final") == "skipped"  # no Azure DevOps here: nothing to send
    jobs = await queued(ctx)
    assert (PROMOTE_BUILD, (staging, "prod", False, "after:staging")) in jobs  # started by the final report
    record = await ctx["store"].get(staging)
    assert record.verdict == "succeeded" and record.reason == "synced and healthy" and record.state == "done"
    promoted = await promote_build(ctx, staging, "prod", False, "after:staging")
    assert promoted["status"] == "started"


async def test_in_flight_set_and_stage_metrics_follow_the_verdict(ctx: dict[str, Any]) -> None:
    from bridge.metrics import REGISTRY

    def stage_count(stage: str) -> float:
        return REGISTRY.get_sample_value("bridge_deployment_stage_seconds_count", {"stage": stage}) or 0.0

    before = stage_count("queue")
    result = await process_build(ctx, full_event())
    staging = result["deployments"][0]
    assert await ctx["store"].in_flight() == 1
    await finish_deployment(ctx, staging, "rejected", "closed unmerged")
    assert await ctx["store"].in_flight() == 0
    assert stage_count("queue") == before + 1  # received → started is known for a started deployment


async def test_run_event_without_lookup_skips_routes_that_name_the_project_by_name(ctx: dict[str, Any]) -> None:
    by_name = {
        "repositories": ROUTING["repositories"],
        "routes": [{"name": "by-name", "match": {"project": "SomeOtherProject", "definition": "1"},
                    "environments": [{"name": "dev", "repository": "platform", "file": "n/values.yaml"}]}],
    }
    ctx["routing"] = parse_routing(by_name)
    body = json.loads((EVENTS / "ms.vss-pipelines.run-state-changed-event.json").read_text())
    result = await process_build(ctx, {"event": parse_event(body).to_json()})  # type: ignore[union-attr]
    assert result["deployments"] == []
    assert await ctx["store"].list() == ([], None)


async def test_the_sweeper_drops_records_that_expired_from_the_state_index(ctx: dict[str, Any]) -> None:
    result = await process_build(ctx, full_event())
    assert await ctx["store"].in_flight() == 1
    await ctx["redis"].delete(ctx["keys"].deployment(result["deployments"][0]))  # as the retention TTL would
    await ctx["redis"].zadd(ctx["keys"].state_index("writing"), {result["deployments"][0]: 1.0})  # entered long ago
    assert await sweep_deployments(ctx) == {}
    assert await ctx["store"].in_flight() == 0
