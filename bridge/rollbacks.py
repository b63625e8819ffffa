"""Roll back: put an environment back on a build that succeeded there, as a deployment of kind `rollback`.

    POST /api/rollbacks {"route", "environment", "to_build"?, "reason"?, "force"?}   (write token)
        → 202 with the rollback's deployment record; 409 with the reason when refused; 404 for an unknown target
    POST /api/releases {"route", "environment", "deploy_latest"?}                     (write token)
        → the hold lifted; with deploy_latest, the newest build the hold stopped is deployed (a new deployment)

`plan_rollback` decides (reads Redis, writes nothing): what runs now (the writer's last setter of the environment's
first key), what to restore (the environment's "last succeeded" list, written with each success verdict: the newest
entry whose tag is not what runs now, or the named build, which must have succeeded there), and whether to refuse
(nothing succeeded before; a deployment or a rollback still in flight, unless forced — a rollback in flight is never
overridden). `launch_rollback` holds the environment (the hold names the rollback and who asked), then stores the
record (`queued`, its tag set) with its `advance_deployment` job in one transaction. The rest is the ordinary life
of a deployment (`bridge.lifecycle`): the writer lets a rollback write an older tag and pass the hold, and commits it
with `Rollback-Of`, `Build-Id` and `Deployment-Id` trailers; Argo CD verifies it; the report goes to both builds.

Both the API (manual) and the worker (`on_failure: rollback`, automatic) start rollbacks through this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge import metrics
from bridge.endpoints import deny_writer, error, json_body, record_json, store_of, token_ok, who, writers
from bridge.lifecycle import is_success
from bridge.queue import ADVANCE_DEPLOYMENT, advance_job_id
from bridge.records import DeploymentRecord, DeploymentStore, JobSpec, build_fields, target_fields
from bridge.routing import RoutingConfig

REASON_MAX = 200


class RollbackRefused(Exception):
    """The rollback cannot start; `status` is the HTTP answer (404 unknown target, 409 refused)."""

    def __init__(self, reason: str, status: int = 409) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass(frozen=True)
class Plan:
    record: DeploymentRecord  # the rollback deployment, not stored yet
    restored_build: int
    rolled_back_build: int | None


async def _running(store: DeploymentStore, repository: str, file: str, key: str) -> dict[str, Any] | None:
    """The writer's last setter of a target (`workers.ordering.Setter` as JSON): what the bridge last wrote."""
    raw = await store.redis.get(store.keys.last_setter(repository, file, key))
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def plan_rollback(store: DeploymentStore, routing: RoutingConfig, route_name: str, environment: str, *,
                        to_build: int | None = None, force: bool = False, reason: str | None = None,
                        by: str = "unknown", cause: str = "manual", rollback_id: str | None = None) -> Plan:
    """Decide the rollback of `route_name/environment` (RollbackRefused with a reason when it must not start)."""
    try:
        route = routing.route(route_name)
    except KeyError:
        raise RollbackRefused(f"no route {route_name!r}", 404) from None
    try:
        env = route.environment(environment)
    except KeyError:
        raise RollbackRefused(f"no environment {environment!r} in route {route_name!r}", 404) from None

    in_flight, _ = await store.list(route=route_name, environment=environment, verdict="in-flight", limit=20)
    for other in in_flight:
        if other.kind == "rollback":
            raise RollbackRefused(f"rollback {other.id} of {route_name}/{environment} is still in flight "
                                  f"({other.state})")
    if in_flight and not force:
        newest = in_flight[0]
        raise RollbackRefused(f"build {newest.build_id} ({newest.id}) is still in flight in {environment} "
                              f"({newest.state}); pass force to roll back anyway")

    running = await _running(store, env.repository, env.file, env.keys[0])
    history = await store.last_succeeded(route_name, environment)
    current_tag = running.get("tag") if running else (history[0]["tag"] if history else None)
    if to_build is None:
        entry = next((h for h in history if h.get("tag") and h["tag"] != current_tag), None)
        if entry is None:
            raise RollbackRefused(f"nothing succeeded in {route_name}/{environment} before what runs there now "
                                  f"({current_tag or 'unknown'}): there is nothing to roll back to")
    else:
        entry = next((h for h in history if h.get("build_id") == to_build and h.get("tag")), None)
        if entry is None:
            found, _ = await store.list(build_id=to_build, route=route_name, environment=environment, limit=20)
            ok = next((r for r in found if is_success(r.verdict) and r.tag), None)
            if ok is None:
                raise RollbackRefused(f"build {to_build} never succeeded in {route_name}/{environment}")
            entry = {"deployment_id": ok.id, "build_key": ok.build_key, "build_id": ok.build_id, "tag": ok.tag}
        if entry["tag"] == current_tag:
            raise RollbackRefused(f"{route_name}/{environment} runs build {to_build} ({current_tag}) already")

    restored = await store.get(str(entry.get("deployment_id", "")))
    fields: dict[str, Any] = build_fields(restored) if restored else {
        "build_key": str(entry["build_key"]), "build_id": int(entry["build_id"])}
    rolled_back = int(running["build_id"]) if running and running.get("build_id") is not None else None
    rolled_back_id = str(running.get("deployment_id") or "") if running else ""
    if rollback_id is None:
        seq = int(await store.redis.incr(store.keys.rollback_sequence(route_name, environment)))
        rollback_id = f"rollback-{seq}-{route_name}-{environment}"
    record = DeploymentRecord(
        id=rollback_id,
        kind="rollback",
        state="queued",
        tag=str(entry["tag"]),
        **target_fields(route, env),
        details={
            "rollback_of": {"build_id": rolled_back, "deployment_id": rolled_back_id, "tag": current_tag},
            "restores": str(entry.get("deployment_id", "")),
            "by": by,
            "reason": (reason or "").strip()[:REASON_MAX],
            "force": force,
            "cause": cause,
        },
        **fields,
    )
    record.stamp("received", "queued")
    return Plan(record, int(entry["build_id"]), rolled_back)


