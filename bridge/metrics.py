"""Every Prometheus metric of gitops-bridge, in one place. Labels take values from closed sets only.

`init(routing, role)` runs once per process at start (the web app factory and the worker's start-up): it exports every
labelled counter and histogram at 0 for its whole closed label set (verdicts × the routing file's environments,
webhook outcomes × event types, stages, spans, report kinds, external systems × outcomes, sweeper states), so the
first increment after a (re)start is visible to `increase()`, and it publishes `bridge_build_info`.

The gauges that live in Redis (queue, deployments by state) are sampled at each scrape by `render`.

Verdicts are counted by the process that made the verdict transition, at that transition (`workers.outcome`): a crash
between the transition and the count can lose one count, a re-run can never double it, so `sum()` over pods is right.
"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.lifecycle import ACTIVE_STATES, IN_FLIGHT_STATES, VERDICTS

if TYPE_CHECKING:
    from bridge.routing import RoutingConfig

REGISTRY = CollectorRegistry(auto_describe=True)
for _default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_info, python_gc_*
    REGISTRY.register(_default)

Role = Literal["web", "worker"]

# -- the closed label sets ---------------------------------------------------------------------------------------
WEBHOOK_OUTCOMES = (
    "queued", "duplicate", "ignored", "unauthorized", "invalid", "too_large", "unsupported_media", "unavailable",
)
EVENT_TYPES = ("build.complete", "ms.vss-pipelines.run-state-changed-event", "other", "unknown")
GITHUB_WEBHOOK_OUTCOMES = ("queued", "ignored", "pong", "unauthorized", "invalid", "too_large", "disabled",
                           "unavailable")
ARGOCD_HINT_OUTCOMES = ("queued", "ignored", "throttled", "unauthorized", "invalid", "too_large", "timeout",
                        "disabled", "unavailable")
API_ENDPOINTS = ("deployments", "deployment", "holds", "promotions", "builds", "rollbacks")
API_OUTCOMES = ("ok", "unauthorized", "forbidden", "error")
GATE_KINDS = ("gate", "check")
GATE_CALL_OUTCOMES = ("accepted", "attached", "unauthorized", "invalid", "foreign", "unavailable")
# What became of a TaskCompleted callback: landed, refused (401/403/203: recorded, not retried), expired (the job's
# deadline passed while Azure DevOps failed), error (another 4xx).
GATE_CALLBACK_OUTCOMES = ("landed", "refused", "expired", "error")
STAGES = ("queue", "write", "review", "sync", "health")
SPANS = ("build_to_commit", "commit_to_synced", "build_to_healthy", "queue_to_healthy")
GIT_PUSH_OUTCOMES = ("pushed", "rejected", "failed")
ARGOCD_OUTCOMES = ("ok", "timeout", "unavailable", "error")
ADO_OPERATIONS = ("get_build", "list_builds", "tags", "properties", "definitions", "projects", "commit_status",
                  "hooks")
CLIENT_OUTCOMES = ("ok", "auth", "not_found", "unavailable", "error")  # Azure DevOps and GitHub
REPORT_KINDS = ("tags", "properties", "commit_status", "record", "rolled_back")
ROLLBACK_CAUSES = ("manual", "automatic")

# -- intake ------------------------------------------------------------------------------------------------------
WEBHOOK_REQUESTS = Counter(
    "bridge_webhook_requests_total", "Webhook requests by event type and outcome.", ["event_type", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_DURATION = Histogram(
    "bridge_webhook_request_duration_seconds", "Time to answer a webhook request.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=REGISTRY,
)
_WEBHOOK_SERIES: dict[tuple[str, str], Any] = {}


def count_webhook(event_type: str, outcome: str, seconds: float) -> None:
    """One answered webhook: its request counter and its duration. The series are kept (both labels come from
    closed sets), so the hot path skips `labels()`' validation and lock."""
    series = _WEBHOOK_SERIES.get((event_type, outcome))
    if series is None:
        series = _WEBHOOK_SERIES[(event_type, outcome)] = WEBHOOK_REQUESTS.labels(event_type, outcome)
    series.inc()
    WEBHOOK_DURATION.observe(seconds)


ENQUEUE_FAILURES = Counter("bridge_enqueue_failures_total", "Events not queued because Redis failed.",
                           registry=REGISTRY)
QUEUE_DEPTH = Gauge("bridge_queue_depth", "Jobs ready to run now, running ones included (sampled at scrape).",
                    registry=REGISTRY)
QUEUE_DEFERRED = Gauge("bridge_queue_deferred", "Jobs scheduled for later: PR checks, Argo CD ticks, retries "
                       "(sampled at scrape).", registry=REGISTRY)
QUEUE_OLDEST_READY = Gauge("bridge_queue_oldest_ready_age_seconds",
                           "How long the oldest job ready to run has been due; 0 when none (sampled at scrape).",
                           registry=REGISTRY)
