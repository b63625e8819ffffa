"""Every Prometheus metric of gitops-bridge, in one place. Labels take values from closed sets only."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOK_OUTCOMES = (
    "queued", "duplicate", "ignored", "unauthorized", "invalid", "too_large", "unsupported_media", "unavailable",
)
EVENT_TYPES = ("build.complete", "ms.vss-pipelines.run-state-changed-event", "other", "unknown")

# -- intake ------------------------------------------------------------------------------------------------------
WEBHOOK_REQUESTS = Counter(
    "bridge_webhook_requests_total", "Webhook requests by event type and outcome.", ["event_type", "outcome"],
    registry=REGISTRY,
)
WEBHOOK_DURATION = Histogram(
    "bridge_webhook_request_duration_seconds", "Time to answer a webhook request.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=REGISTRY,
)
ENQUEUE_FAILURES = Counter("bridge_enqueue_failures_total", "Events not queued because Redis failed.",
                           registry=REGISTRY)
QUEUE_DEPTH = Gauge("bridge_queue_depth", "Jobs waiting in the queue (sampled at scrape).", registry=REGISTRY)
GITHUB_WEBHOOKS = Counter("bridge_github_webhook_requests_total", "GitHub webhook requests by outcome.",
                          ["outcome"], registry=REGISTRY)
API_REQUESTS = Counter("bridge_api_requests_total", "Operator API requests by endpoint and outcome.",
                       ["endpoint", "outcome"], registry=REGISTRY)

# -- deployments -------------------------------------------------------------------------------------------------
DEPLOYMENTS = Counter("bridge_deployments_total", "Finished deployments by environment and verdict.",
                      ["environment", "verdict"], registry=REGISTRY)
IN_FLIGHT = Gauge("bridge_deployments_in_flight", "Deployments without a verdict yet (sampled).", registry=REGISTRY)
STAGE_SECONDS = Histogram(
    "bridge_deployment_stage_seconds", "Duration of each deployment stage.", ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800), registry=REGISTRY,
)
LEAD_TIME = Histogram(
    "bridge_lead_time_seconds", "Lead times: build_to_commit, commit_to_synced, build_to_healthy.", ["span"],
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
RECONCILED_BUILDS = Counter("bridge_reconciled_builds_total", "Builds queued by the reconciler, not the webhook.",
                            registry=REGISTRY)


async def render(redis: Redis | None, queue_name: str, key_prefix: str, timeout: float = 2.0) -> bytes:
    """Prometheus text, after sampling the gauges that live in Redis (queue depth, deployments in flight).

    When Redis is down or slow the last samples stay: a scrape never fails because Redis did.
    """
    from bridge.queue import Keys
    from bridge.records import DeploymentStore

    if redis is not None:
        try:
            async with asyncio.timeout(timeout):
                QUEUE_DEPTH.set(await redis.zcard(queue_name))
                IN_FLIGHT.set(await DeploymentStore(redis, Keys(prefix=key_prefix)).in_flight())
        except (RedisError, OSError, TimeoutError):
            pass
    return generate_latest(REGISTRY)