def hold_reason(plan: Plan) -> str:
    of = f" (from build {plan.rolled_back_build})" if plan.rolled_back_build is not None else ""
    return f"rolled back to build {plan.restored_build}{of} by rollback {plan.record.id}"


async def launch_rollback(store: DeploymentStore, plan: Plan) -> DeploymentRecord:
    """Hold the environment, then store the rollback with its first job (the store needs a queue name)."""
    r = plan.record
    details = r.details
    await store.set_hold(r.route, r.environment, hold_reason(plan), by=str(details.get("by") or "unknown"),
                         note=str(details.get("reason") or "") or None, rollback=r.id,
                         cause="rollback" if details.get("cause") == "manual" else f"rollback-{details.get('cause')}")
    if not await store.create(r, then=[JobSpec(ADVANCE_DEPLOYMENT, (r.id,), advance_job_id(r.id))]):
        raise RollbackRefused(f"rollback {r.id} exists already")
    metrics.ROLLBACKS.labels(environment=r.environment, cause=str(details.get("cause"))).inc()
    return r


async def deploy_latest_held(store: DeploymentStore, routing: RoutingConfig, route_name: str,
                             environment: str, by: str) -> DeploymentRecord | None:
    """After a release: deploy the newest build that the hold stopped, as a new deployment of that build (its held
    deployment keeps its verdict). None when no build was held."""
    held, _ = await store.list(route=route_name, environment=environment, verdict="held", limit=100)
    builds = [r for r in held if r.kind == "build"]
    if not builds:
        return None
    newest = max(builds, key=lambda r: (r.build_id, r.created))
    env = routing.route(route_name).environment(environment)
    seq = int(await store.redis.incr(store.keys.rollback_sequence(route_name, environment)))
    record = DeploymentRecord(
        id=f"{newest.id}-release-{seq}",
        state="queued",
        **target_fields(routing.route(route_name), env),
        details={"redeploy_of": newest.id, "released_by": by},
        **build_fields(newest),
    )
    record.stamp("received", "queued")
    await store.create(record, then=[JobSpec(ADVANCE_DEPLOYMENT, (record.id,), advance_job_id(record.id))])
    return record


# -- the API endpoints -----------------------------------------------------------------------------------------------

async def post_rollback(request: Request) -> JSONResponse:
    if not token_ok(request, writers(request)):
        return deny_writer(request, "rollbacks")
    body = await json_body(request, "rollbacks")
    if isinstance(body, JSONResponse):
        return body
    route, environment = body.get("route"), body.get("environment")
    to_build, reason, force = body.get("to_build"), body.get("reason"), body.get("force", False)
    if not isinstance(route, str) or not isinstance(environment, str):
        return error("rollbacks", 400, "'route' and 'environment' (names) are required")
    if to_build is not None and (not isinstance(to_build, int) or isinstance(to_build, bool)):
        return error("rollbacks", 400, "'to_build' must be a build id (integer)")
    if reason is not None and not isinstance(reason, str):
        return error("rollbacks", 400, "'reason' must be text")
    if not isinstance(force, bool):
        return error("rollbacks", 400, "'force' must be true or false")
    routing: RoutingConfig = request.app.state.routing
    store = store_of(request)
    try:
        plan = await plan_rollback(store, routing, route, environment, to_build=to_build, force=force,
                                   reason=reason, by=who(request, write=True) or "unknown")
        record = await launch_rollback(store, plan)
    except RollbackRefused as refused:
        return error("rollbacks", refused.status, refused.reason)
    metrics.API_REQUESTS.labels(endpoint="rollbacks", outcome="ok").inc()
    return JSONResponse(record_json(record), status_code=202)


async def post_release(request: Request) -> JSONResponse:
    """POST {"route", "environment", "deploy_latest"?} → the hold lifted and, with deploy_latest, the newest build it
    stopped deployed again: {"released", "route", "environment", "deployment"}."""
    if not token_ok(request, writers(request)):
        return deny_writer(request, "holds")
    body = await json_body(request, "holds")
    if isinstance(body, JSONResponse):
        return body
    route, environment, latest = body.get("route"), body.get("environment"), body.get("deploy_latest", False)
    if not isinstance(route, str) or not isinstance(environment, str) or not isinstance(latest, bool):
        return error("holds", 400, "'route' and 'environment' (names) are required; 'deploy_latest' is true or false")
    routing: RoutingConfig = request.app.state.routing
    try:
        routing.route(route).environment(environment)
    except KeyError:
        return error("holds", 404, f"no environment {environment!r} in a route {route!r}")
    store = store_of(request)
    released = await store.release_hold(route, environment)
    record = await deploy_latest_held(store, routing, route, environment,
                                      who(request, write=True) or "unknown") if latest else None
    metrics.API_REQUESTS.labels(endpoint="holds", outcome="ok").inc()
    return JSONResponse({"released": released, "route": route, "environment": environment,
                         "deployment": record.id if record else None})


routes = [
    Route("/api/rollbacks", post_rollback, methods=["POST"]),
    Route("/api/releases", post_release, methods=["POST"]),
]
