"""Follow each deployment to a verdict in Argo CD without pinning a worker slot, and with bounded Argo CD load.

    verify_deployment(dep_id)   register the deployment as a waiter on its application, ensure a watcher tick
    watch_application(app_key)  one Argo CD read for the app (a refresh when a new waiter arrived or the comparison
                                lags), judge every waiter with `workers.verdict.judge`, finish the decided ones,
                                trigger a sync for manual-sync apps, then defer itself to the next poll interval

Everything lives in Redis, so a restarted worker picks up where the last one stopped (`resume_watches`):

    Keys.waiting(app_key)   hash dep_id → waiter JSON (target SHA, push time, deadline, policies, stamps, reason)
    Keys.watched_apps       hash app_key → app JSON (coordinates, polled_at, refreshed_at, failures, backoff_until,
                            the last snapshot, the ancestry cache)
    Keys.lock("argocd-watch:" + app_key)  short lease so two watcher jobs never poll the same app at once

Load: one tick job per app and poll interval (`tick_job_id`, started before any backlog once due:
`workers.runtime.prioritize`), a lease, and a `polled_at` gate: at most one status request per application per
interval, however many deployments wait on it. 429/5xx back off exponentially (or by `Retry-After`); deadlines still
apply while Argo CD is unreachable.

Cost per tick: one HGETALL of the compact waiters and one ZMSCORE (decided elsewhere?), one judgement per group of
waiters on the same commit (`judge_many`), git ancestry once per (target, revision). Redis writes and record reads
only for waiters whose state changed or that are decided; decided ones are stamped and finished in batches.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.argocd_webhook import HINT_INTERVAL_S as HINT_GAP
from bridge.argocd_webhook import enqueue_hint
from bridge.errors import AuthError, NotFound, PermanentError, UpstreamUnavailable
from bridge.queue import WATCH_APPLICATION, tick_job_id
from bridge.records import DeploymentRecord
from bridge.routing import ArgoApp, Environment
from workers.argocd import ArgoCDClient, SyncBlocked, SyncBusy, SyncStarted
from workers.context import Ctx, enqueue, keys, routing, settings, store
from workers.lock import LockOutcome, RedisLock
from workers.outcome import finish_deployment, finish_deployments
from workers.runtime import prioritize
from workers.verdict import (
    AppState,
    Failed,
    Judgement,
    Succeeded,
    TimedOut,
    Waiter,
    Waiting,
    combine,
    estate_timed_out,
    is_auto_sync,
    judge_many,
    parse_time,
    paused_rollouts,
    revisions_to_check,
    rollout_pause,
)

log = logging.getLogger("gitops_bridge.verify")

IsAncestor = Callable[[str, str, str], Awaitable[bool]]
MAX_BACKOFF = 300.0
PUSHED_REASON = "pushed, not verified: the environment names no Argo CD application"
NO_ARGOCD_REASON = "cannot verify Argo CD application {app}: no Argo CD URL is configured (BRIDGE_ARGOCD__URL)"
MAX_INFOS = 10


def app_key(argo: ArgoApp, name: str | None = None, instance: str | None = None) -> str:
    """The watcher's key: `[<instance>|][<namespace>/]<app>` (no instance part for the default instance)."""
    app = name or argo.names[0]
    key = f"{argo.namespace}/{app}" if argo.namespace else app
    return f"{instance}|{key}" if instance else key


def _instance_tag(ctx: Ctx, argo: ArgoApp) -> str | None:
    """The instance part of the keys: None for the default instance (so both spellings share one watcher)."""
    root: ArgoCDClient | None = ctx.get("argocd")
    if argo.instance is None or (root is not None and argo.instance == root.default_name):
        return None
    return argo.instance


