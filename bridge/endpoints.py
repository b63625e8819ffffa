"""Helpers shared by the operator API's endpoints (`bridge.api`, `bridge.rollbacks`): bearer-token checks, the
caller's identity, JSON bodies, error answers (each counted in `bridge_api_requests_total`) and the record store."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse

from bridge import metrics
from bridge.auth import BearerAuth, bearer_token, matches_any
from bridge.body import BodyError, BodyLimits, read_json
from bridge.queue import Keys
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import RoutingConfig
from bridge.settings import Settings


def settings_of(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


def routing_of(request: Request) -> RoutingConfig:
    value: RoutingConfig = request.app.state.routing
    return value


def store_of(request: Request) -> DeploymentStore:
    s = settings_of(request)
    return DeploymentStore(request.app.state.redis, Keys(prefix=s.key_prefix),
                           retention_seconds=s.retention_days * 86400, queue_name=s.queue_name)


def readers(request: Request) -> list[SecretStr]:
    return [token for _, token in settings_of(request).api.named(write=False)]


def writers(request: Request) -> list[SecretStr]:
    return [token for _, token in settings_of(request).api.named(write=True)]


def token_ok(request: Request, tokens: list[SecretStr]) -> bool:
    return BearerAuth(tokens).check(request.headers)


def who(request: Request, *, write: bool) -> str | None:
    """The name of the token presented (`name:token` in the settings), None when it is not one of them.

    The identity is the server's: a client cannot claim to be someone else. Every token is compared (no early exit).
    """
    presented = bearer_token(request.headers.get("authorization"))
    if presented is None:
        return None
    found = None
    for name, token in settings_of(request).api.named(write=write):
        if matches_any(presented, BearerAuth([token]).tokens) and found is None:
            found = name
    return found


def deny(endpoint: str) -> JSONResponse:
    metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="unauthorized").inc()
    name, value = BearerAuth.challenge_header
    return JSONResponse({"error": "a valid bearer token is required"}, status_code=401, headers={name: value})


def deny_writer(request: Request, endpoint: str) -> JSONResponse:
    """401 without a valid token; 403 for a valid read token on a write endpoint (known, but not allowed)."""
    if token_ok(request, readers(request)):
        metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="forbidden").inc()
        return JSONResponse({"error": "this token may only read; holds and promotions need a write token"},
                            status_code=403)
    return deny(endpoint)


def error(endpoint: str, status: int, message: str) -> JSONResponse:
    metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
    return JSONResponse({"error": message}, status_code=status)


async def json_body(request: Request, endpoint: str) -> dict[str, Any] | JSONResponse:
    """The body as a JSON object, or the error answer (bridge.body: size, time and depth limits; never a 5xx)."""
    try:
        body = await read_json(request, BodyLimits.from_settings(settings_of(request)))
    except BodyError as exc:
        metrics.API_REQUESTS.labels(endpoint=endpoint, outcome="error").inc()
        return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=exc.headers)
    if not isinstance(body, dict):
        return error(endpoint, 400, "body must be a JSON object")
    return body


def record_json(record: DeploymentRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")
