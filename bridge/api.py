"""The operator API: deployment records, holds and promotions. Bearer tokens: read for GETs, write for changes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge import metrics
from bridge.endpoints import (
    deny,
    deny_writer,
    error,
    json_body,
    readers,
    record_json,
    routing_of,
    settings_of,
    store_of,
    token_ok,
    who,
    writers,
)
from bridge.lifecycle import is_success
from bridge.queue import PROMOTE_BUILD, deployment_id, unique_job_id
from bridge.records import VERDICTS
from bridge.routing import branch_matches

NOTE_MAX = 200


def _note(body: dict[str, Any] | None) -> str | None:
    """The free-text `by` a client may add (`--by`): kept as a note next to the server's identity, never as it."""
    note = (body or {}).get("by")
    return note.strip()[:NOTE_MAX] if isinstance(note, str) and note.strip() else None


async def list_deployments(request: Request) -> JSONResponse:
    if not token_ok(request, readers(request)):
        return deny("deployments")
    q = request.query_params
    try:
        build_id = int(q["build_id"]) if q.get("build_id") else None
        limit = min(max(int(q.get("limit", "50")), 1), 500)
        offset = max(int(q.get("offset", "0")), 0)
    except ValueError:
        return error("deployments", 400, "build_id, limit and offset must be integers")
    verdict = q.get("verdict")
    if verdict is not None and verdict not in (*VERDICTS, "in-flight"):
        return error("deployments", 400, f"verdict must be one of {', '.join((*VERDICTS, 'in-flight'))}")
    records, next_offset = await store_of(request).list(
        build_id=build_id, route=q.get("route"), environment=q.get("environment"), verdict=verdict,
        limit=limit, offset=offset,
    )
    metrics.API_REQUESTS.labels(endpoint="deployments", outcome="ok").inc()
    return JSONResponse({"items": [record_json(r) for r in records], "next_offset": next_offset})


async def get_deployment(request: Request) -> JSONResponse:
    if not token_ok(request, readers(request)):
        return deny("deployment")
    record = await store_of(request).get(request.path_params["id"])
    if record is None:
        return error("deployment", 404, f"deployment {request.path_params['id']!r} not found")
    metrics.API_REQUESTS.labels(endpoint="deployment", outcome="ok").inc()
    return JSONResponse(record_json(record))


def _check_target(request: Request, route: str, environment: str) -> str | None:
    """What is wrong with route/environment: the route first (`hold nope dev` is about the route), then the env."""
    routing = routing_of(request)
    try:
        found = routing.route(route)
    except KeyError:
        return f"no route {route!r} (routes: {', '.join(r.name for r in routing.routes) or 'none'})"
    try:
        found.environment(environment)
    except KeyError:
        return (f"no environment {environment!r} in route {route!r} "
                f"(environments: {', '.join(e.name for e in found.environments)})")
    return None


async def holds(request: Request) -> JSONResponse:
    if request.method == "GET":
        if not token_ok(request, readers(request)):
            return deny("holds")
        return JSONResponse({"items": await store_of(request).list_holds()})
    if not token_ok(request, writers(request)):
        return deny_writer(request, "holds")
    route, environment = request.path_params.get("route", ""), request.path_params.get("environment", "")
    problem = _check_target(request, route, environment)
    if problem:
        return error("holds", 404, problem)
    store = store_of(request)
    if request.method == "DELETE":
        released = await store.release_hold(route, environment)
        metrics.API_REQUESTS.labels(endpoint="holds", outcome="ok").inc()
        return JSONResponse({"released": released, "route": route, "environment": environment})
    body = await json_body(request, "holds")
    if isinstance(body, JSONResponse):
        return body
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return error("holds", 400, "body must be JSON with a non-empty 'reason'")
    hold = await store.set_hold(route, environment, reason.strip(), by=who(request, write=True) or "unknown",
                                note=_note(body))
    metrics.API_REQUESTS.labels(endpoint="holds", outcome="ok").inc()
    return JSONResponse(hold, status_code=201)