def _client(ctx: Ctx, instance: str | None) -> ArgoCDClient | None:
    root: ArgoCDClient | None = ctx.get("argocd")
    return root.instance(instance) if root is not None else None


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
    due = (int(at // interval) + 1) * interval
    job_id = tick_job_id(WATCH_APPLICATION, key, interval, now=at)
    queued = await enqueue(ctx, WATCH_APPLICATION, key, job_id=job_id, defer_by=max(due - now, 0.0))
    if queued:  # a tick is a timer: it runs when due, not after the backlog of builds and reports queued before it
        await prioritize(ctx["redis"], settings(ctx).queue_name, job_id, due)
    return queued


async def verify_deployment(ctx: Ctx, deployment_id: str) -> str:
    """Register the deployment with its application's watcher. Idempotent: a re-run keeps the first registration."""
    record = await store(ctx).get(deployment_id)
    if record is None or record.verdict is not None or record.state != "verifying":
        return "done"
    env = _environment(ctx, record)
    client = _client(ctx, env.argocd.instance) if env is not None and env.argocd is not None else None
    if env is None:
        await finish_deployment(ctx, deployment_id, "failed",
                                f"environment {record.environment} of route {record.route} is no longer configured")
        return "failed"
    if env.argocd is None:
        await finish_deployment(ctx, deployment_id, "pushed", PUSHED_REASON)
        return "pushed"
    if client is None:
        reason = NO_ARGOCD_REASON.format(app=env.argocd.describe()) if env.argocd.instance is None else \
            f"cannot verify Argo CD application {env.argocd.describe()}: no Argo CD instance " \
            f"{env.argocd.instance!r} is configured (BRIDGE_ARGOCD__INSTANCES)"
        await finish_deployment(ctx, deployment_id, "failed", reason)
        return "failed"
    if not record.commit_sha:
        await finish_deployment(ctx, deployment_id, "failed", "no commit to verify in Argo CD")
        return "failed"

    cfg = settings(ctx).argocd
    argo = env.argocd
    pushed = parse_time(record.timeline.get("pushed") or record.timeline.get("merged")) or datetime.now(UTC)
    deadline = pushed.timestamp() + (env.deadline_seconds or cfg.deadline_seconds)
    grace = env.degraded_grace_seconds if env.degraded_grace_seconds is not None else cfg.degraded_grace_seconds
    inst = _instance_tag(ctx, argo)
    waiter = {
        "dep": deployment_id, "repository": record.repository, "target": record.commit_sha,
        "pushed": pushed.isoformat(), "deadline": deadline, "grace": grace, "source_index": argo.source_index,
        "refreshed": False, "degraded_since": None, "stamped": [], "reason": "",
        "window_end": pushed.timestamp() + argo.window, "suspended": argo.suspended, "estate": argo.is_estate,
        "sync_window": argo.sync_window, "instance": inst,
    }
    if argo.is_estate:
        url = client.apps_url(argo.selector, argo.namespace) if argo.selector or not argo.names else \
            client.app_url(argo.names[0], argo.namespace)
    else:
        url = client.app_url(argo.names[0], argo.namespace)
    await store(ctx).update(deployment_id, state="verifying", argocd_app=argo.app or argo.describe(), argocd_url=url)
    redis = ctx["redis"]
    if argo.is_estate:
        fields = {estate_field(n): json.dumps({"state": "waiting", "reason": "not read yet"}) for n in argo.names}
        fields[DISCOVERY] = "open" if argo.selector else "closed"
        for field, value in fields.items():
            await redis.hsetnx(estate_key(ctx, deployment_id), field, value)
    if argo.selector:
        skey = selector_key(argo, inst)
        await redis.hsetnx(keys(ctx).waiting(skey), deployment_id, json.dumps(waiter))
        await redis.hsetnx(keys(ctx).watched_apps, skey, json.dumps(
            {"selector": argo.selector, "project": argo.project, "namespace": argo.namespace,
             "instance": inst}))
        await schedule_tick(ctx, skey)
    for name in argo.names:
        await _register(ctx, deployment_id, name, argo, waiter)
    return "waiting"


async def last_snapshot(ctx: Ctx, argo: ArgoApp, dep: str, name: str | None = None) -> str | None:
    """The last Argo CD snapshot the watcher of application `name` (default: the environment's first) saw while
    deployment `dep` waits on it (None when it does not wait): kept once per application in the watcher's state
    (waiters written by older workers carry their own). The gate's progress lines read it."""
    key = app_key(argo, name, _instance_tag(ctx, argo))
    redis = ctx["redis"]
    raw, state = await redis.hget(keys(ctx).waiting(key), dep), await redis.hget(keys(ctx).watched_apps, key)
    if raw is None:
        return None
    try:
        last = json.loads(raw).get("last") or (json.loads(state).get("last") if state else None)
    except (ValueError, AttributeError):
        return None
    return str(last) if last else None


async def _register(ctx: Ctx, dep: str, name: str, argo: ArgoApp, waiter: dict[str, Any]) -> None:
    """Make `dep` a waiter on application `name` (idempotent: a re-run keeps the first registration)."""
    key = app_key(argo, name, waiter.get("instance"))
    redis = ctx["redis"]
    await redis.hsetnx(keys(ctx).waiting(key), dep, json.dumps({**waiter, "app": name}))
    await redis.hsetnx(keys(ctx).watched_apps, key, json.dumps(
        {"app": name, "project": argo.project, "namespace": argo.namespace, "instance": waiter.get("instance")}))
    await schedule_tick(ctx, key)


# -- estates: per-deployment application states, in `<prefix>:estate:<dep>` (field app name → AppState JSON) --

DISCOVERY = "@discovery"  # "open" while a selector may still bring new applications, then "closed"
SELECTOR_PREFIX = "selector:"


def estate_key(ctx: Ctx, dep: str) -> str:
    return f"{keys(ctx).prefix}:estate:{dep}"


def estate_field(name: str) -> str:
    return name


def selector_key(argo: ArgoApp, instance: str | None = None) -> str:
    return f"{SELECTOR_PREFIX}{instance or ''}:{argo.namespace or ''}:{argo.project}:{argo.selector}"


async def estate(ctx: Ctx, dep: str) -> tuple[dict[str, AppState], bool]:
    """The deployment's applications and whether discovery is still open."""
    raw = await ctx["redis"].hgetall(estate_key(ctx, dep))
    members: dict[str, AppState] = {}
    discovering = False
    for f, v in raw.items():
        field, value = _text(f), _text(v)
        if field == DISCOVERY:
            discovering = value == "open"
            continue
        data = json.loads(value)
        members[field] = AppState(str(data.get("state", "waiting")), str(data.get("reason", "")))
    return members, discovering


def _details(records: dict[str, DeploymentRecord] | DeploymentRecord, dep: str,
             members: dict[str, AppState], **extra: Any) -> dict[str, Any]:
    record = records if isinstance(records, DeploymentRecord) else records[dep]
    apps = {n: {"state": m.state, "reason": m.reason} for n, m in sorted(members.items())}
    return {**record.details, "argocd": {**(record.details.get("argocd") or {}), **extra, "apps": apps}}


async def _set_member(ctx: Ctx, dep: str, name: str, state: str, reason: str) -> bool:
    """Record one application's state for `dep`; True when the state changed (then the record is rewritten; a new
    reason alone only updates the estate hash, which the verdict reads). Succeeded and failed are final."""
    redis = ctx["redis"]
    raw = await redis.hget(estate_key(ctx, dep), estate_field(name))
    old = json.loads(raw) if raw else {}
    if old.get("state") in ("succeeded", "failed") or (old.get("state"), old.get("reason")) == (state, reason):
        return False
    await redis.hset(estate_key(ctx, dep), estate_field(name), json.dumps({"state": state, "reason": reason}))
    return old.get("state") != state


async def _settle(ctx: Ctx, dep: str, record: DeploymentRecord | None = None, *, now: float | None = None) -> str:
    """Judge the deployment from its applications' states; finish it when decided. Returns the verdict or waiting."""
    record = record or await store(ctx).get(dep)
    if record is None or record.verdict is not None:
        return "done"
    members, discovering = await estate(ctx, dep)
    result = combine(members, target=record.commit_sha or "", discovering=discovering,
                     min_apps=_min_apps(ctx, record))
    if isinstance(result, Succeeded):
        await store(ctx).update(dep, stamp=["synced", "healthy"])
        await finish_deployment(ctx, dep, "succeeded", result.reason, details=_details(record, dep, members))
        return "succeeded"
    if isinstance(result, Failed):
        await finish_deployment(ctx, dep, "failed", result.reason, details=_details(record, dep, members))
        return "failed"
    deadline = _deadline(ctx, record)
    if (now or time.time()) >= deadline:
        out = estate_timed_out(members, target=record.commit_sha or "", discovering=discovering)
        await finish_deployment(ctx, dep, "timed-out", out.reason, details=_details(record, dep, members))
        return "timed-out"
    # only while still verifying: a watcher of another application may have finished it meanwhile (its details win)
    await store(ctx).advance(dep, ["verifying"], "verifying", details=_details(record, dep, members))
    return "waiting"


def _min_apps(ctx: Ctx, record: DeploymentRecord) -> int:
    env = _environment(ctx, record)
    return env.argocd.min_apps if env is not None and env.argocd is not None else 1


def _deadline(ctx: Ctx, record: DeploymentRecord) -> float:
    env = _environment(ctx, record)
    pushed = parse_time(record.timeline.get("pushed") or record.timeline.get("merged")) or datetime.now(UTC)
    return pushed.timestamp() + ((env.deadline_seconds if env else None) or settings(ctx).argocd.deadline_seconds)


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


async def _carry_on(ctx: Ctx, key: str, state: dict[str, Any], not_before: float | None = None) -> bool:
    """End a tick: save the watcher's state, then schedule its next tick while deployments still wait on it (True),
    or retire it (False)."""
    redis = ctx["redis"]
    await redis.hset(keys(ctx).watched_apps, key, json.dumps(state))
    if await redis.hlen(keys(ctx).waiting(key)):
        await schedule_tick(ctx, key, not_before)
        return True
    await _retire(ctx, key)
    return False


async def watch_application(ctx: Ctx, key: str, cause: str = "tick") -> str:
    """One watcher tick for one application (see module docstring). Returns what it did, for logs and tests.

    `cause="hint"` (queued by `POST /webhooks/argocd`): read now, unless the app was read in the last second; a
    hint never forks the tick chain (the next regular tick has the same job id) and is never a verdict by itself."""
    hint = cause == "hint"
    redis = ctx["redis"]
    k = keys(ctx)
    raw = await redis.hgetall(k.waiting(key))
    if not raw:
        await _retire(ctx, key)
        return "idle"
    waiters = {_text(dep): orjson.loads(v) for dep, v in raw.items()}  # every waiter, every tick: the fast parser
    # A short lease, renewed while the tick runs: a worker that dies mid-tick blocks this app for seconds, not minutes.
    lease = RedisLock(redis, k.lock(f"argocd-watch:{key}"), lease_seconds=max(5.0, 2 * _poll(ctx)))
    if await lease.acquire(0) is not LockOutcome.ACQUIRED:
        if hint:  # the read in progress may predate what the hint announced: read again a second later
            await enqueue_hint(redis, settings(ctx).queue_name, key, not_before=time.time() + HINT_GAP)
        else:
            await schedule_tick(ctx, key)
        return "busy"
    try:
        if key.startswith(SELECTOR_PREFIX):
            return await _discover(ctx, key, waiters)
        return await _tick(ctx, key, waiters, hint=hint)
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
                state.update(app=waiters[dep].get("app") or env.argocd.names[0], project=env.argocd.project,
                             namespace=env.argocd.namespace, instance=waiters[dep].get("instance"))
                break
    return state


async def _tick(ctx: Ctx, key: str, waiters: dict[str, dict[str, Any]], *, hint: bool = False) -> str:
    interval = _poll(ctx)
    now = time.time()
    state = await _app_state(ctx, key, waiters)
    client = _client(ctx, state.get("instance"))

    await _drop_decided(ctx, key, waiters)
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
    if hint and now - state.get("polled_at", 0) < HINT_GAP:
        # read a second after the last read instead: the state the hint announced is not lost
        await enqueue_hint(ctx["redis"], settings(ctx).queue_name, key,
                           not_before=state["polled_at"] + HINT_GAP)
        return "throttled"
    if not hint and _read_this_interval(state.get("polled_at", 0), now, interval):
        await schedule_tick(ctx, key)
        return "throttled"

    name, project, namespace = state["app"], state.get("project"), state.get("namespace")
    refresh_again = max(15.0, 3 * interval)
    want_refresh = any(not w.get("refreshed") for w in waiters.values()) or (
        state.get("refresh_due") and now - state.get("refreshed_at", 0) >= refresh_again)
    state["polled_at"] = now
    refreshed: set[str] = set()  # waiters whose first refresh this is (rewritten with the flag)
    try:
        if want_refresh:
            app = (await client.refresh(name, project, namespace)).application
            state["refreshed_at"] = time.time()
            for dep, w in waiters.items():
                if not w.get("refreshed"):
                    w["refreshed"] = True
                    refreshed.add(dep)
        else:
            app = await client.get_application(name, project, namespace)
    except UpstreamUnavailable as exc:
        await _unavailable(ctx, key, state, waiters, exc)
        return "unavailable"
    except NotFound as exc:
        await _missing(ctx, key, name, waiters, exc)
        return "missing" if await _carry_on(ctx, key, state) else "failed"
    except PermanentError as exc:
        for dep in waiters:
            await _finish(ctx, key, dep, "failed", str(exc))
        await _retire(ctx, key)
        return "failed"
    state["failures"] = 0
    await _describe_pauses(client, name, app, project, namespace)

    outcome = await _judge_all(ctx, key, app, waiters, state, refreshed)
    needing = [dep for dep, need in outcome.items() if need]
    if needing and not is_auto_sync(app) and now - state.get("sync_requested_at", 0) >= max(30.0, 6 * interval):
        await _sync(ctx, key, client, state, needing, waiters)
    auto_waiting = [dep for dep in outcome if dep in waiters and "waiting for auto-sync" in
                    str(waiters[dep].get("reason"))]
    if auto_waiting and now - state.get("windows_at", 0) >= max(30.0, 6 * interval):
        await _auto_sync_windows(ctx, key, client, state, auto_waiting, waiters)
    elif not auto_waiting and not needing:
        state.pop("blocked", None)

    return "waiting" if await _carry_on(ctx, key, state, state.get("backoff_until")) else "done"


def _read_this_interval(polled_at: float, now: float, interval: float) -> bool:
    """A regular read already happened in this poll interval (ticks are aligned on interval boundaries), or less
    than half an interval ago (a late tick): at most one status read per application per interval."""
    return int(polled_at // interval) == int(now // interval) or now - polled_at < interval * 0.5


async def _discover(ctx: Ctx, key: str, waiters: dict[str, dict[str, Any]]) -> str:
    """One selector tick: list the matching applications (one request, shared by every waiting deployment), make
    each waiter wait on the new ones, and close discovery for the waiters whose window has passed."""
    redis = ctx["redis"]
    k = keys(ctx)
    now = time.time()
    raw = await redis.hget(k.watched_apps, key)
    state: dict[str, Any] = json.loads(raw) if raw else {}
    records: dict[str, DeploymentRecord] = {}
    for dep in list(waiters):
        record = await store(ctx).get(dep)
        env = _environment(ctx, record) if record else None
        if record is None or record.verdict is not None or env is None or env.argocd is None:
            await redis.hdel(k.waiting(key), dep)
            del waiters[dep]
        else:
            records[dep] = record
            if not state.get("selector"):  # coordinates lost in a retire race: the environment has them
                state.update(selector=env.argocd.selector, project=env.argocd.project,
                             namespace=env.argocd.namespace, instance=waiters[dep].get("instance"))
    if not waiters:
        await _retire(ctx, key)
        return "idle"
    client = _client(ctx, state.get("instance"))
    if client is None:
        for dep in waiters:
            await _finish(ctx, key, dep, "failed", NO_ARGOCD_REASON.format(app=f"selector {state.get('selector')}"))
        return "unconfigured"
    if state.get("backoff_until", 0) > now:
        await schedule_tick(ctx, key, state["backoff_until"])
        return "backing-off"
    if now - state.get("polled_at", 0) < _poll(ctx) * 0.5:
        await schedule_tick(ctx, key)
        return "throttled"
    state["polled_at"] = now
    try:
        items = await client.list_applications(state["selector"], state.get("project"), state.get("namespace"))
    except UpstreamUnavailable as exc:
        await _unavailable(ctx, key, state, {}, exc)
        for dep in waiters:
            if now >= float(waiters[dep]["deadline"]):
                await redis.hdel(k.waiting(key), dep)
                await _settle(ctx, dep, records[dep], now=now)
        return "unavailable"
    except PermanentError as exc:
        for dep in waiters:
            await _finish(ctx, key, dep, "failed", f"cannot list the Argo CD applications matching "
                                                   f"{state['selector']!r}: {exc}")
        await _retire(ctx, key)
        return "failed"
    state["failures"] = 0
    names = sorted({str((i.get("metadata") or {}).get("name")) for i in items if (i.get("metadata") or {}).get("name")})
    for dep, w in waiters.items():
        env = _environment(ctx, records[dep])
        assert env is not None and env.argocd is not None
        members, _ = await estate(ctx, dep)
        for name in names:
            if name not in members:
                await redis.hsetnx(estate_key(ctx, dep), estate_field(name),
                                   json.dumps({"state": "waiting", "reason": "discovered, not read yet"}))
                await _register(ctx, dep, name, env.argocd, w)
                log.info("deployment %s: application %s joins the wait (selector %s)", dep, name, state["selector"])
        if now >= float(w["window_end"]) or now >= float(w["deadline"]):
            await redis.hset(estate_key(ctx, dep), DISCOVERY, "closed")
            await redis.hdel(k.waiting(key), dep)
            await _settle(ctx, dep, records[dep], now=now)
    return "discovering" if await _carry_on(ctx, key, state) else "done"


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
            last = w.get("last") or state.get("last") or "none"
            await _finish(ctx, key, dep, "timed-out",
                          f"Argo CD unreachable until the deadline ({exc}); last snapshot: {last}")
    await ctx["redis"].hset(keys(ctx).watched_apps, key, json.dumps(state))
    if await ctx["redis"].hlen(keys(ctx).waiting(key)):
        await schedule_tick(ctx, key, state["backoff_until"])


async def _describe_pauses(client: ArgoCDClient, name: str, app: dict[str, Any], project: str | None,
                           namespace: str | None) -> None:
    """A paused Argo Rollout: read its live manifest (only while Suspended) so reasons name the canary step."""
    for res in paused_rollouts(app)[:3]:
        try:
            manifest = await client.live_manifest(
                name, project, namespace, kind="Rollout", group="argoproj.io",
                resource_name=str(res.get("name")), resource_namespace=res.get("namespace"),
                version=str(res.get("version") or "v1alpha1"))
        except (PermanentError, UpstreamUnavailable, ValueError) as exc:  # best effort: the tree's message stays
            log.info("live manifest of Rollout %s unavailable: %s", res.get("name"), exc)
            continue
        pause = rollout_pause(manifest)
        if pause:
            health = res.setdefault("health", {})
            health["message"] = f"{pause}: {health['message']}" if health.get("message") else pause


async def _missing(ctx: Ctx, key: str, name: str, waiters: dict[str, dict[str, Any]], exc: NotFound) -> None:
    """The application does not exist (yet): wait within the discovery window, then fail naming it."""
    now = time.time()
    for dep, w in waiters.items():
        if now < float(w.get("window_end") or 0) and now < float(w["deadline"]):
            if w.get("estate"):
                if w.pop("noted", None) is not None:  # the next read's reason is news for the estate again
                    await ctx["redis"].hset(keys(ctx).waiting(key), dep, _stored(w))
                if await _set_member(ctx, dep, name, "missing", "does not exist yet"):
                    await _settle(ctx, dep)
            continue
        if not w.get("estate"):
            await _finish(ctx, key, dep, "failed", str(exc))
            continue
        await _set_member(ctx, dep, name, "failed", f"the application does not exist ({exc})")
        await ctx["redis"].hdel(keys(ctx).waiting(key), dep)
        await _settle(ctx, dep)


async def _drop_decided(ctx: Ctx, key: str, waiters: dict[str, dict[str, Any]]) -> None:
    """Forget the waiters whose deployment is gone or decided (by another application's watcher, the sweeper, a
    gate): one look at the `verifying` state index for all of them; no record is read."""
    redis = ctx["redis"]
    deps = list(waiters)
    scores = await redis.zmscore(keys(ctx).state_index("verifying"), deps)
    gone = [dep for dep, score in zip(deps, scores, strict=True) if score is None]
    if gone:
        await redis.hdel(keys(ctx).waiting(key), *gone)
        for dep in gone:
            del waiters[dep]


ANCESTRY_CACHE = 256


async def _contains(ctx: Ctx, state: dict[str, Any], repository: str, target: str, revisions: set[str]) -> set[str]:
    """The revisions that are `target` or contain it. Ancestry answers are immutable: cached in the watcher's state,
    once per (repository, target, revision) whatever the number of waiters on that target."""
    is_ancestor: IsAncestor | None = ctx.get("is_ancestor")
    cache: dict[str, bool] = state.setdefault("ancestry", {})
    out: set[str] = set()
    for rev in revisions:
        if rev == target:
            out.add(rev)
            continue
        entry = f"{repository} {target} {rev}"
        if entry not in cache:
            if is_ancestor is None:
                continue
            try:
                cache[entry] = bool(await is_ancestor(repository, target, rev))
            except Exception as exc:  # not fetched yet, git hiccup: unknown this time, ask again next tick
                log.info("ancestry %s..%s in %s unknown: %s", target[:10], rev[:10], repository, exc)
                continue
            while len(cache) > ANCESTRY_CACHE:
                cache.pop(next(iter(cache)))
        if cache[entry]:
            out.add(rev)
    return out


def _waiter(w: dict[str, Any], now: datetime) -> Waiter:
    since = w.get("degraded_since")
    return Waiter(
        target=w["target"], pushed_at=parse_time(w["pushed"]) or now,
        deadline=datetime.fromtimestamp(float(w["deadline"]), UTC), degraded_grace=float(w["grace"]),
        source_index=w.get("source_index"), degraded_since=datetime.fromtimestamp(since, UTC) if since else None,
        suspended=str(w.get("suspended") or "wait"),
    )


TRANSIENT_WAITER_FIELDS = ("last", "ancestry")  # written by earlier versions; now kept in the watcher's state


async def _judge_all(ctx: Ctx, key: str, app: dict[str, Any], waiters: dict[str, dict[str, Any]],
                     state: dict[str, Any], changed: Iterable[str] = ()) -> dict[str, bool]:
    """Judge each waiter (`judge_many`: once per group of waiters on the same commit); finish the decided ones, in
    batches; rewrite a waiter only when its own state changed. A tick's Redis cost is one write per decided or
    changed waiter, none for the ones that keep waiting as before. Returns dep → needs a sync (manual apps)."""
    redis = ctx["redis"]
    k = keys(ctx)
    now = datetime.now(UTC)
    needs: dict[str, bool] = {}
    state["refresh_due"] = False
    deps = list(waiters)
    found: dict[tuple[str, str, int | None], set[str]] = {}
    for dep in deps:
        w = waiters[dep]
        group = (w["repository"], w["target"], w.get("source_index"))
        if group not in found:
            found[group] = await _contains(ctx, state, w["repository"], w["target"],
                                           revisions_to_check(app, w.get("source_index")))
    judged = [_waiter(waiters[dep], now) for dep in deps]
    by_waiter = {id(j): found[(waiters[dep]["repository"], waiters[dep]["target"], waiters[dep].get("source_index"))]
                 for dep, j in zip(deps, judged, strict=True)}
    verdicts = judge_many(app, judged, lambda j: by_waiter[id(j)], now)
    state["last"] = next((v.summary for v in verdicts if v.summary), state.get("last", ""))

    stamp_now: dict[tuple[str, ...], list[str]] = {}
    succeeded: dict[tuple[str, ...], dict[str, str]] = {}
    decided: list[tuple[str, Judgement]] = []
    dirty: set[str] = set(changed)
    for dep, verdict in zip(deps, verdicts, strict=True):
        w = waiters[dep]
        if state.get("blocked") and isinstance(verdict, Waiting | TimedOut):
            verdict = replace(verdict, reason=f"{state['blocked']}: {verdict.reason}")
        # One application of many: only "sync started" is true of the deployment; synced/healthy come combined.
        stamps = set(verdict.stamps) & {"sync_started"} if w.get("estate") else set(verdict.stamps)
        if isinstance(verdict, Succeeded) and not w.get("estate"):
            succeeded.setdefault(tuple(sorted(stamps)), {})[dep] = verdict.reason  # stamped with the verdict
            continue
        new = sorted(stamps - set(w.get("stamped", [])))
        if new:
            stamp_now.setdefault(tuple(new), []).append(dep)
            w["stamped"] = sorted(set(w.get("stamped", [])) | set(new))
            dirty.add(dep)
        if not isinstance(verdict, Waiting):
            decided.append((dep, verdict))
            continue
        if w.get("reason") != verdict.reason:
            w["reason"] = verdict.reason
            dirty.add(dep)
        w["last"] = verdict.summary
        since = (w.get("degraded_since") or now.timestamp()) if verdict.degraded else None
        if since != w.get("degraded_since"):
            w["degraded_since"] = since
            dirty.add(dep)
        state["refresh_due"] = state["refresh_due"] or verdict.needs_refresh
        needs[dep] = verdict.needs_sync

    for names, group_deps in stamp_now.items():
        for start in range(0, len(group_deps), 200):
            await store(ctx).stamp_many(group_deps[start:start + 200], names)
    for names, reasons in succeeded.items():
        await finish_deployments(ctx, "succeeded", reasons, stamp=names)
        await redis.hdel(k.waiting(key), *reasons)
    for dep, verdict in decided:
        w = waiters[dep]
        if w.get("estate"):
            assert isinstance(verdict, Succeeded | Failed | TimedOut)
            await _judged_member(ctx, key, dep, str(w.get("app") or state["app"]), verdict, None, w)
            continue
        record = await store(ctx).get(dep)
        if record is None or record.verdict is not None:  # expired or decided meanwhile: nothing to finish
            await redis.hdel(k.waiting(key), dep)
            continue
        snapshot: dict[str, Any] = {"snapshot": verdict.summary}
        if isinstance(verdict, Failed):
            snapshot["failing_resources"] = list(verdict.resources)
        details = {**record.details, "argocd": snapshot}
        await _finish(ctx, key, dep, "failed" if isinstance(verdict, Failed) else "timed-out", verdict.reason,
                      details=details)
    finished = {dep for dep, _ in decided} | {dep for reasons in succeeded.values() for dep in reasons}
    for dep in sorted(needs):
        w = waiters[dep]
        if w.get("estate") and w.get("noted") != w.get("reason"):
            w["noted"] = w.get("reason")
            dirty.add(dep)
            if await _set_member(ctx, dep, str(w.get("app") or state["app"]), "waiting", str(w.get("reason"))):
                await _settle(ctx, dep)
    keep = {dep: _stored(waiters[dep]) for dep in sorted(dirty - finished)}
    if keep:
        await redis.hset(k.waiting(key), mapping=keep)
    return needs


def _stored(w: dict[str, Any]) -> bytes:
    return orjson.dumps({f: v for f, v in w.items() if f not in TRANSIENT_WAITER_FIELDS})


async def _judged_member(ctx: Ctx, key: str, dep: str, name: str, verdict: Succeeded | Failed | TimedOut,
                         record: DeploymentRecord | None, w: dict[str, Any]) -> None:
    """One application of an estate is decided for `dep`: record it, stop watching it for `dep`, judge the whole."""
    await ctx["redis"].hdel(keys(ctx).waiting(key), dep)
    if isinstance(verdict, Succeeded):
        await _set_member(ctx, dep, name, "succeeded", verdict.reason)
    elif isinstance(verdict, Failed):
        await _set_member(ctx, dep, name, "failed", verdict.reason)
    else:
        await _set_member(ctx, dep, name, "waiting", w.get("reason") or "no verdict before the deadline")
    await _settle(ctx, dep, record)


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
        why = f"Argo CD refused to sync: {exc}"
        if isinstance(exc, AuthError):
            why += (f" (auto-sync is off for {state['app']} and the bridge's Argo CD account may not sync it: "
                    "enable auto-sync or grant `applications, sync` in the project)")
        for dep in needing:
            await _finish(ctx, key, dep, "failed", why)
        return
    if isinstance(outcome, SyncBlocked):
        await _blocked(ctx, key, state, needing, waiters, f"Argo CD refused to sync {state['app']}: {outcome.message}")
        return
    if isinstance(outcome, SyncBusy):
        log.info("Argo CD %s: %s; waiting for it", key, outcome.message)
        return
    if isinstance(outcome, SyncStarted):
        state.pop("blocked", None)
        state["sync_requested_at"] = time.time()
        log.info("Argo CD %s: sync requested for %s", key, ", ".join(needing))


async def _auto_sync_windows(ctx: Ctx, key: str, client: ArgoCDClient, state: dict[str, Any], deps: list[str],
                             waiters: dict[str, dict[str, Any]]) -> None:
    """An auto-sync app stays OutOfSync at our commit: ask whether a sync window holds it (one read, not every tick)."""
    state["windows_at"] = time.time()
    try:
        windows = await client.sync_windows(state["app"], state.get("project"), state.get("namespace"))
    except (PermanentError, UpstreamUnavailable) as exc:
        log.info("sync windows of %s unavailable: %s", key, exc)
        return
    if windows.get("canSync", True) is not False:
        state.pop("blocked", None)
        return
    active = [w for w in windows.get("activeWindows") or [] if isinstance(w, dict)]
    which = ", ".join(f"{w.get('kind', '?')} window '{w.get('schedule', '?')}' for {w.get('duration', '?')}"
                      for w in active) or "a sync window"
    await _blocked(ctx, key, state, deps, waiters,
                   f"auto-sync of {state['app']} is held by {which} (Argo CD: canSync false)")


async def _blocked(ctx: Ctx, key: str, state: dict[str, Any], deps: list[str], waiters: dict[str, dict[str, Any]],
                   why: str) -> None:
    """A sync window blocks the sync: each deployment's `argocd.sync_window` says wait (the reason says so) or fail."""
    state["blocked"] = why
    for dep in deps:
        w = waiters.get(dep) or {}
        if w.get("sync_window") == "fail":
            await _finish(ctx, key, dep, "failed", f"{why}; this environment does not wait (argocd.sync_window: fail)")
        else:
            log.info("deployment %s: %s; waiting until the window opens or the deadline", dep, why)


async def _finish(ctx: Ctx, key: str, dep: str, verdict: Any, reason: str, **changes: Any) -> None:
    await finish_deployment(ctx, dep, verdict, reason, **changes)
    await ctx["redis"].hdel(keys(ctx).waiting(key), dep)