GITHUB_WEBHOOKS = Counter("bridge_github_webhook_requests_total", "GitHub webhook requests by outcome.",
                          ["outcome"], registry=REGISTRY)
ARGOCD_HINTS = Counter("bridge_argocd_hints_total", "Argo CD notifications (push hints) received, by outcome.",
                       ["outcome"], registry=REGISTRY)
API_REQUESTS = Counter("bridge_api_requests_total", "Operator API requests by endpoint and outcome.",
                       ["endpoint", "outcome"], registry=REGISTRY)
GATE_CALLS = Counter("bridge_gate_calls_total", "Pipeline gate and check calls by kind and outcome.",
                     ["kind", "outcome"], registry=REGISTRY)
GATE_CALLBACKS = Counter("bridge_gate_callbacks_total", "TaskCompleted callbacks to Azure Pipelines by result and "
                         "outcome.", ["result", "outcome"], registry=REGISTRY)

# -- deployments -------------------------------------------------------------------------------------------------
DEPLOYMENTS = Counter("bridge_deployments_total", "Finished deployments by environment and verdict.",
                      ["environment", "verdict"], registry=REGISTRY)
IN_FLIGHT = Gauge("bridge_deployments_in_flight", "Deployments without a verdict yet (sampled).", registry=REGISTRY)
IN_STATE = Gauge("bridge_deployments_in_state", "Deployments in each active state of the lifecycle (sampled).",
                 ["state"], registry=REGISTRY)
OLDEST_IN_STATE = Gauge("bridge_deployments_oldest_age_seconds",
                        "Time since the oldest deployment in each active state entered it; 0 when none (sampled).",
                        ["state"], registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "bridge_deployment_stage_seconds", "Duration of each deployment stage.", ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800), registry=REGISTRY,
)
LEAD_TIME = Histogram(
    "bridge_lead_time_seconds",
    "Lead times: build_to_commit, commit_to_synced, build_to_healthy, queue_to_healthy (DORA).", ["span"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200), registry=REGISTRY,
)

# -- git -----------------------------------------------------------------------------------------------------------
GIT_PUSHES = Counter("bridge_git_pushes_total", "Pushes to GitOps repositories by outcome.", ["outcome"],
                     registry=REGISTRY)
GIT_PUSH_RETRIES = Counter("bridge_git_push_retries_total", "Pushes retried after the remote moved.",
                           registry=REGISTRY)
GIT_COMMITS = Counter("bridge_git_commits_total", "Commits written (one may carry several bumps).",
                      registry=REGISTRY)
BUMPS_PER_COMMIT = Histogram("bridge_git_bumps_per_commit", "Bumps coalesced into one commit.",
                             buckets=(1, 2, 5, 10, 20, 50, 100, 200), registry=REGISTRY)

# -- external systems ----------------------------------------------------------------------------------------------
ARGOCD_REQUESTS = Counter("bridge_argocd_requests_total", "Argo CD API requests by outcome.", ["outcome"],
                          registry=REGISTRY)
ADO_REQUESTS = Counter("bridge_azure_devops_requests_total", "Azure DevOps API requests by operation and outcome.",
                       ["operation", "outcome"], registry=REGISTRY)
GITHUB_REQUESTS = Counter("bridge_github_requests_total", "GitHub API calls by outcome.", ["outcome"],
                          registry=REGISTRY)
REPORTS_FAILED = Counter("bridge_reports_failed_total", "Report-backs to Azure DevOps that failed for good.",
                         ["kind"], registry=REGISTRY)
SWEEP_REPAIRS = Counter("bridge_sweeper_repairs_total",
                        "Deployments whose next step was missing and that the sweeper handed back to it, by state.",
                        ["state"], registry=REGISTRY)
ROLLBACKS = Counter("bridge_rollbacks_total", "Rollbacks started, by environment and cause (manual, automatic).",
                    ["environment", "cause"], registry=REGISTRY)
TIME_TO_RESTORE = Histogram(
    "bridge_time_to_restore_seconds",
    "From an environment's first failed or timed-out verdict to its next success, a fix or a rollback (DORA time to "
    "restore).",
    ["environment"], buckets=(5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400), registry=REGISTRY,
)
ROLLBACKS_FAILED = Counter("bridge_rollbacks_failed_total",
                           "Rollbacks that did not restore the environment (it stays held; never another rollback).",
                           ["environment"], registry=REGISTRY)
MANUAL_CHANGES = Counter("bridge_manual_changes_total",
                         "Managed keys found changed by a person in Git (the environment is then held).",
                         ["environment"], registry=REGISTRY)
RECONCILED_BUILDS = Counter("bridge_reconciled_builds_total", "Builds queued by the reconciler, not the webhook.",
                            registry=REGISTRY)

