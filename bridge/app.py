"""The web process: `create_app(settings)` builds the Starlette app (routes, lifespan, error table, health, metrics).

Shared resources live on `app.state` (made by the lifespan, read by handlers as `request.app.state.<name>`):

    settings  bridge.settings.Settings
    routing   bridge.routing.RoutingConfig
    intake    bridge.webhook.Intake
    redis     arq.connections.ArqRedis (the queue pool; only while the lifespan runs)
    intake_redis  the pool the webhook's enqueues use (no per-reply timeout: the enqueuer bounds each round trip)

Other endpoints join through `extra_routes` (e.g. `create_app(settings, extra_routes=bridge.api.routes)`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from arq.connections import ArqRedis
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge import api, argocd_webhook, config_check, gate, github_webhook, metrics, organizations, rollbacks, webhook
from bridge.errors import ConfigError
from bridge.queue import open_redis
from bridge.routing import RoutingConfig, load_routing
from bridge.settings import Settings, load_settings

log = logging.getLogger("bridge.app")

PROBE_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    if getattr(state, "routing", None) is None:
        return JSONResponse({"status": "not ready", "reason": "configuration not loaded"}, status_code=503)
    redis: ArqRedis | None = getattr(state, "redis", None)
    if redis is None:
        return JSONResponse({"status": "not ready", "reason": "queue not connected"}, status_code=503)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await redis.ping()
    except (RedisError, OSError, TimeoutError):
        return JSONResponse({"status": "not ready", "reason": "redis unreachable"}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    redis: ArqRedis | None = getattr(request.app.state, "redis", None)
    body = await metrics.render(redis, settings.queue_name, settings.key_prefix, timeout=PROBE_TIMEOUT_S)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# -- the error table -------------------------------------------------------------------------------------------------
async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"status": "rejected", "reason": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


async def _redis_error(request: Request, exc: Exception) -> Response:
    log.warning("redis unavailable: %s", type(exc).__name__)
    return JSONResponse({"status": "unavailable", "reason": "queue unavailable, retry later"}, status_code=503,
                        headers={"Retry-After": webhook.RETRY_AFTER_S})


EXCEPTION_HANDLERS = {
    HTTPException: _http_error,
    RedisError: _redis_error,
    ConnectionError: _redis_error,
}


class InternalErrors:
    """Anything else: log it, answer a JSON 500 that says nothing more. (Starlette's own 500 handler re-raises
    to the server, which then drops the connection.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = JSONResponse({"status": "error", "reason": "internal error"}, status_code=500)
            await response(scope, receive, send)

CORE_ROUTES: list[BaseRoute] = [
    Route("/webhooks/azure-devops", webhook.azure_devops, methods=["POST"]),
    *gate.routes,
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    *github_webhook.routes,
    *argocd_webhook.routes,
    *api.routes,
    *rollbacks.routes,
]


def create_app(
    settings: Settings, routing: RoutingConfig | None = None, *, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The web app. Raises ConfigError (before serving anything) for a bad routing file, no Redis URL, webhook
    credentials missing without `webhook.allow_unauthenticated`, or a start-up problem of `bridge.config_check`."""
    if routing is None:
        routing = load_routing(settings.config)
    if not settings.has_redis:
        raise ConfigError("redis_url: not set (BRIDGE_REDIS_URL, or BRIDGE_REDIS_SENTINELS)")
    config_check.check_startup(settings, routing)
    for warning in organizations.warnings(settings.azure_devops):
        log.warning(warning)
    intake = webhook.Intake(settings, routing)
    metrics.init(routing, "web")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = open_redis(settings)  # connects on first use: a Redis outage at start gives 503s, not a crash
        intake_pool = open_redis(settings, socket_timeout=None)
        app.state.redis, app.state.intake_redis = pool, intake_pool
        try:
            yield
        finally:
            app.state.redis = app.state.intake_redis = None
            await pool.aclose()
            await intake_pool.aclose()

    app = Starlette(routes=[*CORE_ROUTES, *extra_routes], exception_handlers=EXCEPTION_HANDLERS,
                    middleware=[Middleware(InternalErrors)], lifespan=lifespan)
    app.state.settings = settings
    app.state.routing = routing
    app.state.intake = intake
    app.state.redis = app.state.intake_redis = None
    return app


def app_from_environment() -> Starlette:
    """`uvicorn --factory bridge.app:app_from_environment`: settings from the environment, logging configured."""
    from bridge.logs import configure_logging

    settings = load_settings()
    configure_logging(settings)
    app = create_app(settings)
    webhook.tune_collector()
    return app
