"""`POST /webhooks/argocd`: an Argo CD notification (a push hint) → wake the watcher of that application now.

A hint is never a verdict: Argo CD notifications are duplicated, dropped under load, arrive out of order and are
recorded as sent after a failed send. The hint only queues an immediate read of the application by its watcher
(`watch_application(key, "hint")`, at most one per application per second, by job id); the watcher then judges
what Argo CD says, as on any poll. It answers

    202  queued (a watched application) | ignored (an application nobody waits on, or another project)
    400  not JSON, too deep, or no application name
    401  missing or wrong credentials: `Authorization: Bearer <token>`, `X-Gitops-Bridge-Token: <token>`, or Basic
         credentials whose password is the token (Argo CD's webhook service signs nothing)
    404  no `argocd.webhook_token` configured
    408  / 413  body too slow / too large (`bridge.body`)
    503  Redis unavailable

Expected body (the template in docs/operations.md):
`{"app": "<name>", "namespace": "<app namespace>", "project": "<project>", "revision": "<sync revision>"}`, plus
`"instance": "<name>"` when several Argo CD instances are configured (each instance's template names itself).
Needs `request.app.state.settings` and `request.app.state.redis` (an ArqRedis), as `bridge.app.create_app` provides.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import metrics
from bridge.auth import basic_credentials, bearer_token, matches_any
from bridge.body import BodyError, BodyLimits, read_json
from bridge.queue import WATCH_APPLICATION, Keys, tick_job_id
from bridge.settings import Settings

log = logging.getLogger("bridge.argocd_webhook")

REDIS_TIMEOUT_S = 5.0
HINT_INTERVAL_S = 1.0  # at most one hint-driven read per application per second
TOKEN_HEADER = "x-gitops-bridge-token"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def _answer(status: int, outcome: str, reason: str | None = None, **extra: Any) -> Response:
    metrics.ARGOCD_HINTS.labels(outcome=outcome if outcome in metrics.ARGOCD_HINT_OUTCOMES else "invalid").inc()
    body: dict[str, Any] = {"status": outcome, **({"reason": reason} if reason else {}), **extra}
    headers = {"Retry-After": "10"} if status == 503 else \
        {"WWW-Authenticate": 'Basic realm="gitops-bridge"'} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def authorized(token: str, headers: Any) -> bool:
    """The token as a bearer token, in `X-Gitops-Bridge-Token`, or as the password of Basic credentials."""
    accepted = (hashlib.sha256(token.encode()).digest(),)
    auth = headers.get("authorization")
    basic = basic_credentials(auth)
    presented = [bearer_token(auth), headers.get(TOKEN_HEADER, "").encode("latin-1", "replace"),
                 basic.partition(b":")[2] if basic is not None else None]
    ok = False
    for value in presented:
        if value:
            ok |= matches_any(value, accepted)  # constant time per candidate
    return ok


async def enqueue_hint(redis: Any, queue_name: str, key: str, not_before: float | None = None) -> bool:
    """Queue a hint read of `key` in this second (or the second of `not_before`), or else one at the start of the
    next second, so the last hint of a burst is never lost; False when both are already queued. The job ids make
    this at most one read per application per second."""
    real = time.time()
    start = max(real, not_before or real)
    for at in (start, (int(start // HINT_INTERVAL_S) + 1) * HINT_INTERVAL_S):
        job = await redis.enqueue_job(WATCH_APPLICATION, key, "hint", _queue_name=queue_name,
                                      _job_id=tick_job_id(WATCH_APPLICATION + "-hint", key, HINT_INTERVAL_S, now=at),
                                      _defer_by=max(at - real, 0.0))
        if job is not None:
            return True
    return False


def hinted_app(payload: Any) -> tuple[str, str | None, str | None] | None:
    """(name, namespace, project) from the notification body, or None when it names no application."""
    if not isinstance(payload, dict):
        return None
    name = payload.get("app")
    if not isinstance(name, str) or not _NAME.match(name):
        return None
    ns, project = payload.get("namespace"), payload.get("project")
    return name, ns if isinstance(ns, str) and ns else None, project if isinstance(project, str) and project else None


async def argocd_webhook(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    token = settings.argocd.webhook_token
    if token is None or not token.get_secret_value():
        return _answer(404, "disabled", "the Argo CD webhook is not configured")
    if not authorized(token.get_secret_value(), request.headers):
        return _answer(401, "unauthorized", "missing or wrong credentials")
    try:
        payload = await read_json(request, BodyLimits.from_settings(settings))
    except BodyError as exc:
        response = _answer(exc.status, exc.outcome, exc.reason)
        response.headers.update(exc.headers)
        return response
    found = hinted_app(payload)
    if found is None:
        return _answer(400, "invalid", "the body names no application ('app')")
    name, namespace, project = found
    redis = request.app.state.redis
    if redis is None:
        return _answer(503, "unavailable", "queue unavailable, retry later")
    keys = Keys(prefix=settings.key_prefix)
    # The watcher's key is `[<instance>|][<namespace>/]<app>` (see workers.verify.app_key): the namespace part only
    # when the routing file names one, the instance part only for an instance other than the default.
    instance = payload.get("instance") if isinstance(payload.get("instance"), str) else None
    tag = f"{instance}|" if instance and instance != settings.argocd.default_instance() else ""
    candidates = [f"{tag}{namespace}/{name}", f"{tag}{name}"] if namespace else [f"{tag}{name}"]
    woken: list[str] = []
    throttled: list[str] = []
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            for key in candidates:
                raw = await redis.hget(keys.watched_apps, key)
                if not raw:
                    continue
                coords = json.loads(raw)
                if project and coords.get("project") and coords["project"] != project:
                    continue
                (woken if await enqueue_hint(redis, settings.queue_name, key) else throttled).append(key)
    except (RedisError, OSError, TimeoutError, ValueError) as exc:
        log.warning("argocd webhook: redis unavailable (%s)", type(exc).__name__)
        return _answer(503, "unavailable", "queue unavailable, retry later")
    if throttled and not woken:
        return _answer(202, "throttled", f"{name}: a read is already queued this second")
    if not woken:
        return _answer(202, "ignored", f"no deployment is waiting on application {name}")
    log.info("argocd webhook: hint for %s (revision %s)", name, str(payload.get("revision") or "?")[:12])
    return _answer(202, "queued", app=name)


route = Route("/webhooks/argocd", argocd_webhook, methods=["POST"])
routes = [route]
