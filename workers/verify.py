"""Follow each deployment to a verdict in Argo CD without pinning a worker slot, and with bounded Argo CD load.

    verify_deployment(dep_id)   register the deployment as a waiter on its application, ensure a watcher tick
    watch_application(app_key)  one Argo CD read for the app (a refresh when a new waiter arrived or the comparison
                                lags), judge every waiter with `workers.verdict.judge`, finish the decided ones,
                                trigger a sync for manual-sync apps, then defer itself to the next poll interval

Everything lives in Redis, so a restarted worker picks up where the last one stopped (`resume_watches`):

    Keys.waiting(app_key)   hash dep_id → waiter JSON (target SHA, push time, deadline, ancestry cache, last snapshot)
    Keys.watched_apps       hash app_key → app JSON (coordinates, polled_at, refreshed_at, failures, backoff_until)
    Keys.lock("argocd-watch:" + app_key)  short lease so two watcher jobs never poll the same app at once

Load: one tick job per app and poll interval (`tick_job_id`), a lease, and a `polled_at` gate: at most one status
request per application per interval, however many deployments wait on it. 429/5xx back off exponentially (or by
`Retry-After`); deadlines still apply while Argo CD is unreachable.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from bridge.errors import PermanentError, UpstreamUnavailable
from bridge.queue import WATCH_APPLICATION, tick_job_id
from bridge.records import DeploymentRecord
from bridge.routing import ArgoApp, Environment
from workers.argocd import ArgoCDClient, SyncBusy, SyncStarted
from workers.context import Ctx, enqueue, keys, routing, settings, store
from workers.lock import LockOutcome, RedisLock
from workers.outcome import finish_deployment
from workers.verdict import (
    Failed,
    Succeeded,
    TimedOut,
    Waiter,
    Waiting,
    is_auto_sync,
    judge,
    parse_time,
    revisions_to_check,
)

log = logging.getLogger("gitops_bridge.verify")

IsAncestor = Callable[[str, str, str], Awaitable[bool]]
MAX_BACKOFF = 300.0
PUSHED_REASON = "pushed, not verified: the environment names no Argo CD application"
NO_ARGOCD_REASON = "cannot verify Argo CD application {app}: no Argo CD URL is configured (BRIDGE_ARGOCD__URL)"
MAX_INFOS = 10


def app_key(argo: ArgoApp) -> str:
    return f"{argo.namespace}/{argo.app}" if argo.namespace else argo.app


def _environment(ctx: Ctx, record: DeploymentRecord) -> Environment | None:
    try:
        return routing(ctx).route(record.route).environment(record.environment)
    except KeyError:
        return None


def _poll(ctx: Ctx) -> float:
    return max(settings(ctx).argocd.poll_seconds, 0.01)


async def schedule_tick(ctx: Ctx, key: str, not_before: float | None = None) -> bool:
    """Ensure the watcher tick for the interval after `not_before` (default: now); idempotent by job id."""
    interval = _poll(ctx)
    now = time.time()
    at = max(now, not_before or now)
    defer = (int(at // interval) + 1) * interval - now
    return await enqueue(ctx, WATCH_APPLICATION, key, job_id=tick_job_id(WATCH_APPLICATION, key, interval, now=at),
                         defer_by=max(defer, 0.0))


async def verify_deployment(ctx: Ctx, deployment_id: str) -> str:
    """Register the deployment with its application's watcher. Idempotent: a re-run keeps the first registration."""
    record = await store(ctx).get(deployment_id)
    if record is None or record.verdict is not None or record.state != "verifying":
        return "done"
    env = _environment(ctx, record)
    client: ArgoCDClient | None = ctx.get("argocd")
    if env is None:
        await finish_deployment(ctx, deployment_id, "failed",
                                f"environment {record.environment} of route {record.route} is no longer configured")
        return "failed"
    if env.argocd is None:
        await finish_deployment(ctx, deployment_id, "pushed", PUSHED_REASON)
        return "pushed"
    if client is None:
        await finish_deployment(ctx, deployment_id, "failed", NO_ARGOCD_REASON.format(app=env.argocd.app))
        return "failed"
    if not record.commit_sha:
        await finish_deployment(ctx, deployment_id, "failed", "no commit to verify in Argo CD")
        return "failed"

    cfg = settings(ctx).argocd
    argo = env.argocd
    pushed = parse_time(record.timeline.get("pushed") or record.timeline.get("merged")) or datetime.now(UTC)
    deadline = pushed.timestamp() + (env.deadline_seconds or cfg.deadline_seconds)
    grace = env.degraded_grace_seconds if env.degraded_grace_seconds is not None else cfg.degraded_grace_seconds
    key = app_key(argo)
    waiter = {
        "dep": deployment_id, "repository": record.repository, "target": record.commit_sha,
        "pushed": pushed.isoformat(), "deadline": deadline, "grace": grace, "source_index": argo.source_index,
        "refreshed": False, "degraded_since": None, "stamped": [], "ancestry": {}, "last": "", "reason": "",
    }
    coords = {"app": argo.app, "project": argo.project, "namespace": argo.namespace}
    await store(ctx).update(deployment_id, state="verifying", argocd_app=argo.app,
                            argocd_url=client.app_url(argo.app, argo.namespace))
    redis = ctx["redis"]
    await redis.hsetnx(keys(ctx).waiting(key), deployment_id, json.dumps(waiter))
    await redis.hsetnx(keys(ctx).watched_apps, key, json.dumps(coords))
    await schedule_tick(ctx, key)
    return "waiting"


