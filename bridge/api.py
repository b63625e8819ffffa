"""The operator API: deployment records, holds and promotions. Bearer tokens: read for GETs, write for changes."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge import metrics
from bridge.auth import BearerAuth, bearer_token, matches_any
from bridge.body import BodyError, BodyLimits, read_json
from bridge.lifecycle import is_success
from bridge.queue import PROMOTE_BUILD, Keys, deployment_id, unique_job_id
from bridge.records import VERDICTS, DeploymentRecord, DeploymentStore
from bridge.routing import RoutingConfig, branch_matches
from bridge.settings import Settings

NOTE_MAX = 200


def _token_ok(request: Request, tokens: list[SecretStr]) -> bool:
    return BearerAuth(tokens).check(request.headers)


def _who(request: Request, *, write: bool) -> str | None:
    """The name of the token presented (`name:token` in the settings), None when it is not one of them.

    The identity is the server's: a client cannot claim to be someone else. Every token is compared (no early exit).
    """
    presented = bearer_token(request.headers.get("authorization"))
    if presented is None:
        return None
    found = None
    for name, token in _settings(request).api.named(write=write):
        if matches_any(presented, BearerAuth([token]).tokens) and found is None:
            found = name
    return found


def _note(body: dict[str, Any] | None) -> str | None:
    """The free-text `by` a client may add (`--by`): kept as a note next to the server's identity, never as it."""
    note = (body or {}).get("by")
    return note.strip()[:NOTE_MAX] if isinstance(note, str) and note.strip() else None


def _deny(endpoint: str) -> JSONResponse:
    metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="unauthorized").inc()
    name, value = BearerAuth.challenge_header
    return JSONResponse({"error": "a valid bearer token is required"}, status_code=401, headers={name: value})


def _deny_writer(request: Request, endpoint: str) -> JSONResponse:
    """401 without a valid token; 403 for a valid read token on a write endpoint (known, but not allowed)."""
    if _token_ok(request, _readers(request)):
        metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="forbidden").inc()
        return JSONResponse({"error": "this token may only read; holds and promotions need a write token"},
                            status_code=403)
    return _deny(endpoint)


def _error(endpoint: str, status: int, message: str) -> JSONResponse:
    metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
    return JSONResponse({"error": message}, status_code=status)


def _settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


def _routing(request: Request) -> RoutingConfig:
    value: RoutingConfig = request.app.state.routing
    return value


def _store(request: Request) -> DeploymentStore:
    settings = _settings(request)
    return DeploymentStore(request.app.state.redis, Keys(prefix=settings.key_prefix),
                           retention_seconds=settings.retention_days * 86400, queue_name=settings.queue_name)


def _readers(request: Request) -> list[SecretStr]:
    return [token for _, token in _settings(request).api.named(write=False)]


def _writers(request: Request) -> list[SecretStr]:
    return [token for _, token in _settings(request).api.named(write=True)]


def record_json(record: DeploymentRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


async def list_deployments(request: Request) -> JSONResponse:
    if not _token_ok(request, _readers(request)):
        return _deny("deployments")
    q = request.query_params
    try:
        build_id = int(q["build_id"]) if q.get("build_id") else None
        limit = min(max(int(q.get("limit", "50")), 1), 500)
        offset = max(int(q.get("offset", "0")), 0)
    except ValueError:
        return _error("deployments", 400, "build_id, limit and offset must be integers")
    verdict = q.get("verdict")
    if verdict is not None and verdict not in (*VERDICTS, "in-flight"):
        return _error("deployments", 400, f"verdict must be one of {', '.join((*VERDICTS, 'in-flight'))}")
    records, next_offset = await _store(request).list(
        build_id=build_id, route=q.get("route"), environment=q.get("environment"), verdict=verdict,
        limit=limit, offset=offset,
    )
    metrics.API_REQUESTS.labels(endpoint="deployments", outcome="ok").inc()
    return JSONResponse({"items": [record_json(r) for r in records], "next_offset": next_offset})


async def get_deployment(request: Request) -> JSONResponse:
    if not _token_ok(request, _readers(request)):
        return _deny("deployment")
    record = await _store(request).get(request.path_params["id"])
    if record is None:
        return _error("deployment", 404, f"deployment {request.path_params['id']!r} not found")
    metrics.API_REQUESTS.labels(endpoint="deployment", outcome="ok").inc()
    return JSONResponse(record_json(record))


def _check_target(request: Request, route: str, environment: str) -> str | None:
    """What is wrong with route/environment: the route first (`hold nope dev` is about the route), then the env."""
    routing = _routing(request)
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


async def _json_body(request: Request, endpoint: str) -> dict[str, Any] | JSONResponse:
    """The body as a JSON object, or the error answer (bridge.body: size, time and depth limits; never a 5xx)."""
    try:
        body = await read_json(request, BodyLimits.from_settings(_settings(request)))
    except BodyError as exc:
        metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
        return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=exc.headers)
    if not isinstance(body, dict):
        return _error(endpoint, 400, "body must be a JSON object")
    return body