# -- the process ---------------------------------------------------------------------------------------------------
BUILD_INFO = Gauge("bridge_build_info", "Always 1: the running version and the role of this process.",
                   ["version", "role"], registry=REGISTRY)


def package_version() -> str:
    try:
        return version("gitops-bridge")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def environments(routing: RoutingConfig) -> list[str]:
    return sorted({env.name for route in routing.routes for env in route.environments})


def init(routing: RoutingConfig, role: Role) -> None:
    """Export every labelled series at 0 and `bridge_build_info{role}` 1. Idempotent; a process serving both roles
    calls it twice."""
    BUILD_INFO.labels(version=package_version(), role=role).set(1)
    for env in environments(routing):
        for verdict in VERDICTS:
            DEPLOYMENTS.labels(environment=env, verdict=verdict)
    for event_type in EVENT_TYPES:
        for outcome in WEBHOOK_OUTCOMES:
            WEBHOOK_REQUESTS.labels(event_type=event_type, outcome=outcome)
    for outcome in GITHUB_WEBHOOK_OUTCOMES:
        GITHUB_WEBHOOKS.labels(outcome=outcome)
    for outcome in ARGOCD_HINT_OUTCOMES:
        ARGOCD_HINTS.labels(outcome=outcome)
    for endpoint in API_ENDPOINTS:
        for outcome in API_OUTCOMES:
            API_REQUESTS.labels(endpoint=endpoint, outcome=outcome)
    for kind in GATE_KINDS:
        for outcome in GATE_CALL_OUTCOMES:
            GATE_CALLS.labels(kind=kind, outcome=outcome)
    for result in ("succeeded", "failed"):
        for outcome in GATE_CALLBACK_OUTCOMES:
            GATE_CALLBACKS.labels(result=result, outcome=outcome)
    for stage in STAGES:
        STAGE_SECONDS.labels(stage=stage)
    for span in SPANS:
        LEAD_TIME.labels(span=span)
    for outcome in GIT_PUSH_OUTCOMES:
        GIT_PUSHES.labels(outcome=outcome)
    for outcome in ARGOCD_OUTCOMES:
        ARGOCD_REQUESTS.labels(outcome=outcome)
    for operation in ADO_OPERATIONS:
        for outcome in CLIENT_OUTCOMES:
            ADO_REQUESTS.labels(operation=operation, outcome=outcome)
    for outcome in CLIENT_OUTCOMES:
        GITHUB_REQUESTS.labels(outcome=outcome)
    for kind in REPORT_KINDS:
        REPORTS_FAILED.labels(kind=kind)
    for env in environments(routing):
        for cause in ROLLBACK_CAUSES:
            ROLLBACKS.labels(environment=env, cause=cause)
        TIME_TO_RESTORE.labels(environment=env)
        MANUAL_CHANGES.labels(environment=env)
        ROLLBACKS_FAILED.labels(environment=env)
    for state in ACTIVE_STATES:
        SWEEP_REPAIRS.labels(state=state)
        IN_STATE.labels(state=state)
        OLDEST_IN_STATE.labels(state=state)


async def sample(redis: Redis, queue_name: str, key_prefix: str) -> None:
    """Read the Redis-held gauges: the queue (arq scores jobs by when they are due, in ms; a running job stays in the
    queue until it ends) and the per-state indexes of the deployments."""
    from bridge.queue import Keys
    from bridge.records import DeploymentStore

    now = time.time()
    now_ms = int(now * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcount(queue_name, "-inf", now_ms)
        pipe.zcount(queue_name, f"({now_ms}", "+inf")
        pipe.zrangebyscore(queue_name, "-inf", now_ms, start=0, num=1, withscores=True)
        ready, deferred, oldest = await pipe.execute()
    summary = await DeploymentStore(redis, Keys(prefix=key_prefix)).state_summary()
    QUEUE_DEPTH.set(ready)
    QUEUE_DEFERRED.set(deferred)
    QUEUE_OLDEST_READY.set(max(0.0, now - oldest[0][1] / 1000) if oldest else 0.0)
    for state, (count, entered) in summary.items():
        IN_STATE.labels(state=state).set(count)
        OLDEST_IN_STATE.labels(state=state).set(max(0.0, now - entered) if entered is not None else 0.0)
    IN_FLIGHT.set(sum(summary[state][0] for state in IN_FLIGHT_STATES))


async def render(redis: Redis | None, queue_name: str, key_prefix: str, timeout: float = 2.0) -> bytes:
    """Prometheus text, after sampling the gauges that live in Redis.

    When Redis is down or slow the last samples stay: a scrape never fails because Redis did.
    """
    if redis is not None:
        try:
            async with asyncio.timeout(timeout):
                await sample(redis, queue_name, key_prefix)
        except (RedisError, OSError, TimeoutError):
            pass
    return generate_latest(REGISTRY)
