"""The operator API (/api/*) over a real uvicorn server and a real Redis (db 8): bearer tokens (read vs write),
deployment listing with filters and pages, holds, promotions (what gets queued, and why a promotion is refused)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from redis.asyncio import Redis

from bridge.app import create_app
from bridge.queue import PROMOTE_BUILD, Keys, deployment_id
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings

DB = 8
QUEUE = "test-api:queue"
PREFIX = "test-api"
READ, WRITE = "read-tok-7c1f0a93", "write-tok-d40b2e81"
ORG = "dev.azure.com/acme:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

ROUTING: dict[str, Any] = {
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [
        {
            "name": "api",
            "match": {"project": "Acme", "definition": "api-ci"},
            "environments": [
                {"name": "dev", "repository": "gitops", "file": "api/dev.yaml"},
                {"name": "staging", "repository": "gitops", "file": "api/staging.yaml"},
                {"name": "prod", "repository": "gitops", "file": "api/prod.yaml", "after": "staging"},
            ],
        },
        {
            "name": "web",
            "match": {"project": "Acme", "definition": "web-ci"},
            "environments": [
                {"name": "dev", "repository": "gitops", "file": "web/dev.yaml"},
                {"name": "prod", "repository": "gitops", "file": "web/prod.yaml", "branches": ["refs/heads/release/*"]},
            ],
        },
    ],
}


def make_settings(url: str, **api: Any) -> Settings:
    return Settings(redis_url=url, queue_name=QUEUE, key_prefix=PREFIX, webhook={"tokens": ["hook-tok-1234"]},
                    api=api if api else {"read_tokens": [READ], "write_tokens": [f"deployer:{WRITE}"]})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Bridge:
    def __init__(self, url: str, redis_url: str, store: DeploymentStore) -> None:
        self.url = url
        self.redis_url = redis_url
        self.store = store
        self.created = time.time() - 1000

    async def seed(self, build_id: int, route: str, env: str, verdict: str | None = None,
                   **fields: Any) -> DeploymentRecord:
        """A record as the workers leave it; each seeded record is newer than the previous one."""
        self.created += 1
        build_key = f"{ORG}:{build_id}"
        record = DeploymentRecord(
            id=deployment_id(build_key, route, env), build_key=build_key, build_id=build_id, route=route,
            environment=env, repository="gitops", file=f"{route}/{env}.yaml", keys=["image.tag"], tag=str(build_id),
            state="done" if verdict else "verifying", verdict=verdict, reason="seeded" if verdict else None,
            created=self.created, **fields,
        )
        assert await self.store.create(record)
        return record

    def client(self, token: str | None = READ) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=auth(token) if token else {}, timeout=10)

    def queued(self) -> list[tuple[str, tuple[Any, ...]]]:
        """(function, args) of every job in the queue, read from arq's keys."""
        with redis.Redis.from_url(self.redis_url) as r:
            jobs = []
            for job_id in r.zrange(QUEUE, 0, -1):
                raw = r.get(job_key_prefix + job_id.decode())
                assert raw is not None
                job = deserialize_job(raw)
                jobs.append((job.function, tuple(job.args)))
            return jobs


@pytest.fixture
async def bridge(redis_url: Callable[[int], str], serve: Callable[[Any], Any]) -> AsyncIterator[Bridge]:
    url = redis_url(DB)
    server = serve(create_app(make_settings(url), parse_routing(ROUTING)))
    client = Redis.from_url(url)
    try:
        yield Bridge(server.url, url, DeploymentStore(client, Keys(prefix=PREFIX)))
    finally:
        await client.aclose()


# -- tokens ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/deployments", None),
    ("GET", "/api/deployments/x", None),
    ("GET", "/api/holds", None),
    ("PUT", "/api/holds/api/prod", {"reason": "freeze"}),
    ("DELETE", "/api/holds/api/prod", None),
    ("POST", "/api/promotions", {"build_id": 1, "to": "staging"}),
])
async def test_missing_or_wrong_token_is_401_with_a_challenge(bridge: Bridge, method: str, path: str,
                                                              body: Any) -> None:
    for headers in ({}, auth("nope"), {"Authorization": f"Basic {READ}"}, {"Authorization": f"Token {READ}"}):
        async with bridge.client(None) as c:
            r = await c.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer ")
        assert r.json() == {"error": "a valid bearer token is required"}


