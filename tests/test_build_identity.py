"""One identity per build: the configured organization's name, the project id and the build id, whichever path
delivered the build; and builds deployed under the keys of before (the payload's URL) are not deployed again."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from bridge.events import BuildEvent, parse_event
from bridge.organizations import Organization, assign
from bridge.queue import Keys, deployment_id
from bridge.records import DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.azure_devops import build_event_from_api
from workers.deploy import process_build

DB = 14
EVENTS = Path(__file__).resolve().parent / "data" / "azure-devops-events"
FIBER = Organization("fiber", "https://fabrikamfiber.visualstudio.com/")
ROUTING = parse_routing({
    "repositories": {"platform": {"url": "/nonexistent.git", "github": "org/gitops"}},
    "routes": [{"name": "chat", "match": {"project": "FabrikamFiberChat", "definition": "MainRepo (1)"},
                "environments": [{"name": "staging", "repository": "platform", "file": "chat/staging.yaml",
                                  "promotion": "pull-request"}]}],
})


def event(build_id: int = 501) -> BuildEvent:
    body = json.loads((EVENTS / "build.complete.2-full.json").read_text())
    body["resource"]["id"] = build_id
    body["resource"]["sourceVersion"] = "6e12f614bd0c5a9e3b84d6f7bcb5d0a1c2e3f405"
    parsed = parse_event(body)
    assert isinstance(parsed, BuildEvent)
    return parsed


@pytest.fixture
async def ctx(redis_url: Callable[[int], str]) -> AsyncIterator[dict[str, Any]]:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url(DB)))
    keys = Keys(prefix="ident")
    yield {"settings": Settings(queue_name="ident:queue", key_prefix="ident"), "routing": ROUTING, "keys": keys,
           "redis": redis, "store": DeploymentStore(redis, keys, queue_name="ident:queue"), "ado": None, "job_try": 1}
    await redis.aclose()


def test_webhook_and_reconciler_agree_on_the_key() -> None:
    hook = assign([FIBER], event())
    assert hook is not None
    api = build_event_from_api(FIBER, {"id": 501, "project": {"id": hook.project_id}, "result": "succeeded"})
    assert api.build_key == hook.build_key == f"fiber:{hook.project_id}:501"


async def test_records_carry_the_organization_name(ctx: dict[str, Any]) -> None:
    hook = assign([FIBER], event())
    assert hook is not None
    result = await process_build(ctx, {"event": hook.to_json(), "received": "2026-11-27T00:00:00.000Z"})
    [dep_id] = result["deployments"]
    assert dep_id == deployment_id(hook.build_key, "chat", "staging")
    record = await ctx["store"].get(dep_id)
    assert record.organization == "fiber" and record.build_key == hook.build_key


async def test_a_build_deployed_under_the_old_key_is_not_deployed_again(ctx: dict[str, Any]) -> None:
    old = event(502)  # a job queued before the upgrade: no organization, the key from the payload's URL
    first = await process_build(ctx, {"event": old.to_json(), "received": "2026-11-27T00:00:00.000Z"})
    [old_id] = first["deployments"]
    assert old_id == deployment_id(old.legacy_build_key, "chat", "staging")

    again = assign([FIBER], event(502))  # redelivered (or reconciled) after the upgrade: a new-style key
    assert again is not None and again.build_key != old.legacy_build_key
    second = await process_build(ctx, {"event": again.to_json(), "received": "2026-11-27T00:01:00.000Z"})
    assert second["build"] == old.legacy_build_key
    assert set(second["deployments"]) <= {old_id}  # the same deployment (its own idempotent re-run), never a new one
    assert await ctx["store"].get(deployment_id(again.build_key, "chat", "staging")) is None
    assert [r.id for r in await ctx["store"].for_build(old.legacy_build_key)] == [old_id]
