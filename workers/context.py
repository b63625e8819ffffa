"""What every job finds in arq's `ctx`, made once in `workers.main.startup` and closed in `shutdown`.

    ctx["settings"]  bridge.settings.Settings
    ctx["routing"]   bridge.routing.RoutingConfig
    ctx["keys"]      bridge.queue.Keys
    ctx["store"]     bridge.records.DeploymentStore
    ctx["redis"]     arq.connections.ArqRedis (arq puts it there)
    ctx["argocd"]    workers.argocd.ArgoCDClient | None      (None without BRIDGE_ARGOCD__URL)
    ctx["ado"]       workers.azure_devops.AzureDevOpsClient  (no-op reports without a token)
    ctx["github"]    workers.github.GitHubClient | None      (None without BRIDGE_GITHUB__TOKEN)
    ctx["repos"]     workers.gitrepo.RepoCache
"""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis

from bridge.queue import Keys
from bridge.records import DeploymentStore
from bridge.routing import RoutingConfig
from bridge.settings import Settings

Ctx = dict[str, Any]


def settings(ctx: Ctx) -> Settings:
    value: Settings = ctx["settings"]
    return value


def routing(ctx: Ctx) -> RoutingConfig:
    value: RoutingConfig = ctx["routing"]
    return value


def store(ctx: Ctx) -> DeploymentStore:
    value: DeploymentStore = ctx["store"]
    return value


def keys(ctx: Ctx) -> Keys:
    value: Keys = ctx["keys"]
    return value


async def enqueue(ctx: Ctx, function: str, *args: Any, job_id: str, defer_by: float | None = None) -> bool:
    """Enqueue a job by name on our queue; False when a job with that id exists already (idempotent)."""
    redis: ArqRedis = ctx["redis"]
    job = await redis.enqueue_job(
        function, *args, _job_id=job_id, _queue_name=settings(ctx).queue_name, _defer_by=defer_by
    )
    return job is not None