async def test_read_token_reads_but_cannot_change(bridge: Bridge) -> None:
    await bridge.seed(10, "api", "dev", "succeeded")
    async with bridge.client(READ) as c:
        assert (await c.get("/api/deployments")).status_code == 200
        assert (await c.get("/api/holds")).status_code == 200
        assert (await c.put("/api/holds/api/prod", json={"reason": "freeze"})).status_code == 403
        assert (await c.delete("/api/holds/api/prod")).status_code == 403
        denied = await c.post("/api/promotions", json={"build_id": 10, "to": "staging"})
        assert denied.status_code == 403 and "write token" in denied.json()["error"]
    assert await bridge.store.list_holds() == []
    assert bridge.queued() == []


async def test_write_token_reads_too(bridge: Bridge) -> None:
    record = await bridge.seed(10, "api", "dev", "succeeded")
    async with bridge.client(WRITE) as c:
        assert (await c.get(f"/api/deployments/{record.id}")).json()["id"] == record.id
        assert (await c.get("/api/holds")).json() == {"items": []}


async def test_no_tokens_configured_denies_everything(redis_url: Callable[[int], str],
                                                      serve: Callable[[Any], Any]) -> None:
    server = serve(create_app(make_settings(redis_url(DB), read_tokens=[], write_tokens=[]), parse_routing(ROUTING)))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        for token in ("x", "anything"):
            assert (await c.get("/api/deployments", headers=auth(token))).status_code == 401


async def test_denials_are_counted(bridge: Bridge) -> None:
    async with bridge.client("nope") as c:
        await c.get("/api/holds")
        text = (await c.get("/metrics")).text
    assert 'bridge_api_requests_total{endpoint="holds",outcome="unauthorized"}' in text


# -- deployments -----------------------------------------------------------------------------------------------------

async def test_list_is_newest_first_with_filters(bridge: Bridge) -> None:
    a = await bridge.seed(10, "api", "dev", "succeeded")
    b = await bridge.seed(10, "api", "staging", "failed")
    c = await bridge.seed(11, "api", "dev")
    d = await bridge.seed(11, "web", "dev", "held")
    e = await bridge.seed(12, "web", "prod", "succeeded")

    async def ids(**params: Any) -> list[str]:
        async with bridge.client() as client:
            r = await client.get("/api/deployments", params=params)
        assert r.status_code == 200, r.text
        assert r.json()["next_offset"] is None
        return [item["id"] for item in r.json()["items"]]

    assert await ids() == [e.id, d.id, c.id, b.id, a.id]
    assert await ids(build_id=10) == [b.id, a.id]
    assert await ids(route="web") == [e.id, d.id]
    assert await ids(environment="dev") == [d.id, c.id, a.id]
    assert await ids(verdict="succeeded") == [e.id, a.id]
    assert await ids(verdict="in-flight") == [c.id]
    assert await ids(route="api", environment="dev", verdict="succeeded") == [a.id]
    assert await ids(build_id=99) == []
    assert await ids(route="api", build_id="") == [c.id, b.id, a.id]  # an empty filter is no filter


async def test_pages_walk_through_everything_once(bridge: Bridge) -> None:
    seeded = [await bridge.seed(100 + i, "api", "dev", "succeeded") for i in range(7)]
    seen: list[str] = []
    offset: int | None = 0
    pages = 0
    async with bridge.client() as c:
        while offset is not None:
            body = (await c.get("/api/deployments", params={"limit": 3, "offset": offset})).json()
            assert len(body["items"]) <= 3
            seen += [item["id"] for item in body["items"]]
            offset = body["next_offset"]
            pages += 1
            assert pages <= 3
        assert seen == [r.id for r in reversed(seeded)]
        # limits are clamped to 1..500
        assert len((await c.get("/api/deployments", params={"limit": 0})).json()["items"]) == 1
        assert len((await c.get("/api/deployments", params={"limit": 9999})).json()["items"]) == 7
        # a page past the end is empty
        assert (await c.get("/api/deployments", params={"offset": 50})).json() == {"items": [], "next_offset": None}


@pytest.mark.parametrize("params", [{"build_id": "abc"}, {"limit": "many"}, {"offset": "1.5"}, {"verdict": "ok"}])
async def test_bad_list_parameters_are_400(bridge: Bridge, params: dict[str, str]) -> None:
    async with bridge.client() as c:
        r = await c.get("/api/deployments", params=params)
    assert r.status_code == 400
    assert r.json()["error"]


