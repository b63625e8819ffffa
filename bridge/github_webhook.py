"""`POST /webhooks/github`: verify the signature → read the event → queue a pull-request check at once.

Optional: deployments waiting for a merge are polled anyway (`github.pr_poll_seconds`); this endpoint only makes the
reaction immediate. It answers

    200  ping
    202  queued (a `pull_request` `closed` event of a `gitops-bridge/` branch we know) | ignored (anything else)
    400  not JSON, or JSON nested too deep (the reason names the problem)
    401  missing or wrong `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with `github.webhook_secret`,
         compared in constant time)
    404  no `github.webhook_secret` configured (unsigned deliveries are never accepted)
    408  the body did not arrive within `webhook.body_timeout_seconds`
    413  body over `webhook.max_body_bytes`
    503  Redis unavailable

The deployment is found through the Redis mapping `Keys.pull_request(owner/name, number)` that the pull-request job
writes, or else the `<!-- gitops-bridge:deployment=... -->` marker in the pull request's body. The check job itself
reads the pull request from GitHub, so a forged-but-signed payload cannot decide a verdict.
Needs `request.app.state.settings` and `request.app.state.redis` (an ArqRedis), as `bridge.app.create_app` provides.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import metrics
from bridge.body import BodyError, BodyLimits, parse_json, read_body
from bridge.queue import CHECK_PULL_REQUEST, Keys, unique_job_id
from bridge.settings import Settings

log = logging.getLogger("bridge.github_webhook")

BRANCH_PREFIX = "gitops-bridge/"
REDIS_TIMEOUT_S = 5.0
_MARKER = re.compile(r"<!-- gitops-bridge:deployment=([A-Za-z0-9._-]+) -->")


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256(secret, body), in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def _answer(status: int, outcome: str, reason: str | None = None, *, headers: dict[str, str] | None = None,
            **extra: Any) -> Response:
    metrics.GITHUB_WEBHOOKS.labels(outcome=outcome).inc()
    body: dict[str, Any] = {"status": outcome}
    if reason:
        body["reason"] = reason
    body.update(extra)
    headers = {"Retry-After": "10"} if status == 503 else headers
    return JSONResponse(body, status_code=status, headers=headers)


def closed_pull(event: str | None, payload: Any) -> tuple[str, int, str] | None:
    """(owner/name, number, body) of a closed pull request from a bridge branch; None for anything else."""
    if event != "pull_request" or not isinstance(payload, dict) or payload.get("action") != "closed":
        return None
    pr = payload.get("pull_request")
    repo = payload.get("repository")
    if not isinstance(pr, dict) or not isinstance(repo, dict):
        return None
    head = pr.get("head")
    ref = str(head.get("ref") or "") if isinstance(head, dict) else ""
    number = pr.get("number", payload.get("number"))
    full_name = repo.get("full_name")
    if not ref.startswith(BRANCH_PREFIX) or not isinstance(number, int) or not isinstance(full_name, str):
        return None
    return full_name, number, str(pr.get("body") or "")


async def github_webhook(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    secret = settings.github.webhook_secret
    if secret is None or not secret.get_secret_value():
        return _answer(404, "disabled", "the GitHub webhook is not configured")
    limits = BodyLimits.from_settings(settings)
    try:
        body = await read_body(request, limits)
    except BodyError as exc:
        return _answer(exc.status, exc.outcome, exc.reason, headers=exc.headers)
    if not signature_valid(secret.get_secret_value(), body, request.headers.get("x-hub-signature-256")):
        return _answer(401, "unauthorized", "invalid signature")
    event = request.headers.get("x-github-event")
    if event == "ping":
        return _answer(200, "pong")
    try:
        payload = parse_json(body, limits.max_depth)
    except BodyError as exc:
        return _answer(exc.status, exc.outcome, exc.reason)
    found = closed_pull(event, payload)
    if found is None:
        return _answer(202, "ignored", f"not a closed {BRANCH_PREFIX} pull request")
    repo, number, pr_body = found
    keys = Keys(prefix=settings.key_prefix)
    redis = request.app.state.redis
    if redis is None:
        return _answer(503, "unavailable", "queue unavailable, retry later")
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            raw = await redis.get(keys.pull_request(repo, number))
            dep_id = (raw.decode() if isinstance(raw, bytes) else raw) if raw else None
            if dep_id is None:
                marker = _MARKER.search(pr_body)
                dep_id = marker.group(1) if marker else None
            if dep_id is None or not await redis.exists(keys.deployment(dep_id)):
                return _answer(202, "ignored", f"{repo}#{number} is not a known deployment")
            await redis.enqueue_job(CHECK_PULL_REQUEST, dep_id, _job_id=unique_job_id("check-pr-hook"),
                                    _queue_name=settings.queue_name)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("github webhook: redis unavailable (%s)", type(exc).__name__)
        return _answer(503, "unavailable", "queue unavailable, retry later")
    log.info("github webhook: %s#%d closed, checking deployment %s", repo, number, dep_id)
    return _answer(202, "queued", deployment=dep_id)


route = Route("/webhooks/github", github_webhook, methods=["POST"])
routes = [route]