async def promote(request: Request) -> JSONResponse:
    """POST {"build_id": 123, "to": "staging", "route": "api-service"?, "force": false} → 202 or 409 with why."""
    if not token_ok(request, writers(request)):
        return deny_writer(request, "promotions")
    body = await json_body(request, "promotions")
    if isinstance(body, JSONResponse):
        return body
    build_id, to, route_name, force = body.get("build_id"), body.get("to"), body.get("route"), body.get("force", False)
    if not isinstance(build_id, int) or isinstance(build_id, bool) or not isinstance(to, str):
        return error("promotions", 400, "'build_id' (integer) and 'to' (environment name) are required")
    if not isinstance(force, bool):  # "false" (a string) must not force a promotion
        return error("promotions", 400, "'force' must be true or false")
    routes = [r for r in routing_of(request).routes if any(e.name == to for e in r.environments)]
    if isinstance(route_name, str):
        routes = [r for r in routes if r.name == route_name]
    store = store_of(request)
    records = [r for r in (await store.list(build_id=build_id, limit=500))[0] if r.route in {x.name for x in routes}]
    if not records:
        return error("promotions", 404, f"no deployment of build {build_id} in a route with environment {to!r}")
    if len({r.route for r in records}) > 1:
        return error("promotions", 400, "the build deployed through several routes: name one with 'route'")
    route = next(r for r in routes if r.name == records[0].route)
    prev_env = route.previous(to)
    previous = prev_env.name if prev_env else None
    source = next((r for r in records if r.environment == previous), None) or records[0]
    if source.environment == to:
        return error("promotions", 409, f"build {build_id} already has a deployment to {to}")
    if previous is not None and not force and (source.environment != previous or not is_success(source.verdict)):
        state = "not deployed" if source.environment != previous else (source.verdict or "still in flight")
        return error("promotions", 409, f"{previous} did not succeed for build {build_id} ({state}); "
                                         "pass force to override")
    env = route.environment(to)
    if env.branches is not None and source.source_branch and not force and not branch_matches(
        env.branches, source.source_branch
    ):
        return error("promotions", 409, f"build {build_id} is from {source.source_branch}, which {to} does not "
                                         f"accept ({', '.join(env.branches)}); pass force to override")
    target_id = deployment_id(source.build_key, route.name, to)
    if await store.get(target_id) is not None:
        return error("promotions", 409, f"build {build_id} already has a deployment to {to} ({target_id})")
    # The worker's job takes one `by` string: the token's name, with the client's note after it.
    note = _note(body)
    by = (who(request, write=True) or "unknown") + (f" ({note})" if note else "")
    await request.app.state.redis.enqueue_job(PROMOTE_BUILD, source.id, to, force, by,
                                              _job_id=unique_job_id("promote"),
                                              _queue_name=settings_of(request).queue_name)
    metrics.API_REQUESTS.labels(endpoint="promotions", outcome="ok").inc()
    return JSONResponse({"status": "queued", "deployment": target_id, "from": source.id}, status_code=202)


def route_json(route: Any) -> dict[str, Any]:
    """A route as `gitops-bridge wait` needs it: each environment's trigger, `after:`, branches, and whether the
    build's event starts it without a gate (`ungated`)."""
    ungated = {e.name for e in route.ungated()}
    return {"name": route.name, "environments": [
        {"name": e.name, "trigger": e.trigger, "after": e.after, "branches": e.branches, "ungated": e.name in ungated}
        for e in route.environments]}


async def get_build(request: Request) -> JSONResponse:
    """GET /api/builds/{build_id}?route=R: the routes (which environments deploy without a gate) and the build's
    deployments, so a waiter started before the build's event knows what to wait for."""
    if not token_ok(request, readers(request)):
        return deny("builds")
    try:
        build_id = int(request.path_params["build_id"])
    except ValueError:
        return error("builds", 400, "the build id must be an integer")
    routes = routing_of(request).routes
    name = request.query_params.get("route")
    if name is not None:
        routes = [r for r in routes if r.name == name]
        if not routes:
            known = ", ".join(r.name for r in routing_of(request).routes) or "none"
            return error("builds", 404, f"no route {name!r} (routes: {known})")
    records, _ = await store_of(request).list(build_id=build_id, route=name, limit=500)
    metrics.API_REQUESTS.labels(endpoint="builds", outcome="ok").inc()
    return JSONResponse({"build_id": build_id, "routes": [route_json(r) for r in routes],
                         "deployments": [record_json(r) for r in records]})


routes = [
    Route("/api/builds/{build_id}", get_build, methods=["GET"]),
    Route("/api/deployments", list_deployments, methods=["GET"]),
    Route("/api/deployments/{id}", get_deployment, methods=["GET"]),
    Route("/api/holds", holds, methods=["GET"]),
    Route("/api/holds/{route}/{environment}", holds, methods=["PUT", "DELETE"]),
    Route("/api/promotions", promote, methods=["POST"]),
]