async def test_one_deployment_with_its_timeline(bridge: Bridge) -> None:
    record = await bridge.seed(10, "api", "dev", "succeeded", commit_sha="a" * 40, timeline={"queued": "t0"})
    async with bridge.client() as c:
        r = await c.get(f"/api/deployments/{record.id}")
        missing = await c.get("/api/deployments/10-api-nowhere-000000")
    assert r.status_code == 200
    assert DeploymentRecord.model_validate(r.json()) == record
    assert r.json()["timeline"] == {"queued": "t0"}
    assert missing.status_code == 404
    assert "10-api-nowhere-000000" in missing.json()["error"]


# -- holds -----------------------------------------------------------------------------------------------------------

async def test_hold_list_release(bridge: Bridge) -> None:
    async with bridge.client(WRITE) as c:
        r = await c.put("/api/holds/api/prod", json={"reason": "  release freeze ", "by": "alice"})
        assert r.status_code == 201
        assert r.json()["reason"] == "release freeze"
        # Who: the name of the token (the server's word); the client's `by` is only a note.
        assert (r.json()["by"], r.json()["note"]) == ("deployer", "alice")
        other = (await c.put("/api/holds/web/dev", json={"reason": "broken", "by": 7})).json()
        assert other["by"] == "deployer" and "note" not in other

        assert await bridge.store.get_hold("api", "prod") is not None  # the workers see it
        items = (await c.get("/api/holds")).json()["items"]
        assert [(h["route"], h["environment"], h["reason"]) for h in items] == [
            ("api", "prod", "release freeze"), ("web", "dev", "broken")]

        r = await c.delete("/api/holds/api/prod")
        assert r.json() == {"released": True, "route": "api", "environment": "prod"}
        assert (await c.delete("/api/holds/api/prod")).json()["released"] is False
        assert [h["route"] for h in (await c.get("/api/holds")).json()["items"]] == ["web"]
    assert await bridge.store.get_hold("api", "prod") is None


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("PUT", "/api/holds/nope/prod", {"json": {"reason": "x"}}, 404),
    ("PUT", "/api/holds/web/staging", {"json": {"reason": "x"}}, 404),
    ("DELETE", "/api/holds/api/qa", {}, 404),
    ("PUT", "/api/holds/api/prod", {"json": {"reason": "   "}}, 400),
    ("PUT", "/api/holds/api/prod", {"json": {}}, 400),
    ("PUT", "/api/holds/api/prod", {"json": ["reason"]}, 400),
    ("PUT", "/api/holds/api/prod", {"content": b"reason=freeze"}, 400),
])
async def test_bad_holds_are_refused(bridge: Bridge, method: str, path: str, kwargs: dict[str, Any],
                                     status: int) -> None:
    async with bridge.client(WRITE) as c:
        r = await c.request(method, path, **kwargs)
    assert r.status_code == status
    assert r.json()["error"]
    assert await bridge.store.list_holds() == []


# -- promotions ------------------------------------------------------------------------------------------------------

async def promote(bridge: Bridge, body: Any) -> httpx.Response:
    async with bridge.client(WRITE) as c:
        return await c.post("/api/promotions", json=body)


async def test_promotion_after_success_is_queued(bridge: Bridge) -> None:
    dev = await bridge.seed(10, "api", "dev", "succeeded")
    r = await promote(bridge, {"build_id": 10, "to": "staging", "by": "alice"})
    assert r.status_code == 202, r.text
    target = deployment_id(dev.build_key, "api", "staging")
    assert r.json() == {"status": "queued", "deployment": target, "from": dev.id}
    assert bridge.queued() == [(PROMOTE_BUILD, (dev.id, "staging", False, "deployer (alice)"))]


@pytest.mark.parametrize(("verdict", "state"), [("failed", "failed"), (None, "still in flight"),
                                                ("held", "held")])
async def test_promotion_needs_the_previous_environment_to_succeed(bridge: Bridge, verdict: str | None,
                                                                   state: str) -> None:
    dev = await bridge.seed(10, "api", "dev", verdict)
    r = await promote(bridge, {"build_id": 10, "to": "staging"})
    assert r.status_code == 409
    assert r.json()["error"] == f"dev did not succeed for build 10 ({state}); pass force to override"
    assert bridge.queued() == []

    r = await promote(bridge, {"build_id": 10, "to": "staging", "force": True})
    assert r.status_code == 202
    assert bridge.queued() == [(PROMOTE_BUILD, (dev.id, "staging", True, "deployer"))]