async def resume_watches(ctx: Ctx) -> int:
    """Worker start-up: re-arm a watcher tick for every application that has waiters in Redis. Returns the count."""
    redis = ctx["redis"]
    k = keys(ctx)
    found: set[str] = {_text(a) for a in await redis.hkeys(k.watched_apps)}
    prefix = k.waiting("")
    async for raw in redis.scan_iter(match=prefix + "*", count=500):
        found.add(_text(raw)[len(prefix):])
    resumed = 0
    for key in sorted(found):
        if await redis.hlen(k.waiting(key)):
            await schedule_tick(ctx, key)
            resumed += 1
        else:
            await _retire(ctx, key)
    if resumed:
        log.info("resumed watching %d Argo CD application(s)", resumed)
    return resumed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _retire(ctx: Ctx, key: str) -> bool:
    """Forget the app when nobody waits on it (atomic against a concurrent registration)."""
    redis = ctx["redis"]
    k = keys(ctx)
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(k.waiting(key))
            if await pipe.hlen(k.waiting(key)):
                await pipe.reset()
                return False
            pipe.multi()
            pipe.hdel(k.watched_apps, key)
            await pipe.execute()
            return True
        except Exception:  # WatchError: someone registered meanwhile; the next tick sees it
            return False


async def watch_application(ctx: Ctx, key: str) -> str:
    """One watcher tick for one application (see module docstring). Returns what it did, for logs and tests."""
    redis = ctx["redis"]
    k = keys(ctx)
    raw = await redis.hgetall(k.waiting(key))
    if not raw:
        await _retire(ctx, key)
        return "idle"
    waiters = {_text(dep): json.loads(v) for dep, v in raw.items()}
    # A short lease, renewed while the tick runs: a worker that dies mid-tick blocks this app for seconds, not minutes.
    lease = RedisLock(redis, k.lock(f"argocd-watch:{key}"), lease_seconds=max(5.0, 2 * _poll(ctx)))
    if await lease.acquire(0) is not LockOutcome.ACQUIRED:
        await schedule_tick(ctx, key)
        return "busy"
    try:
        return await _tick(ctx, key, waiters)
    except Exception:
        # Keep the chain alive without arq retries (which would fork a second chain): try again next interval.
        log.exception("watching Argo CD application %s failed; trying again next interval", key)
        await schedule_tick(ctx, key, time.time() + _poll(ctx))
        return "error"
    finally:
        await lease.release()