async def holds(request: Request) -> JSONResponse:
    if request.method == "GET":
        if not _token_ok(request, _readers(request)):
            return _deny("holds")
        return JSONResponse({"items": await _store(request).list_holds()})
    if not _token_ok(request, _writers(request)):
        return _deny_writer(request, "holds")
    route, environment = request.path_params.get("route", ""), request.path_params.get("environment", "")
    problem = _check_target(request, route, environment)
    if problem:
        return _error("holds", 404, problem)
    store = _store(request)
    if request.method == "DELETE":
        released = await store.release_hold(route, environment)
        metrics.API_REQUESTS.labels(endpoint="holds", outcome="ok").inc()
        return JSONResponse({"released": released, "route": route, "environment": environment})
    body = await _json_body(request, "holds")
    if isinstance(body, JSONResponse):
        return body
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return _error("holds", 400, "body must be JSON with a non-empty 'reason'")
    hold = await store.set_hold(route, environment, reason.strip(), by=_who(request, write=True) or "unknown",
                                note=_note(body))
    metrics.API_REQUESTS.labels(endpoint="holds", outcome="ok").inc()
    return JSONResponse(hold, status_code=201)


async def promote(request: Request) -> JSONResponse:
    """POST {"build_id": 123, "to": "staging", "route": "api-service"?, "force": false} → 202 or 409 with why."""
    if not _token_ok(request, _writers(request)):
        return _deny_writer(request, "promotions")
    body = await _json_body(request, "promotions")
    if isinstance(body, JSONResponse):
        return body
    build_id, to, route_name, force = body.get("build_id"), body.get("to"), body.get("route"), body.get("force", False)
    if not isinstance(build_id, int) or isinstance(build_id, bool) or not isinstance(to, str):
        return _error("promotions", 400, "'build_id' (integer) and 'to' (environment name) are required")
    if not isinstance(force, bool):  # "false" (a string) must not force a promotion
        return _error("promotions", 400, "'force' must be true or false")
    routes = [r for r in _routing(request).routes if any(e.name == to for e in r.environments)]
    if isinstance(route_name, str):
        routes = [r for r in routes if r.name == route_name]
    store = _store(request)
    records = [r for r in (await store.list(build_id=build_id, limit=500))[0] if r.route in {x.name for x in routes}]
    if not records:
        return _error("promotions", 404, f"no deployment of build {build_id} in a route with environment {to!r}")
    if len({r.route for r in records}) > 1:
        return _error("promotions", 400, "the build deployed through several routes: name one with 'route'")
    route = next(r for r in routes if r.name == records[0].route)
    prev_env = route.previous(to)
    previous = prev_env.name if prev_env else None
    source = next((r for r in records if r.environment == previous), None) or records[0]
    if source.environment == to:
        return _error("promotions", 409, f"build {build_id} already has a deployment to {to}")
    if previous is not None and not force and (source.environment != previous or not is_success(source.verdict)):
        state = "not deployed" if source.environment != previous else (source.verdict or "still in flight")
        return _error("promotions", 409, f"{previous} did not succeed for build {build_id} ({state}); "
                                         "pass force to override")
    env = route.environment(to)
    if env.branches is not None and source.source_branch and not force and not branch_matches(
        env.branches, source.source_branch
    ):
        return _error("promotions", 409, f"build {build_id} is from {source.source_branch}, which {to} does not "
                                         f"accept ({', '.join(env.branches)}); pass force to override")
    target_id = deployment_id(source.build_key, route.name, to)
    if await store.get(target_id) is not None:
        return _error("promotions", 409, f"build {build_id} already has a deployment to {to} ({target_id})")
    # The worker's job takes one `by` string: the token's name, with the client's note after it.
    note = _note(body)
    by = (_who(request, write=True) or "unknown") + (f" ({note})" if note else "")
    await request.app.state.redis.enqueue_job(PROMOTE_BUILD, source.id, to, force, by,
                                              _job_id=unique_job_id("promote"),
                                              _queue_name=_settings(request).queue_name)
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
    if not _token_ok(request, _readers(request)):
        return _deny("builds")
    try:
        build_id = int(request.path_params["build_id"])
    except ValueError:
        return _error("builds", 400, "the build id must be an integer")
    routes = _routing(request).routes
    name = request.query_params.get("route")
    if name is not None:
        routes = [r for r in routes if r.name == name]
        if not routes:
            known = ", ".join(r.name for r in _routing(request).routes) or "none"
            return _error("builds", 404, f"no route {name!r} (routes: {known})")
    records, _ = await _store(request).list(build_id=build_id, route=name, limit=500)
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
