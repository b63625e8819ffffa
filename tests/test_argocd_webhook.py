"""`POST /webhooks/argocd`: push hints from argocd-notifications wake an application's watcher; never a verdict.

The endpoint over a real socket (Redis db 4), then whole flows: the Argo CD fake posting its notifications to the
bridge while a worker waits with a one-hour poll interval (so every read comes from a hint), duplicates and
out-of-order (older revision) hints included.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from gitops_remote import Repo
from redis_server import shared_redis_url
from test_estates import FILE, EstateHarness, make_fake, make_repo
from test_verify import Harness, scenario

from bridge.app import create_app
from bridge.argocd_webhook import authorized, hinted_app
from bridge.queue import WATCH_APPLICATION, Keys
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake

REDIS_URL = shared_redis_url(4)
PREFIX = "gb-test-hints"
TOKEN = "hint-token-0123456789"
ROUTING = {"repositories": {"gitops": {"url": "https://example.com/gitops.git"}},
           "routes": [{"name": "svc", "match": {"project": "p", "definition": "d"},
                       "environments": [{"name": "dev", "repository": "gitops", "file": "v.yaml",
                                         "argocd": {"app": "web", "project": "team-a"}}]}]}


def settings(token: str | None = TOKEN, prefix: str = PREFIX, **argocd: Any) -> Settings:
    return Settings(redis_url=REDIS_URL, queue_name=f"{prefix}:queue", key_prefix=prefix,
                    webhook={"tokens": ["t0k3n-intake"]},
                    argocd={"url": "https://argocd.example", **({"webhook_token": token} if token else {}), **argocd})


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path)


@pytest.fixture
def fake(repo: Repo) -> Iterator[ArgoCDFake]:
    yield from make_fake(repo)


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    await pool.flushdb()
    yield pool
    await pool.flushdb()
    await pool.aclose()


@pytest.fixture
def url(serve: Callable[[Any], Any]) -> str:
    return f"{serve(create_app(settings(), parse_routing(ROUTING))).url}/webhooks/argocd"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(("headers", "ok"), [
    ({"authorization": f"Bearer {TOKEN}"}, True),
    ({"x-gitops-bridge-token": TOKEN}, True),
    ({"authorization": basic("argocd", TOKEN)}, True),
    ({"authorization": basic(TOKEN, "nope")}, False),
    ({"authorization": "Bearer nope"}, False),
    ({"x-gitops-bridge-token": ""}, False),
    ({}, False),
])
def test_credentials(headers: dict[str, str], ok: bool) -> None:
    assert authorized(TOKEN, headers) is ok


@pytest.mark.parametrize(("body", "found"), [
    ({"app": "web", "namespace": "argocd", "project": "team-a", "revision": "abc"}, ("web", "argocd", "team-a")),
    ({"app": "web"}, ("web", None, None)),
    ({"app": "Bad Name"}, None), ({"app": 3}, None), (["web"], None), ({}, None),
])
def test_hinted_app(body: Any, found: Any) -> None:
    assert hinted_app(body) == found


async def test_endpoint_wakes_only_watched_apps(url: str, redis: ArqRedis) -> None:
    keys = Keys(PREFIX)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(url, json={"app": "web"})
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers
        r = await client.post(url, content=b"{nope", headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 400
        r = await client.post(url, json={"project": "team-a"}, headers=auth)
        assert r.status_code == 400 and "names no application" in r.json()["reason"]
        r = await client.post(url, json={"app": "web", "namespace": "argocd", "project": "team-a"}, headers=auth)
        assert (r.status_code, r.json()["status"]) == (202, "ignored")  # nobody waits on it
        assert await redis.zcard(f"{PREFIX}:queue") == 0

        await redis.hset(keys.watched_apps, "web", json.dumps({"app": "web", "project": "team-a"}))
        r = await client.post(url, json={"app": "web", "project": "other"}, headers=auth)
        assert r.json()["status"] == "ignored"  # same name, another project
        statuses = [(await client.post(url, json={"app": "web", "namespace": "argocd", "project": "team-a"},
                                       headers=auth)).json()["status"] for _ in range(4)]
        # at most one read this second and one at the start of the next: the rest are throttled, none lost
        assert statuses[:2] == ["queued", "queued"] and set(statuses[2:]) <= {"throttled", "queued"}
        jobs = await redis.zrange(f"{PREFIX}:queue", 0, -1)
        assert 2 <= len(jobs) <= 3 and all(j.decode().startswith(WATCH_APPLICATION + "-hint:web:") for j in jobs)


async def test_endpoint_disabled_without_a_token(serve: Callable[[Any], Any], redis: ArqRedis) -> None:
    base = serve(create_app(settings(token=None), parse_routing(ROUTING))).url
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(f"{base}/webhooks/argocd", json={"app": "web"}, headers={"x-gitops-bridge-token": "x"})
    assert r.status_code == 404


# -- whole flows: the fake's notifications drive the verdict -----------------------------------------------------


def hinted_run(repo: Repo, fake: ArgoCDFake, serve: Callable[[Any], Any], env: str, *, duplicates: bool = False,
               stale: bool = False) -> tuple[Any, Harness]:
    fake.stop_reconciler()
    sha = repo.commit({FILE: "image:\n  tag: '2'\n"}, "api → 2")
    out: list[Any] = []

    async def body(h: Harness) -> None:
        # a one-hour poll: the first regular read is an hour away, so every read below comes from a hint
        h.settings = Settings(argocd={"url": fake.url, "token": FAKE_TOKEN, "poll_seconds": 3600,
                                      "refresh_timeout_seconds": 0.5, "request_timeout_seconds": 3},
                              queue_name=h.settings.queue_name, key_prefix=h.settings.key_prefix)
        await h.ctx["argocd"].aclose()
        h.ctx = h.new_ctx()
        bridge = Settings(redis_url=REDIS_URL, queue_name=h.settings.queue_name, key_prefix=h.settings.key_prefix,
                          webhook={"tokens": ["t0k3n-intake"]},
                          argocd={"url": fake.url, "webhook_token": TOKEN,
                                  "instances": [{"name": n, "url": fake.url} for n in ("eu", "us")]})
        served = serve(create_app(bridge, h.ctx["routing"]))
        fake.notify(f"{served.url}/webhooks/argocd", {"Authorization": f"Bearer {TOKEN}"}, duplicates=duplicates,
                    stale=stale)
        dep = await h.deployment(env, sha)
        worker = h.worker(burst=False)
        task = asyncio.create_task(worker.main())
        try:
            for _ in range(500):  # registered: every app has its watcher
                if await h.redis.hlen(h.keys.watched_apps) >= 3:
                    break
                await asyncio.sleep(0.02)
            fake.start_reconciler(0.05)
            for _ in range(1500):
                if (await h.record(dep)).verdict is not None:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        out.append(await h.record(dep))

    h = scenario(repo, fake, body, harness=EstateHarness)
    return out[0], h


def test_hints_drive_three_apps_to_success(repo: Repo, fake: ArgoCDFake, serve: Callable[[Any], Any]) -> None:
    rec, h = hinted_run(repo, fake, serve, "three")
    assert rec.verdict == "succeeded", rec.reason
    assert {n["trigger"] for n in fake.notifications} >= {"on-sync-succeeded", "on-deployed"}
    assert all(fake.count("GET", f"api-{r}") >= 1 for r in ("eu", "us", "ap"))


def test_duplicate_and_stale_hints_change_no_verdict(repo: Repo, fake: ArgoCDFake,
                                                     serve: Callable[[Any], Any]) -> None:
    fake.script("api-us", degrade=True)
    rec, h = hinted_run(repo, fake, serve, "three", duplicates=True, stale=True)
    assert rec.verdict == "failed", rec.reason
    assert (rec.reason or "").startswith("api-us: ")
    stale = [n for n in fake.notifications if n["trigger"] == "on-deployed" and n["revision"] != rec.commit_sha]
    assert stale  # older revisions were announced as deployed, out of order, and changed nothing
    # every notification went out twice, yet each hint is only a read: the verdict is the one Argo CD's state gives
    assert len(fake.notifications) >= 2 * len({(n["app"], n["trigger"], n["revision"]) for n in fake.notifications
                                               if n["trigger"] != "on-deployed" or n["revision"] == rec.commit_sha})
