"""The app factory: configuration checks, health, readiness, metrics, the error table, extra routes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import shared_redis_url
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge.app import create_app
from bridge.errors import ConfigError
from bridge.routing import parse_routing
from bridge.settings import Settings

DB = 1
ROUTING = {
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [{"name": "api", "match": {"project": "p", "definition": "d"},
                "environments": [{"name": "dev", "repository": "gitops", "file": "dev.yaml"}]}],
}
YAML = """\
repositories:
  gitops: {url: "https://git.example.invalid/gitops.git"}
routes:
  - name: api
    match: {project: p, definition: d}
    environments: [{name: dev, repository: gitops, file: dev.yaml}]
"""


def settings(redis_url: str, **kwargs: Any) -> Settings:
    kwargs.setdefault("webhook", {"tokens": ["tok-app-test-1"]})
    return Settings(redis_url=redis_url, queue_name="gitops-bridge:queue", **kwargs)


@pytest.fixture
def db_url(redis_url: Callable[[int], str]) -> str:
    return redis_url(DB)


def test_health_ready_metrics(db_url: str, serve: Callable[[Any], Any]) -> None:
    server = serve(create_app(settings(db_url), parse_routing(ROUTING)))
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready"}
        c.post("/webhooks/azure-devops", json={"eventType": "git.push"},
               headers={"X-Bridge-Token": "tok-app-test-1"})
        c.post("/webhooks/azure-devops", json={}, headers={"X-Bridge-Token": "wrong"})
        import redis

        with redis.Redis.from_url(db_url) as r:
            r.zadd("gitops-bridge:queue", {"a": 1, "b": 2, "c": 3})
        response = c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'bridge_webhook_requests_total{event_type="other",outcome="ignored"}' in text
    assert 'bridge_webhook_requests_total{event_type="unknown",outcome="unauthorized"}' in text
    assert "bridge_webhook_request_duration_seconds_bucket" in text
    assert "bridge_enqueue_failures_total" in text
    assert "bridge_queue_depth 3.0" in text


def test_routing_loaded_from_the_settings_file(db_url: str, tmp_path: Path, serve: Callable[[Any], Any]) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(YAML)
    app = create_app(settings(db_url, config=config))
    assert [r.name for r in app.state.routing.routes] == ["api"]
    server = serve(app)
    assert httpx.get(server.url + "/readyz").status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"webhook": {}}, "no credential configured"),
        ({"webhook": {"tokens": ["x-token-1"]}, "redis_url": None}, "redis_url: not set"),
        ({"webhook": {"tokens": ["x-token-1"]}, "config": Path("/nonexistent/bridge.yaml")}, "cannot read"),
    ],
)
def test_bad_configuration_refuses_to_start(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("redis_url", shared_redis_url(1))
    routing = None if "config" in kwargs else parse_routing(ROUTING)
    with pytest.raises(ConfigError, match=message):
        create_app(Settings(**kwargs), routing)


def test_invalid_routing_file_names_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(YAML.replace("dev.yaml", "/etc/dev.yaml"))
    with pytest.raises(ConfigError, match=r"bridge.yaml: routes\[0\] \(api\): environments\[0\].file"):
        create_app(settings(shared_redis_url(1), config=config))


def test_extra_routes_share_the_state_and_the_error_table(db_url: str, serve: Callable[[Any], Any]) -> None:
    async def depth(request: Request) -> JSONResponse:
        redis = request.app.state.redis
        return JSONResponse({"depth": await redis.zcard(request.app.state.settings.queue_name)})

    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("secret internals tok-app-test-1")

    extra = [Route("/api/depth", depth), Route("/api/boom", boom)]
    server = serve(create_app(settings(db_url), parse_routing(ROUTING), extra_routes=extra))
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/api/depth").json() == {"depth": 0}
        failed = c.get("/api/boom")
        assert failed.status_code == 500
        assert failed.json() == {"status": "error", "reason": "internal error"}
        missing = c.get("/nope")
        assert missing.status_code == 404 and missing.json()["status"] == "rejected"
        wrong_method = c.get("/webhooks/azure-devops")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"


def test_redis_errors_from_any_route_are_503(private_redis: Any, serve: Callable[[Any], Any]) -> None:
    async def depth(request: Request) -> JSONResponse:
        return JSONResponse({"depth": await request.app.state.redis.zcard("q")})

    server = serve(create_app(settings(private_redis.url), parse_routing(ROUTING),
                              extra_routes=[Route("/api/depth", depth)]))
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/api/depth").status_code == 200
        private_redis.stop()
        down = c.get("/api/depth")
        assert down.status_code == 503 and down.headers["retry-after"] == "10"
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "redis unreachable"
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200  # a scrape does not fail because Redis did
        private_redis.start()
        assert c.get("/readyz").status_code == 200
        assert c.get("/api/depth").status_code == 200
