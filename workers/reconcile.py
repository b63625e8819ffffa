"""The reconciler: queue completed builds the webhook never delivered (a subscription on probation loses new events).

Every `reconcile_seconds` it lists, per configured organization (with a token) and routed project, the completed
builds that finished since a watermark (first run: now − `reconcile_lookback_seconds`; each query reaches back OVERLAP
more for clock skew and late indexing),
keeps those the routing file deploys, and queues them through `bridge.queue.enqueue_build`, the webhook's own
idempotent path (`Keys.seen`), so a build is processed once whichever path sees it first (the build key is the
organization's name, the project id and the build id, as for the webhook). Off without a configured organization
that has a token. It only ever calls the configured organizations' URLs.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.connections import ArqRedis
from arq.cron import CronJob, cron

from bridge import metrics, organizations
from bridge.errors import BridgeError
from bridge.organizations import Organization
from bridge.queue import RECONCILE_BUILDS, Keys, enqueue_build
from bridge.records import now_iso
from bridge.routing import Route, RoutingConfig, match_event
from bridge.settings import Settings
from workers.azure_devops import AzureDevOpsClient, build_event_from_api
from workers.context import Ctx, keys, routing, settings

log = logging.getLogger(__name__)

OVERLAP = timedelta(minutes=5)
PAGE = 100
MAX_PAGES = 20


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(text: str | bytes | None) -> datetime | None:
    if not text:
        return None
    if isinstance(text, bytes):
        text = text.decode()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def routed_projects(cfg: RoutingConfig, organization: str | None = None) -> dict[str, tuple[str, list[int] | None]]:
    """project (lower case) → (project as written, definition ids to filter on, or None when a route names a
    definition by name and every build of the project must be listed); with `organization`, only the routes that
    can take its builds."""
    groups: dict[str, tuple[str, list[Route]]] = {}
    for route in cfg.routes:
        named = route.match.organization
        if organization is not None and named is not None and named.lower() != organization:
            continue
        groups.setdefault(route.match.project.lower(), (route.match.project, []))[1].append(route)
    out: dict[str, tuple[str, list[int] | None]] = {}
    for key, (project, routes) in groups.items():
        names = [r.match.definition for r in routes]
        out[key] = (project, sorted({int(n) for n in names}) if all(n.isdigit() for n in names) else None)
    return out


async def reconcile_builds(ctx: Ctx) -> int:
    """arq cron job; returns how many builds it queued."""
    s = settings(ctx)
    ado: AzureDevOpsClient | None = ctx.get("ado")
    if ado is None or not ado.enabled:
        log.debug("reconciler off: no Azure DevOps organization with a token")
        return 0
    redis: ArqRedis = ctx["redis"]
    k: Keys = keys(ctx)
    cfg = routing(ctx)
    started = datetime.now(UTC)
    since = _parse(await redis.get(k.reconcile_watermark)) or started - timedelta(
        seconds=s.azure_devops.reconcile_lookback_seconds
    )
    watermark = started
    queued = 0
    for org in ado.organizations:
        for project, definitions in routed_projects(cfg, org.name).values():
            try:
                builds = await ado.list_builds(org, project, definitions=definitions, min_time=_iso(since - OVERLAP),
                                               top=PAGE, max_pages=MAX_PAGES)
            except BridgeError as exc:
                log.warning("reconciler: cannot list builds of project %s in %s: %s", project, org.name, exc)
                watermark = min(watermark, since)  # try this window again next time
                continue
            if len(builds) >= PAGE * MAX_PAGES:  # truncated: continue after the last build we saw
                last = _parse(builds[-1].get("finishTime"))
                if last is not None:
                    watermark = min(watermark, last)
            for build in builds:
                queued += await _queue_if_routed(ctx, s, cfg, org, build)
    await redis.set(k.reconcile_watermark, _iso(max(watermark, since)))
    if queued:
        log.info("reconciler: queued %d build(s) the webhook did not deliver", queued)
    return queued


async def _queue_if_routed(
    ctx: Ctx, s: Settings, cfg: RoutingConfig, org: Organization, build: dict[str, Any]
) -> int:
    try:
        event = build_event_from_api(org, build)
    except BridgeError:
        return 0
    if build.get("status") not in (None, "completed"):
        return 0
    targets = match_event(cfg, event)
    if not targets:
        return 0
    payload = dataclasses.replace(event, extra={**event.extra, "received": now_iso()}).to_json()  # as the webhook
    outcome = await enqueue_build(ctx["redis"], keys(ctx), s.queue_name, payload, event.build_key,
                                  s.retention_days * 86400)
    if outcome.status != "queued":
        return 0
    metrics.RECONCILED_BUILDS.inc()
    log.info("reconciler: queued build %s (%s)", event.build_id, event.build_key)
    return 1


def reconcile_cron(s: Settings) -> list[CronJob]:
    """The cron entry for WorkerSettings.cron_jobs: every `reconcile_seconds` (rounded to whole minutes), or none
    when the reconciler is off."""
    orgs = organizations.configured(s.azure_devops)
    if not any(o.has_token for o in orgs) or s.azure_devops.reconcile_seconds <= 0:
        return []
    step = max(1, min(60, round(s.azure_devops.reconcile_seconds / 60)))
    return [cron(reconcile_builds, name=RECONCILE_BUILDS, minute=set(range(0, 60, step)), second=0,
                 run_at_startup=True, unique=True, timeout=max(60.0, s.azure_devops.reconcile_seconds))]