async def _app_state(ctx: Ctx, key: str, waiters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    raw = await ctx["redis"].hget(keys(ctx).watched_apps, key)
    state: dict[str, Any] = json.loads(raw) if raw else {}
    if not state.get("app"):
        # lost (retired while a registration raced): recover the coordinates from the waiter's deployment
        for dep in waiters:
            record = await store(ctx).get(dep)
            env = _environment(ctx, record) if record else None
            if env is not None and env.argocd is not None:
                state.update(app=env.argocd.app, project=env.argocd.project, namespace=env.argocd.namespace)
                break
    return state


async def _tick(ctx: Ctx, key: str, waiters: dict[str, dict[str, Any]]) -> str:
    redis = ctx["redis"]
    k = keys(ctx)
    interval = _poll(ctx)
    now = time.time()
    state = await _app_state(ctx, key, waiters)
    client: ArgoCDClient | None = ctx.get("argocd")

    # Drop waiters whose deployment is gone or already decided.
    records: dict[str, DeploymentRecord] = {}
    for dep in list(waiters):
        record = await store(ctx).get(dep)
        if record is None or record.verdict is not None:
            await redis.hdel(k.waiting(key), dep)
            del waiters[dep]
        else:
            records[dep] = record
    if not waiters:
        await _retire(ctx, key)
        return "idle"
    if client is None or not state.get("app"):
        for dep in waiters:
            await _finish(ctx, key, dep, "failed", NO_ARGOCD_REASON.format(app=state.get("app") or key))
        return "unconfigured"

    if state.get("backoff_until", 0) > now:
        await schedule_tick(ctx, key, state["backoff_until"])
        return "backing-off"
    if now - state.get("polled_at", 0) < interval * 0.5:
        await schedule_tick(ctx, key)
        return "throttled"

    name, project, namespace = state["app"], state.get("project"), state.get("namespace")
    refresh_again = max(15.0, 3 * interval)
    want_refresh = any(not w.get("refreshed") for w in waiters.values()) or (
        state.get("refresh_due") and now - state.get("refreshed_at", 0) >= refresh_again)
    state["polled_at"] = now
    try:
        if want_refresh:
            app = (await client.refresh(name, project, namespace)).application
            state["refreshed_at"] = time.time()
            for w in waiters.values():
                w["refreshed"] = True
        else:
            app = await client.get_application(name, project, namespace)
    except UpstreamUnavailable as exc:
        await _unavailable(ctx, key, state, waiters, exc)
        return "unavailable"
    except PermanentError as exc:
        for dep in waiters:
            await _finish(ctx, key, dep, "failed", str(exc))
        await _retire(ctx, key)
        return "failed"
    state["failures"] = 0

    outcome = await _judge_all(ctx, key, app, waiters, records, state)
    needing = [dep for dep, need in outcome.items() if need]
    if needing and not is_auto_sync(app) and now - state.get("sync_requested_at", 0) >= max(30.0, 6 * interval):
        await _sync(ctx, key, client, state, needing, waiters)

    await redis.hset(k.watched_apps, key, json.dumps(state))
    if await redis.hlen(k.waiting(key)):
        await schedule_tick(ctx, key, state.get("backoff_until"))
        return "waiting"
    await _retire(ctx, key)
    return "done"


async def _unavailable(ctx: Ctx, key: str, state: dict[str, Any], waiters: dict[str, dict[str, Any]],
                       exc: UpstreamUnavailable) -> None:
    """Back off (Retry-After or exponential); deadlines still apply, reported with the last snapshot seen."""
    now = time.time()
    failures = int(state.get("failures", 0)) + 1
    state["failures"] = failures
    delay = exc.retry_after if exc.retry_after is not None else _poll(ctx) * 2 ** min(failures, 12)
    state["backoff_until"] = now + min(delay, MAX_BACKOFF)
    log.warning("Argo CD %s: %s (failure %d, next try in %.1fs)", key, exc, failures, min(delay, MAX_BACKOFF))
    for dep, w in waiters.items():
        if now >= float(w["deadline"]):
            await _finish(ctx, key, dep, "timed-out",
                          f"Argo CD unreachable until the deadline ({exc}); last snapshot: {w.get('last') or 'none'}")
    await ctx["redis"].hset(keys(ctx).watched_apps, key, json.dumps(state))
    if await ctx["redis"].hlen(keys(ctx).waiting(key)):
        await schedule_tick(ctx, key, state["backoff_until"])


async def _contains(ctx: Ctx, w: dict[str, Any], revisions: set[str]) -> set[str]:
    """The revisions that are our commit or contain it; ancestry answers are cached on the waiter (immutable)."""
    is_ancestor: IsAncestor | None = ctx.get("is_ancestor")
    cache: dict[str, bool] = w.setdefault("ancestry", {})
    out: set[str] = set()
    for rev in revisions:
        if rev == w["target"]:
            out.add(rev)
            continue
        if rev not in cache:
            if is_ancestor is None:
                continue
            try:
                cache[rev] = bool(await is_ancestor(w["repository"], w["target"], rev))
            except Exception as exc:  # not fetched yet, git hiccup: unknown this time, ask again next tick
                log.info("ancestry %s..%s in %s unknown: %s", w["target"][:10], rev[:10], w["repository"], exc)
                continue
            if len(cache) > 64:
                cache.pop(next(iter(cache)))
        if cache[rev]:
            out.add(rev)
    return out


async def _judge_all(ctx: Ctx, key: str, app: dict[str, Any], waiters: dict[str, dict[str, Any]],
                     records: dict[str, DeploymentRecord], state: dict[str, Any]) -> dict[str, bool]:
    """Judge each waiter; finish the decided ones. Returns dep → needs a sync (manual apps)."""
    redis = ctx["redis"]
    k = keys(ctx)
    now = datetime.now(UTC)
    needs: dict[str, bool] = {}
    state["refresh_due"] = False
    for dep, w in waiters.items():
        contains = await _contains(ctx, w, revisions_to_check(app, w.get("source_index")))
        since = w.get("degraded_since")
        waiter = Waiter(
            target=w["target"], pushed_at=parse_time(w["pushed"]) or now,
            deadline=datetime.fromtimestamp(float(w["deadline"]), UTC), degraded_grace=float(w["grace"]),
            source_index=w.get("source_index"),
            degraded_since=datetime.fromtimestamp(since, UTC) if since else None,
        )
        verdict = judge(app, waiter, contains, now)
        new = sorted(set(verdict.stamps) - set(w.get("stamped", [])))
        if new:
            await store(ctx).update(dep, stamp=new)
            w["stamped"] = sorted(set(w.get("stamped", [])) | set(new))
        if isinstance(verdict, Succeeded):
            await _finish(ctx, key, dep, "succeeded", verdict.reason)
        elif isinstance(verdict, Failed):
            details = {**records[dep].details, "argocd": {"snapshot": verdict.summary,
                                                          "failing_resources": list(verdict.resources)}}
            await _finish(ctx, key, dep, "failed", verdict.reason, details=details)
        elif isinstance(verdict, TimedOut):
            details = {**records[dep].details, "argocd": {"snapshot": verdict.summary}}
            await _finish(ctx, key, dep, "timed-out", verdict.reason, details=details)
        elif isinstance(verdict, Waiting):
            w["last"], w["reason"] = verdict.summary, verdict.reason
            if verdict.degraded:
                w["degraded_since"] = w.get("degraded_since") or now.timestamp()
            else:
                w["degraded_since"] = None
            state["refresh_due"] = state["refresh_due"] or verdict.needs_refresh
            needs[dep] = verdict.needs_sync
            if await redis.hexists(k.waiting(key), dep):
                await redis.hset(k.waiting(key), dep, json.dumps(w))
    return needs


async def _sync(ctx: Ctx, key: str, client: ArgoCDClient, state: dict[str, Any], needing: list[str],
                waiters: dict[str, dict[str, Any]]) -> None:
    """Manual-sync app compared at our commit: POST /sync once for all waiters (never with a revision)."""
    infos = [{"name": "gitops-bridge.deployment", "value": dep} for dep in sorted(needing)[:MAX_INFOS]]
    try:
        outcome = await client.sync(state["app"], state.get("project"), state.get("namespace"), infos=infos)
    except UpstreamUnavailable as exc:
        failures = int(state.get("failures", 0)) + 1
        state["failures"] = failures
        delay = exc.retry_after if exc.retry_after is not None else _poll(ctx) * 2 ** min(failures, 12)
        state["backoff_until"] = time.time() + min(delay, MAX_BACKOFF)
        return
    except PermanentError as exc:
        for dep in needing:
            await _finish(ctx, key, dep, "failed", f"Argo CD refused to sync: {exc}")
        return
    if isinstance(outcome, SyncBusy):
        log.info("Argo CD %s: %s; waiting for it", key, outcome.message)
        return
    if isinstance(outcome, SyncStarted):
        state["sync_requested_at"] = time.time()
        log.info("Argo CD %s: sync requested for %s", key, ", ".join(needing))


async def _finish(ctx: Ctx, key: str, dep: str, verdict: Any, reason: str, **changes: Any) -> None:
    await finish_deployment(ctx, dep, verdict, reason, **changes)
    await ctx["redis"].hdel(keys(ctx).waiting(key), dep)