async def test_after_names_the_previous_environment(bridge: Bridge) -> None:
    await bridge.seed(10, "api", "dev", "succeeded")
    r = await promote(bridge, {"build_id": 10, "to": "prod"})  # prod follows staging, which never ran
    assert r.status_code == 409
    assert "staging did not succeed for build 10 (not deployed)" in r.json()["error"]

    staging = await bridge.seed(10, "api", "staging", "succeeded")
    r = await promote(bridge, {"build_id": 10, "to": "prod"})
    assert r.status_code == 202
    assert r.json()["from"] == staging.id


async def test_no_second_deployment_to_the_same_environment(bridge: Bridge) -> None:
    await bridge.seed(10, "api", "dev", "succeeded")
    staging = await bridge.seed(10, "api", "staging", "failed")
    for body in ({"build_id": 10, "to": "staging"}, {"build_id": 10, "to": "staging", "force": True},
                 {"build_id": 10, "to": "dev"}):
        r = await promote(bridge, body)
        assert r.status_code == 409, body
        assert "already has a deployment" in r.json()["error"]
    assert staging.id in (await promote(bridge, {"build_id": 10, "to": "staging"})).json()["error"]
    assert bridge.queued() == []


async def test_a_build_in_several_routes_needs_the_route(bridge: Bridge) -> None:
    await bridge.seed(10, "api", "dev", "succeeded")
    await bridge.seed(10, "web", "dev", "succeeded")
    r = await promote(bridge, {"build_id": 10, "to": "prod", "force": True})
    assert r.status_code == 400
    assert "route" in r.json()["error"]

    r = await promote(bridge, {"build_id": 10, "to": "prod", "route": "web"})
    assert r.status_code == 202
    assert r.json()["deployment"].startswith("10-web-prod-")


async def test_promotion_respects_the_target_branches(bridge: Bridge) -> None:
    feature = await bridge.seed(20, "web", "dev", "succeeded", source_branch="refs/heads/feature/x")
    release = await bridge.seed(21, "web", "dev", "succeeded", source_branch="refs/heads/release/2.0")
    r = await promote(bridge, {"build_id": 20, "to": "prod"})
    assert r.status_code == 409
    assert r.json()["error"] == ("build 20 is from refs/heads/feature/x, which prod does not accept "
                                 "(refs/heads/release/*); pass force to override")
    assert bridge.queued() == []

    assert (await promote(bridge, {"build_id": 21, "to": "prod"})).status_code == 202
    assert (await promote(bridge, {"build_id": 20, "to": "prod", "force": True})).status_code == 202
    assert sorted(bridge.queued()) == sorted([(PROMOTE_BUILD, (release.id, "prod", False, "deployer")),
                                              (PROMOTE_BUILD, (feature.id, "prod", True, "deployer"))])


@pytest.mark.parametrize(("body", "status"), [
    ({"build_id": 99, "to": "staging"}, 404),          # no such build
    ({"build_id": 10, "to": "qa"}, 404),               # no such environment
    ({"build_id": 10, "to": "staging", "route": "web"}, 404),  # web has no staging
    ({"build_id": "10", "to": "staging"}, 400),
    ({"build_id": True, "to": "staging"}, 400),
    ({"build_id": 10}, 400),
    ({"build_id": 10, "to": "staging", "force": "false"}, 400),
    (["build_id", 10], 400),
])
async def test_bad_promotions_are_refused(bridge: Bridge, body: Any, status: int) -> None:
    await bridge.seed(10, "api", "dev", "succeeded")
    r = await promote(bridge, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]
    assert bridge.queued() == []


async def test_promotion_body_must_be_json(bridge: Bridge) -> None:
    async with bridge.client(WRITE) as c:
        r = await c.post("/api/promotions", content=b"build_id=10&to=staging")
        assert r.status_code == 400
        assert r.json()["error"].startswith("invalid JSON: ")  # names the problem
        r = await c.post("/api/promotions", json=[10, "staging"])
    assert r.status_code == 400
    assert r.json() == {"error": "body must be a JSON object"}
