"""Trust boundaries end to end: no outbound call is addressed with a payload field.

A "foreign" server that records every request stands where hostile payload fields point (collection and account base
URLs, links, resource URLs). Report-back, build look-ups, the reconciler and `subscribe` must send it nothing, while
the configured Azure DevOps fake receives their calls (so an event that was merely ignored cannot pass).
"""

from __future__ import annotations

import asyncio
import copy
import io
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq.connections import RedisSettings, create_pool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.queue import Keys
from workers.azure_devops import AzureDevOpsClient
from workers.demo import ORG, build_complete
from workers.fakes.server import ServedApp
from workers.reconcile import reconcile_builds
from workers.subscribe import subscribe

from .conftest import KEY_PREFIX, Stack, StackFactory, run_state_changed

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class Recorder:
    """Answers 200 `{}` to anything and remembers (method, path, Authorization) of every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.lock = threading.Lock()
        self.served = ServedApp(Starlette(routes=[Route("/{path:path}", self.record, methods=METHODS)]))

    async def record(self, request: Request) -> Response:
        with self.lock:
            self.requests.append((request.method, request.url.path, request.headers.get("authorization")))
        return JSONResponse({})

    @property
    def url(self) -> str:
        return self.served.url


@pytest.fixture
def foreign() -> Iterator[Recorder]:
    recorder = Recorder()
    with recorder.served:
        yield recorder


def poison(event: dict[str, Any], hostile: str) -> dict[str, Any]:
    """Every URL field of the envelope except the collection's points at `hostile`."""
    out = copy.deepcopy(event)
    containers = out["resourceContainers"]
    containers["account"] = {"id": str(uuid.uuid4()), "baseUrl": hostile}
    containers["project"]["baseUrl"] = hostile
    resource = out["resource"]
    if "run" in resource:
        run = resource["run"]
        run_id = run["_links"]["self"]["href"].rsplit("/", 1)[-1]
        run["url"] = f"{hostile}p/_apis/Pipelines/1/runs/{run_id}"
        run["_links"] = {"self": {"href": run["url"]}, "web": {"href": f"{hostile}p/_build/results?buildId={run_id}"}}
    else:
        resource["url"] = f"{hostile}p/_apis/build/Builds/{resource['id']}"
        resource["_links"] = {"web": {"href": f"{hostile}p/_build/results?buildId={resource['id']}"}}
        resource["repository"]["url"] = f"{hostile}p/_apis/git/repositories/x"
    return out


def reconcile(s: Stack) -> int:
    async def run() -> int:
        settings = s.settings.model_copy(update={"azure_devops": s.settings.azure_devops.model_copy(
            update={"reconcile_lookback_seconds": 3600})})
        redis = await create_pool(RedisSettings.from_dsn(s.redis_url))
        ado = AzureDevOpsClient.from_settings(settings)
        try:
            return await reconcile_builds({"settings": settings, "routing": s.routing, "redis": redis, "ado": ado,
                                           "keys": Keys(prefix=KEY_PREFIX)})
        finally:
            await ado.aclose()
            await redis.aclose()

    return asyncio.run(run())


def test_no_outbound_call_follows_a_payload_url(stack: StackFactory, foreign: Recorder) -> None:
    s = stack()
    hostile = f"{foreign.url}/{ORG}/"
    finished = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")

    # build.complete: the configured organization (spelled otherwise: case), everything else hostile
    pushed = s.build(300, "cart", finishTime=finished)
    assert s.post_event(poison(build_complete(pushed, s.org_url.upper()), hostile)).json()["status"] == "queued"
    # run-state-changed needs a look-up: it must go to the configured organization
    looked_up = s.build(301, "shop", finishTime=finished)
    assert s.post_event(poison(run_state_changed(s, looked_up), hostile)).json()["status"] == "queued"
    # an organization that is not configured: ignored, no job, no record
    stranger = s.build(302, "search", finishTime=finished)
    answer = s.post_event(build_complete(stranger, hostile))
    assert answer.status_code == 202
    assert answer.json() == {"status": "ignored", "reason": "unknown organization", "deployments": []}

    for build_id, env in ((300, "dev"), (301, "dev")):
        assert s.wait_finished(build_id, env)["verdict"] == "succeeded"
    assert s.ado.requests_to("GET", "/_apis/build/builds/301")  # the look-up
    assert s.tag_patches(300, "deployed-dev") and s.tag_patches(301, "deployed-dev")

    # the reconciler: builds of the configured organization whose links point elsewhere; 300 and 301 were
    # delivered already (one identity per build: not deployed again), 303 was not
    s.build(303, "search", finishTime=finished, url=f"{hostile}p/_apis/build/Builds/303",
            _links={"web": {"href": f"{hostile}p/_build/results?buildId=303"}})
    assert reconcile(s) == 2  # 302 (the unknown organization's event was ignored, the build is ours) and 303
    assert s.wait_finished(303, "dev")["verdict"] == "succeeded"
    assert s.tag_patches(303, "deployed-dev")
    for build_id in (300, 301):  # one deployment per build and environment
        environments = [r["environment"] for r in s.records(build_id)]
        assert len(environments) == len(set(environments)), environments
    assert s.ado.requests_to("GET", "/_apis/build/builds")

    # subscribe: only the configured organization's hook API
    out = io.StringIO()
    settings = s.settings.model_copy(update={"public_url": "https://bridge.contoso.example"})
    assert asyncio.run(subscribe(settings, s.routing, public_url=None, out=out)) == 0, out.getvalue()
    assert s.ado.requests_to("POST", "/_apis/hooks/subscriptions")

    assert foreign.requests == []
