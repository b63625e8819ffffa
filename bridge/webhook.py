"""`POST /webhooks/azure-devops`: authenticate → read (bounded) → parse → route → enqueue → answer.

Status policy (Azure DevOps puts a subscription that gets any 4xx/5xx other than 408/502/503/504 on probation, and
drops new events while it is there):

    202  queued | duplicate | ignored (valid but unwanted: other event types, legacy shape, test button, no route,
         an organization that is not configured)
    400  not JSON, JSON nested too deep, or JSON that is not a service-hook envelope (the reason names the problem)
    401  no accepted credential (the body names the expected scheme, never which part was wrong)
    408  the body did not arrive within webhook.body_timeout_seconds (Azure DevOps retries 408)
    413  body over webhook.max_body_bytes (2 MiB, Azure DevOps' own limit), refused without reading the rest
    415  not JSON content
    503  Redis unavailable, with Retry-After (Azure DevOps retries 503 for about three minutes)

A 2xx `queued`/`duplicate` is only sent once the job is in Redis. No git, no outbound HTTP here: the event's
organization is matched against the configured ones without any network call (`bridge.organizations`).
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from bridge import metrics, organizations
from bridge.auth import WebhookAuth
from bridge.body import BodyError, BodyLimits, read_json
from bridge.clock import now_iso
from bridge.events import BuildEvent, Ignored, InvalidEvent, parse_event
from bridge.logs import PreparedLine, SecretFilter
from bridge.queue import BuildEnqueuer, Keys, deployment_id
from bridge.routing import RoutingConfig, match_event
from bridge.settings import Settings

log = logging.getLogger("bridge.webhook")

REDIS_TIMEOUT_S = 5.0  # bound on the enqueue; a hung Redis answers 503 like a stopped one
RETRY_AFTER_S = "10"
MAX_REASON = 300  # reasons can quote the body (an event type); keep answers and log lines short


@dataclass
class Answer:
    status: int
    outcome: str  # one of metrics.WEBHOOK_OUTCOMES
    reason: str | None = None
    event_type: str = "unknown"  # one of metrics.EVENT_TYPES
    deployments: list[dict[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    event: BuildEvent | None = None
    event_id: str | None = None


class Intake:
    """What the handler needs, prepared once per app (the hot path builds no models)."""

    def __init__(self, settings: Settings, routing: RoutingConfig) -> None:
        self.settings = settings
        self.routing = routing
        self.auth = WebhookAuth(settings.webhook)
        self.keys = Keys(prefix=settings.key_prefix)
        self.queue_name = settings.queue_name
        self.limits = BodyLimits.from_settings(settings)
        self.organizations = organizations.configured(settings.azure_devops)
        self.retention_s = max(settings.retention_days * 86400, 3600.0)
        self.scrubber = SecretFilter(settings.secret_values())  # reasons may quote the body
        self.line = PreparedLine(log, self.scrubber)  # one per webhook
        self._enqueuer: BuildEnqueuer | None = None

    def enqueuer(self, redis: ArqRedis) -> BuildEnqueuer:
        """The batching enqueuer of the app's current intake pool (a new pool, e.g. after a restart of the lifespan,
        gets a new one)."""
        if self._enqueuer is None or self._enqueuer.redis is not redis:
            self._enqueuer = BuildEnqueuer(redis, self.keys, self.queue_name, self.retention_s,
                                           min_replicas=self.settings.redis_min_replicas,
                                           replica_wait_ms=self.settings.redis_replica_wait_ms,
                                           timeout_s=REDIS_TIMEOUT_S)
        return self._enqueuer


GC_GEN0_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)
_collector_tuned = False


def tune_collector() -> None:
    """Once per web process, when start-up is over and before it serves (not in `create_app`, which tests call many
    times): what start-up built (settings, routing, modules) stays for the process, so the collector stops walking
    it, and the collector runs again if `gitops-bridge` turned it off for start-up; young collections run less
    often, since each webhook allocates hundreds of short-lived containers (the parsed body) that reference counting
    frees anyway."""
    global _collector_tuned
    if _collector_tuned:
        return
    _collector_tuned = True
    gc.freeze()  # no full collection first: it cost ~100 ms of start-up and start-up leaves almost no garbage
    gc.enable()
    threshold, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0_THRESHOLD, threshold), gen1, gen2)


def _json_media(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _event_type(body: Any) -> str:
    value = body.get("eventType") if isinstance(body, dict) else None
    return value if value in metrics.EVENT_TYPES[:2] else ("other" if isinstance(value, str) and value else "unknown")


async def handle(intake: Intake, request: Request) -> Answer:
    if not intake.auth.check(request.headers):
        headers, challenge = intake.auth.challenge
        return Answer(401, "unauthorized", challenge, headers=headers)
    if not _json_media(request.headers.get("content-type")):
        return Answer(415, "unsupported_media", "expected Content-Type: application/json")
    try:
        body = await read_json(request, intake.limits)
    except BodyError as exc:
        outcome = exc.outcome if exc.outcome in metrics.WEBHOOK_OUTCOMES else "invalid"
        return Answer(exc.status, outcome, exc.reason, headers=list(exc.headers.items()))
    event_type = _event_type(body)
    event_id = body.get("id") if isinstance(body, dict) and isinstance(body.get("id"), str) else None
    try:
        parsed = parse_event(body)
    except InvalidEvent as exc:
        return Answer(400, "invalid", str(exc), event_type, event_id=event_id)
    if isinstance(parsed, Ignored):
        return Answer(202, "ignored", parsed.reason, event_type, event_id=event_id)
    event = organizations.assign(intake.organizations, parsed)
    if event is None:
        return Answer(202, "ignored", "unknown organization", event_type, event=parsed, event_id=event_id)
    targets = match_event(intake.routing, event)
    if not targets:
        return Answer(202, "ignored", "no route", event_type, event=event, event_id=event_id)
    build_key = event.build_key
    deployments = [
        {"id": deployment_id(build_key, t.route.name, t.environment.name), "route": t.route.name,
         "environment": t.environment.name}
        for t in targets
    ]
    payload = {"event": event.to_json(), "received": now_iso()}
    try:
        done = await intake.enqueuer(request.app.state.intake_redis).enqueue(payload, build_key)
    except (RedisError, OSError, TimeoutError) as exc:
        metrics.ENQUEUE_FAILURES.inc()
        log.warning("enqueue failed: %s", type(exc).__name__)
        return Answer(503, "unavailable", "queue unavailable, retry later", event_type,
                      headers=[("retry-after", RETRY_AFTER_S)], event=event, event_id=event_id)
    reason = None if done.status == "queued" else "build already received"
    return Answer(202, done.status, reason, event_type, deployments, event=event, event_id=event_id)


async def azure_devops(request: Request) -> Response:
    started = time.perf_counter()
    intake: Intake = request.app.state.intake
    answer = await handle(intake, request)
    if answer.status == 202:
        content: dict[str, Any] = {"status": answer.outcome, "reason": answer.reason, "deployments": answer.deployments}
    elif answer.status == 503:
        content = {"status": "unavailable", "reason": answer.reason}
    else:
        content = {"status": "rejected", "reason": answer.reason}
    if answer.reason is not None:
        reason = answer.reason if len(answer.reason) <= MAX_REASON else answer.reason[:MAX_REASON] + "..."
        answer.reason = content["reason"] = intake.scrubber.scrub(reason)
    response = Response(orjson.dumps(content), status_code=answer.status, media_type="application/json")
    for name, value in answer.headers:
        response.headers.append(name, value)
    metrics.count_webhook(answer.event_type, answer.outcome, time.perf_counter() - started)
    event = answer.event
    intake.line.info("azure-devops webhook " + answer.outcome, {
        "outcome": answer.outcome,
        "status": answer.status,
        "event_type": answer.event_type,
        "event_id": answer.event_id,
        "build_id": event.build_id if event else None,
        "build_key": event.build_key if event else None,
        # configured name, or (unknown organization) the normalised URL the payload claims
        "organization": (event.organization or organizations.url_key(event.base_url)) if event else None,
        "reason": answer.reason,
    })
    return response
