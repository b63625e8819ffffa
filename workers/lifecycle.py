"""The two jobs that keep every deployment moving through `bridge.lifecycle`'s states, whatever died on the way.

    advance_deployment(dep_id)   hand the deployment to the step its state needs (idempotent: each step does only
                                 what is missing)
    sweep_deployments()          cron: find deployments whose next step is missing and hand them back to it;
                                 counts each repair in bridge_sweeper_repairs_total{state}

What "missing" means, per state (checked only for deployments that have been in the state longer than its grace):

    queued          no job moved it on                     → advance_deployment
    writing         push: not in its repository's pending   → pending again, and a flush when nobody holds the
                    set, or pending with no writer            repository's lock
                    pull request: no open_pull_request job  → open_pull_request
    awaiting-merge  no pull-request check scheduled         → check_pull_request
    verifying       no waiter on its application, or the    → verify_deployment / the application's next tick
                    application's watcher stopped ticking
    reporting       no final report queued or running       → report_deployment(final)

The sweep reads at most `SWEEP_BATCH` deployments per state per run, oldest first, and resumes where it stopped on
the next run, so its cost is bounded however many deployments wait.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix

from bridge import metrics
from bridge.lifecycle import ACTIVE_STATES, SWEEP_GRACE_SECONDS
from bridge.queue import (
    ADVANCE_DEPLOYMENT,
    FLUSH_REPOSITORY,
    OPEN_PULL_REQUEST,
    VERIFY_DEPLOYMENT,
    advance_job_id,
    open_pr_job_id,
    tick_job_id,
    verify_job_id,
)
from bridge.records import DeploymentRecord, decode_record
from workers.context import Ctx, enqueue, keys, routing, settings, store
from workers.outcome import FINAL, finish_deployment, report

log = logging.getLogger("gitops_bridge.lifecycle")

SWEEP_BATCH = 200


async def advance_deployment(ctx: Ctx, deployment_id: str) -> str:
    """arq job: give the deployment to the step that owns its state. Returns the state it found."""
    record = await store(ctx).get(deployment_id)
    if record is None:
        return "gone"
    if record.state == "queued":
        await _start(ctx, record)
    elif record.state == "writing":
        await _resume_writing(ctx, record)
    elif record.state == "awaiting-merge":
        from workers.pullrequest import schedule_check

        await schedule_check(ctx, record.id)
    elif record.state == "verifying":
        await enqueue(ctx, VERIFY_DEPLOYMENT, record.id, job_id=verify_job_id(record.id))
    elif record.state == "reporting":
        await report(ctx, record.id, FINAL)
    return record.state


async def _start(ctx: Ctx, record: DeploymentRecord) -> None:
    from workers.deploy import start_and_write

    try:
        route = routing(ctx).route(record.route)
        env = route.environment(record.environment)
    except KeyError:
        await finish_deployment(ctx, record.id, "failed", f"{record.route}/{record.environment} is no longer routed")
        return
    await start_and_write(ctx, record, route, env)


async def _resume_writing(ctx: Ctx, record: DeploymentRecord) -> bool:
    """Make sure a `writing` deployment has its writer: True when something was missing."""
    if record.promotion == "pull-request":
        return await enqueue(ctx, OPEN_PULL_REQUEST, record.id, job_id=open_pr_job_id(record.id))
    redis = ctx["redis"]
    pending = keys(ctx).pending(record.repository)
    missing = await redis.zadd(pending, {record.id: time.time()}, nx=True) == 1
    if missing or not await redis.exists(keys(ctx).lock(record.repository)):
        interval = max(1.0, settings(ctx).sweep_seconds)
        await enqueue(ctx, FLUSH_REPOSITORY, record.repository,
                      job_id=tick_job_id("flush-sweep", record.repository, interval))
    return bool(missing)


# -- the sweep ------------------------------------------------------------------------------------------------------

async def sweep_deployments(ctx: Ctx) -> dict[str, int]:
    """arq cron job: one bounded pass over the active states. Returns the repairs per state (for logs and tests)."""
    repaired: dict[str, int] = {}
    now = time.time()
    for state in ACTIVE_STATES:
        ids = await _next_batch(ctx, state, now - SWEEP_GRACE_SECONDS[state])
        if not ids:
            continue
        raws = await ctx["redis"].mget([keys(ctx).deployment(i) for i in ids])
        flushed: set[str] = set()
        apps: dict[str, bool] = {}
        for dep_id, raw in zip(ids, raws, strict=True):
            if raw is None:  # expired with the retention period: nothing left to move
                await store(ctx).drop_from_index(state, dep_id)
                continue
            record = decode_record(raw)
            if record.state != state:
                continue
            if await _repair(ctx, record, flushed, apps):
                repaired[state] = repaired.get(state, 0) + 1
                metrics.SWEEP_REPAIRS.labels(state=state).inc()
    if repaired:
        log.warning("sweeper handed %s deployment(s) back to their next step",
                    ", ".join(f"{n} {state}" for state, n in repaired.items()))
    return repaired


async def _next_batch(ctx: Ctx, state: str, entered_before: float) -> list[str]:
    """The next `SWEEP_BATCH` deployments in `state`, continuing after the last one the previous sweep saw."""
    redis = ctx["redis"]
    cursor_key = keys(ctx).sweep_cursor(state)
    cursor = float(await redis.get(cursor_key) or 0)
    found = await redis.zrangebyscore(keys(ctx).state_index(state), f"({cursor}" if cursor else 0, entered_before,
                                      start=0, num=SWEEP_BATCH, withscores=True)
    if len(found) < SWEEP_BATCH:
        await redis.delete(cursor_key)  # reached the end: the next sweep starts from the oldest again
    else:
        await redis.set(cursor_key, found[-1][1], ex=3600)
    return [m.decode() if isinstance(m, bytes) else str(m) for m, _ in found]


async def _repair(ctx: Ctx, record: DeploymentRecord, flushed: set[str], apps: dict[str, bool]) -> bool:
    if record.state == "queued":
        return await enqueue(ctx, ADVANCE_DEPLOYMENT, record.id, job_id=advance_job_id(record.id))
    if record.state == "writing":
        if record.promotion != "pull-request" and record.repository in flushed:
            return bool(await ctx["redis"].zadd(keys(ctx).pending(record.repository), {record.id: time.time()},
                                                nx=True))
        flushed.add(record.repository)
        return await _resume_writing(ctx, record)
    if record.state == "awaiting-merge":
        return await _repair_pr_check(ctx, record)
    if record.state == "verifying":
        return await _repair_verification(ctx, record, apps)
    if record.state == "reporting":
        return await report_missing(ctx, record.id)
    return False


async def report_missing(ctx: Ctx, deployment_id: str) -> bool:
    from bridge.queue import REPORT_DEPLOYMENT, report_job_id

    return await enqueue(ctx, REPORT_DEPLOYMENT, deployment_id, FINAL, job_id=report_job_id(deployment_id, FINAL))


async def _job_exists(ctx: Ctx, job_id: str) -> bool:
    return bool(await ctx["redis"].exists(job_key_prefix + job_id, in_progress_key_prefix + job_id))


async def _repair_pr_check(ctx: Ctx, record: DeploymentRecord) -> bool:
    """The check chain schedules one job per poll interval (`tick_job_id`): one of the two ids around now exists."""
    from workers.pullrequest import schedule_check

    interval = max(1.0, settings(ctx).github.pr_poll_seconds)
    now = time.time()
    for at in (now - interval, now):
        if await _job_exists(ctx, tick_job_id("check-pr", record.id, interval, now=at)):
            return False
    await schedule_check(ctx, record.id)
    return True


async def _repair_verification(ctx: Ctx, record: DeploymentRecord, apps: dict[str, bool]) -> bool:
    from workers.verify import app_key

    try:
        env = routing(ctx).route(record.route).environment(record.environment)
    except KeyError:
        env = None
    if env is None or env.argocd is None:
        return await enqueue(ctx, VERIFY_DEPLOYMENT, record.id, job_id=verify_job_id(record.id))
    key = app_key(env.argocd)
    redis = ctx["redis"]
    if not await redis.hexists(keys(ctx).waiting(key), record.id):
        return await enqueue(ctx, VERIFY_DEPLOYMENT, record.id, job_id=verify_job_id(record.id))
    if key not in apps:
        apps[key] = await _restart_watcher_if_stopped(ctx, key)
        return apps[key]
    return False


async def _restart_watcher_if_stopped(ctx: Ctx, key: str) -> bool:
    """An application whose watcher has not polled for several intervals (and is not backing off) gets a tick."""
    from workers.verify import schedule_tick

    redis = ctx["redis"]
    raw = await redis.hget(keys(ctx).watched_apps, key)
    state: dict[str, Any] = json.loads(raw) if raw else {}
    now = time.time()
    poll = max(settings(ctx).argocd.poll_seconds, 0.01)
    if state.get("backoff_until", 0) > now:
        return False
    if now - float(state.get("polled_at", 0)) < max(3 * poll, SWEEP_GRACE_SECONDS["verifying"]):
        return False
    if await redis.exists(keys(ctx).lock(f"argocd-watch:{key}")):
        return False
    return await schedule_tick(ctx, key)
