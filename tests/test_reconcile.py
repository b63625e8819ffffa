"""The reconciler against the fake Azure DevOps and a real Redis: what it queues, what it leaves, its watermark."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from bridge.events import BuildEvent
from bridge.queue import PROCESS_BUILD, RECONCILE_BUILDS, Keys
from bridge.records import DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.azure_devops import AzureDevOpsClient, build_event_from_api
from workers.fakes.azure_devops import FakeAzureDevOps
from workers.reconcile import reconcile_builds, reconcile_cron, routed_projects

ROUTING = parse_routing({
    "repositories": {"platform": {"url": "/nonexistent.git"}},
    "routes": [
        {"name": "chat", "match": {"project": "Chat", "definition": "chat-ci", "branches": ["refs/heads/main"]},
         "environments": [{"name": "prod", "repository": "platform", "file": "chat/values.yaml"}]},
        {"name": "api", "match": {"project": "Api", "definition": "12"},
         "environments": [{"name": "dev", "repository": "platform", "file": "api/values.yaml"}]},
    ],
})


def ago(minutes: float) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def fake() -> Iterator[FakeAzureDevOps]:
    with FakeAzureDevOps(pat="pat") as served:
        chat = {"id": 5, "name": "chat-ci"}
        served.add_build("org", "Chat", {"id": 1, "definition": chat, "finishTime": ago(10)})          # queued
        served.add_build("org", "Chat", {"id": 2, "definition": chat, "finishTime": ago(9),
                                         "sourceBranch": "refs/heads/feature"})                        # branch
        served.add_build("org", "Chat", {"id": 3, "definition": chat, "finishTime": ago(8),
                                         "result": "failed"})                                          # result
        served.add_build("org", "Chat", {"id": 4, "definition": {"id": 6, "name": "other"},
                                         "finishTime": ago(7)})                                        # unrouted
        served.add_build("org", "Chat", {"id": 5, "definition": chat, "finishTime": ago(60 * 24)})     # too old
        served.add_build("org", "Chat", {"id": 6, "definition": chat, "status": "inProgress",
                                         "finishTime": None})                                          # running
        served.add_build("org", "Api", {"id": 7, "definition": {"id": 12, "name": "api"}, "finishTime": ago(5),
                                        "sourceVersion": "ab" * 20})                                   # queued
        served.add_build("org", "Api", {"id": 8, "definition": {"id": 13, "name": "x"}, "finishTime": ago(5)})
        yield served


@pytest.fixture
async def ctx(fake: FakeAzureDevOps, redis_url: Any) -> AsyncIterator[dict[str, Any]]:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url(5)))
    settings = Settings(azure_devops={"token": "pat", "organization_url": fake.org_url("org"),
                                      "reconcile_lookback_seconds": 3600})
    ado = AzureDevOpsClient.from_settings(settings)
    keys = Keys()
    yield {"settings": settings, "routing": ROUTING, "keys": keys, "redis": redis,
           "store": DeploymentStore(redis, keys, queue_name=settings.queue_name), "ado": ado, "job_try": 1}
    await ado.aclose()
    await redis.aclose()


async def queued_builds(ctx: dict[str, Any]) -> dict[int, BuildEvent]:
    jobs = await ctx["redis"].queued_jobs(queue_name=ctx["settings"].queue_name)
    events = [BuildEvent.from_json(j.args[0]) for j in jobs if j.function == PROCESS_BUILD]
    return {e.build_id: e for e in events}


def test_routed_projects_filter_on_ids_only_when_every_route_names_one() -> None:
    assert routed_projects(ROUTING) == {"chat": ("Chat", None), "api": ("Api", [12])}


async def test_queues_routed_completed_builds_once(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    assert await reconcile_builds(ctx) == 2
    events = await queued_builds(ctx)
    assert sorted(events) == [1, 7]
    api = events[7]
    assert api.source_version == "ab" * 20 and api.definition_id == 12
    assert api.extra["source"] == "reconciler" and api.extra["received"]
    assert await ctx["redis"].exists(ctx["keys"].seen(api.build_key))
    assert fake.requests_to("GET", "/Api/_apis/build/builds")[-1]["query"]["definitions"] == "12"
    watermark = (await ctx["redis"].get(ctx["keys"].reconcile_watermark)).decode()
    assert datetime.fromisoformat(watermark) > datetime.now(UTC) - timedelta(minutes=1)

    assert await reconcile_builds(ctx) == 0  # seen: nothing twice
    fake.add_build("org", "Chat", {"id": 9, "definition": {"id": 5, "name": "chat-ci"}, "finishTime": ago(0)})
    assert await reconcile_builds(ctx) == 1
    assert 9 in await queued_builds(ctx)


async def test_builds_the_webhook_delivered_are_not_queued_again(ctx: dict[str, Any],
                                                                   fake: FakeAzureDevOps) -> None:
    project = fake.add_project("org", "Chat")["id"]
    delivered = build_event_from_api(ctx["ado"].organizations[0], {"id": 1, "project": {"id": project}})
    await ctx["redis"].set(ctx["keys"].seen(delivered.build_key), "build:x")  # as the webhook would have
    assert await reconcile_builds(ctx) == 1
    assert sorted(await queued_builds(ctx)) == [7]


async def test_failed_listing_keeps_the_watermark(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    old = (datetime.now(UTC) - timedelta(minutes=30)).isoformat(timespec="seconds")
    await ctx["redis"].set(ctx["keys"].reconcile_watermark, old)
    fake.fail(503, path="/Chat/_apis/build/builds")
    assert await reconcile_builds(ctx) == 1  # Api still reconciled
    assert datetime.fromisoformat((await ctx["redis"].get(ctx["keys"].reconcile_watermark)).decode()) == \
        datetime.fromisoformat(old)
    assert await reconcile_builds(ctx) == 1  # Chat's build 1 on the next run
    assert sorted(await queued_builds(ctx)) == [1, 7]


async def test_off_without_organization_or_token(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    seen = len(fake.requests)
    for off in (Settings(azure_devops={"token": "pat"}),  # a token, but no organization: nowhere to send it
                Settings(azure_devops={"organization_url": fake.org_url("org")})):  # no token
        disabled = AzureDevOpsClient.from_settings(off)
        try:
            assert not disabled.enabled
            assert await reconcile_builds({**ctx, "settings": off, "ado": disabled}) == 0
        finally:
            await disabled.aclose()
        assert reconcile_cron(off) == []
    assert len(fake.requests) == seen
    assert reconcile_cron(Settings()) == []
    jobs = reconcile_cron(ctx["settings"])
    assert len(jobs) == 1 and jobs[0].name == RECONCILE_BUILDS and jobs[0].minute == set(range(0, 60, 5))
