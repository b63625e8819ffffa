"""`POST /webhooks/azure-devops/gate` and `/check`: a pipeline stage (agentless `InvokeRESTAPI@1` in callback mode)
or an environment check that waits for a deployment's verdict.

authenticate (the webhook credentials) → plan headers → the PlanUrl is a configured organization (the callback only
ever goes to a configured URL) → body → route and environment → store the gate (coordinates without the token; the
token in its own key with a TTL) and queue its job in one Redis transaction → 200. No network call here: the worker
authorises the call (the build belongs to the plan, to the route's project/definition/branch) before it deploys.

    200  accepted | attached (the same gate again: an Azure DevOps retry)
    400  missing or malformed plan headers, bad body, unknown route/environment (the reason names what is wrong)
    401  no accepted credential
    403  PlanUrl is not a configured organization
    503  Redis unavailable
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge import metrics, organizations
from bridge.body import BodyError, read_json
from bridge.queue import GATE_DEPLOYMENT, Keys, add_job, deployment_id
from bridge.routing import Route as RoutingRoute
from bridge.routing import RoutingConfig

log = logging.getLogger("bridge.gate")

HUBS = {"gate": ("build", "release"), "check": ("checks",)}
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DEFAULT_TIMEOUT_MINUTES = 60
MAX_TIMEOUT_MINUTES = 60 * 24 * 30
REDIS_TIMEOUT_S = 2.5  # ADO asks for an answer within 3 s


@dataclass(frozen=True)
class Gate:
    """One gate call: where to call back (never the token), what it waits for, and until when."""

    kind: str  # gate | check
    organization: str
    project_id: str
    hub: str
    plan_id: str
    job_id: str
    timeline_id: str | None
    task_id: str
    build_id: int
    route: str
    environment: str
    timeout_minutes: int
    received: float

    @property
    def build_key(self) -> str:
        return f"{self.organization}:{self.project_id.lower()}:{self.build_id}"

    @property
    def deployment(self) -> str:
        return deployment_id(self.build_key, self.route, self.environment)

    @property
    def id(self) -> str:
        """The deployment and the task instance: a retried call is the same gate, another stage run a new one."""
        digest = hashlib.sha1(f"{self.plan_id}:{self.job_id}:{self.task_id}".lower().encode()).hexdigest()[:12]
        return f"{self.deployment}:{self.kind}:{digest}"

    @property
    def job_deadline(self) -> float:
        """When Azure DevOps gives up on the job (its timeoutInMinutes)."""
        return self.received + self.timeout_minutes * 60

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gate:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def gate_key(keys: Keys, gate_id: str) -> str:
    return f"{keys.prefix}:gate:{gate_id}"


def token_key(keys: Keys, gate_id: str) -> str:
    return f"{keys.prefix}:gate-token:{gate_id}"


def deployment_gates_key(keys: Keys, deployment: str) -> str:
    return f"{keys.prefix}:gates:{deployment}"


def watch_job_id(gate_id: str) -> str:
    return f"gate:{gate_id}"


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _int(value: Any, name: str, *, default: int | None = None, low: int = 1, high: int = 2**31 - 1) -> int:
    """Pipeline macros arrive as strings: "42" and 42 are both fine; "$(Build.BuildId)" (not substituted) is not."""
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise Refused(400, f"'{name}' must be a whole number (got {str(value)[:40]!r})")
    number = int(str(value).strip())
    if not low <= number <= high:
        raise Refused(400, f"'{name}' must be between {low} and {high}")
    return number


def choose_route(routing: RoutingConfig, name: Any, environment: str) -> RoutingRoute:
    """The named route, else the only route with that environment; the reason names routes and environments."""
    if name is not None:
        if not isinstance(name, str):
            raise Refused(400, "'route' must be a route name")
        try:
            route = routing.route(name)
        except KeyError:
            raise Refused(400, f"no route {name!r} (routes: {', '.join(r.name for r in routing.routes)})") from None
    else:
        having = [r for r in routing.routes if any(e.name == environment for e in r.environments)]
        if len(having) != 1:
            which = ", ".join(r.name for r in having) or "none"
            raise Refused(400, f"name the route in the body ('route'): routes with environment {environment!r}: "
                               f"{which}")
        route = having[0]
    if not any(e.name == environment for e in route.environments):
        raise Refused(400, f"route {route.name!r} has no environment {environment!r} (environments: "
                           f"{', '.join(e.name for e in route.environments)})")
    return route


def parse_call(kind: str, headers: Any, body: Any, routing: RoutingConfig,
               orgs: list[organizations.Organization], now: float) -> tuple[Gate, str]:
    """The gate and its AuthToken, or Refused. Pure: headers and body in, no I/O."""
    missing = [h for h in ("PlanUrl", "ProjectId", "HubName", "PlanId", "JobId", "TaskInstanceId", "AuthToken")
               if not headers.get(h)]
    if missing:
        raise Refused(400, f"missing header(s) {', '.join(missing)}: use InvokeRESTAPI@1 with waitForCompletion "
                           "'true' (its default headers)")
    for name in ("ProjectId", "PlanId", "JobId", "TaskInstanceId") + (("TimelineId",) if headers.get("TimelineId")
                                                                      else ()):
        if not GUID.match(headers[name]):
            raise Refused(400, f"header {name} must be a GUID")
    hub = headers["HubName"].lower()
    if hub not in HUBS[kind]:
        raise Refused(400, f"header HubName must be {' or '.join(HUBS[kind])} for this endpoint")
    org = organizations.match(orgs, headers["PlanUrl"], None)
    if org is None:
        raise Refused(403, "PlanUrl is not a configured Azure DevOps organization; the bridge calls back only to "
                           "configured organizations")
    if not isinstance(body, dict):
        raise Refused(400, "body must be a JSON object: {\"buildId\": \"$(Build.BuildId)\", \"environment\": \"dev\"}")
    environment = body.get("environment")
    if not isinstance(environment, str) or not environment:
        raise Refused(400, "'environment' (an environment name of the route) is required")
    build_id = _int(body.get("buildId"), "buildId")
    timeout = _int(body.get("timeoutMinutes"), "timeoutMinutes", default=DEFAULT_TIMEOUT_MINUTES,
                   high=MAX_TIMEOUT_MINUTES)
    route = choose_route(routing, body.get("route"), environment)
    if kind == "check" and route.environment(environment).after is None:
        raise Refused(400, f"environment {environment!r} of route {route.name!r} has no 'after:': a check passes when "
                           f"the build succeeded in the environment before it (environments: "
                           f"{', '.join(e.name for e in route.environments)})")
    gate = Gate(kind=kind, organization=org.name, project_id=headers["ProjectId"].lower(), hub=hub,
                plan_id=headers["PlanId"].lower(), job_id=headers["JobId"].lower(),
                timeline_id=(headers.get("TimelineId") or "").lower() or None,
                task_id=headers["TaskInstanceId"].lower(), build_id=build_id, route=route.name,
                environment=environment, timeout_minutes=timeout, received=now)
    return gate, headers["AuthToken"]


async def store_gate(redis: Any, keys: Keys, queue_name: str, gate: Gate, token: str, retention_s: float) -> bool:
    """Store the gate (durably, without the token), the token (until the job's deadline), and queue the gate's job,
    in one transaction. False when this gate was stored before (a retried call): nothing changes."""
    key = gate_key(keys, gate.id)
    if await redis.exists(key):
        return False
    ttl = max(int(gate.job_deadline - time.time()) + 600, 60)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, orjson.dumps(gate.to_json()), ex=max(int(retention_s), ttl), nx=True)
        pipe.set(token_key(keys, gate.id), token, ex=ttl)
        add_job(pipe, queue_name, GATE_DEPLOYMENT, (gate.id,), f"gate-start:{gate.id}")
        stored = (await pipe.execute())[0]
    return bool(stored)


def _answer(status: int, content: dict[str, Any]) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


async def _handle(kind: str, request: Request) -> Response:
    from bridge.body import BodyLimits
    from bridge.webhook import Intake

    intake: Intake = request.app.state.intake
    if not intake.auth.check(request.headers):
        headers, challenge = intake.auth.challenge
        metrics.GATE_CALLS.labels(kind=kind, outcome="unauthorized").inc()
        response = _answer(401, {"status": "rejected", "reason": challenge})
        for name, value in headers:
            response.headers.append(name, value)
        return response
    try:
        body = await read_json(request, BodyLimits.from_settings(intake.settings))
    except BodyError as exc:
        metrics.GATE_CALLS.labels(kind=kind, outcome="invalid").inc()
        return _answer(exc.status, {"status": "rejected", "reason": exc.reason})
    try:
        gate, token = parse_call(kind, request.headers, body, intake.routing, intake.organizations, time.time())
    except Refused as exc:
        outcome = "foreign" if exc.status == 403 else "invalid"
        metrics.GATE_CALLS.labels(kind=kind, outcome=outcome).inc()
        log.info("pipeline %s refused: %s", kind, exc.reason, extra={"status": exc.status})
        return _answer(exc.status, {"status": "rejected", "reason": exc.reason})
    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            new = await store_gate(request.app.state.redis, intake.keys, intake.queue_name, gate, token,
                                   intake.retention_s)
    except (RedisError, OSError, TimeoutError) as exc:
        metrics.GATE_CALLS.labels(kind=kind, outcome="unavailable").inc()
        log.warning("pipeline %s: store failed: %s", kind, type(exc).__name__)
        return _answer(503, {"status": "unavailable", "reason": "queue unavailable, retry later"})
    status = "accepted" if new else "attached"
    metrics.GATE_CALLS.labels(kind=kind, outcome=status).inc()
    log.info("pipeline %s %s: build %s %s/%s", kind, status, gate.build_id, gate.route, gate.environment,
             extra={"deployment": gate.deployment, "build_id": gate.build_id})
    return _answer(200, {"status": status, "deployment": gate.deployment, "route": gate.route,
                         "environment": gate.environment})


async def gate_endpoint(request: Request) -> Response:
    return await _handle("gate", request)


async def check_endpoint(request: Request) -> Response:
    return await _handle("check", request)


routes = [
    Route("/webhooks/azure-devops/gate", gate_endpoint, methods=["POST"]),
    Route("/webhooks/azure-devops/check", check_endpoint, methods=["POST"]),
]
