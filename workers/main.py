"""The arq worker: job registry, start-up and shutdown of the shared clients, health and metrics for probes."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from arq import Worker, cron
from arq.worker import func
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import metrics, organizations
from bridge.config_check import check_startup
from bridge.queue import (
    ADVANCE_DEPLOYMENT,
    CHECK_PULL_REQUEST,
    FLUSH_REPOSITORY,
    GATE_DEPLOYMENT,
    OPEN_PULL_REQUEST,
    PROCESS_BUILD,
    PROMOTE_BUILD,
    RECONCILE_BUILDS,
    REPORT_DEPLOYMENT,
    ROLLBACK_AFTER_FAILURE,
    SWEEP_DEPLOYMENTS,
    VERIFY_DEPLOYMENT,
    WATCH_APPLICATION,
    WATCH_GATE,
    Keys,
    open_redis,
)
from bridge.records import DeploymentStore
from bridge.routing import RoutingConfig
from bridge.settings import Settings
from workers.context import Ctx

log = logging.getLogger("gitops_bridge.worker")


# Step jobs keep no result: their ids are free again once they finish, so any worker or the sweeper can hand a
# deployment to its step again (bridge.lifecycle). Tries are unbounded in practice: transient errors back off, and only
# a deployment's deadline ends its steps.
STEP_TRIES = 100_000


def job_functions(settings: Settings) -> list[Any]:
    from workers.deploy import process_build, promote_build
    from workers.gate import gate_deployment, watch_gate
    from workers.lifecycle import advance_deployment
    from workers.pullrequest import check_pull_request, open_pull_request
    from workers.report import report_deployment
    from workers.rollback import rollback_after_failure
    from workers.runtime import step
    from workers.verify import verify_deployment, watch_application
    from workers.writer import flush_repository

    git_timeout = settings.git.timeout_seconds * (settings.git.push_attempts + 2)
    return [
        # No result either: the intake's `seen` key (written with the job, kept for the retention period) refuses a
        # second copy of a build (bridge.queue.enqueue_build); a result would only repeat the event for an hour.
        func(step(process_build), name=PROCESS_BUILD, max_tries=STEP_TRIES, keep_result=0),
        func(step(advance_deployment), name=ADVANCE_DEPLOYMENT, max_tries=STEP_TRIES, keep_result=0),
        func(step(flush_repository), name=FLUSH_REPOSITORY, max_tries=STEP_TRIES, timeout=git_timeout, keep_result=0),
        func(step(open_pull_request), name=OPEN_PULL_REQUEST, max_tries=STEP_TRIES, timeout=git_timeout,
             keep_result=0),
        func(step(check_pull_request), name=CHECK_PULL_REQUEST, max_tries=STEP_TRIES, keep_result=0),
        func(step(verify_deployment), name=VERIFY_DEPLOYMENT, max_tries=STEP_TRIES, keep_result=0),
        func(step(watch_application), name=WATCH_APPLICATION, max_tries=STEP_TRIES, keep_result=0),
        func(step(report_deployment), name=REPORT_DEPLOYMENT, max_tries=STEP_TRIES, keep_result=0),
        func(step(promote_build), name=PROMOTE_BUILD, max_tries=STEP_TRIES, keep_result=86400),
        func(step(gate_deployment), name=GATE_DEPLOYMENT, max_tries=STEP_TRIES, keep_result=0),
        func(step(watch_gate), name=WATCH_GATE, max_tries=STEP_TRIES, keep_result=0),
        func(step(rollback_after_failure), name=ROLLBACK_AFTER_FAILURE, max_tries=STEP_TRIES, keep_result=86400),
    ]


def cron_jobs(settings: Settings) -> list[Any]:
    jobs = []
    if settings.sweep_seconds > 0:
        from workers.lifecycle import sweep_deployments
        from workers.runtime import step

        every = max(1, int(settings.sweep_seconds))
        seconds = set(range(0, 60, every)) if every < 60 else {0}
        jobs.append(cron(step(sweep_deployments), name=SWEEP_DEPLOYMENTS, second=seconds, run_at_startup=True,
                         timeout=60, keep_result=0, max_tries=1))
    ado = settings.azure_devops
    if not any(o.has_token for o in organizations.configured(ado)) or ado.reconcile_seconds <= 0:
        return jobs
    from workers.reconcile import reconcile_builds

    minutes = max(1, int(ado.reconcile_seconds // 60))
    jobs.append(cron(reconcile_builds, name=RECONCILE_BUILDS, minute=set(range(0, 60, minutes)), run_at_startup=True,
                     timeout=300))
    return jobs


async def make_context(settings: Settings, routing: RoutingConfig, ctx: Ctx) -> None:
    """Create the shared clients; `ctx["redis"]` is arq's pool."""
    from workers.argocd import ArgoCDClient
    from workers.azure_devops import AzureDevOpsClient
    from workers.github import GitHubClient
    from workers.gitrepo import RepoCache

    keys = Keys(prefix=settings.key_prefix)
    ctx["settings"] = settings
    ctx["routing"] = routing
    metrics.init(routing, "worker")
    ctx["keys"] = keys
    ctx["store"] = DeploymentStore(ctx["redis"], keys, retention_seconds=settings.retention_days * 86400,
                                   queue_name=settings.queue_name)
    repos = RepoCache.from_settings(settings, routing)
    ctx["repos"] = repos
    ctx["is_ancestor"] = repos.is_ancestor
    ctx["argocd"] = ArgoCDClient.from_settings(settings)
    ctx["ado"] = AzureDevOpsClient.from_settings(settings)
    ctx["github"] = GitHubClient.from_settings(settings)


async def close_context(ctx: Ctx) -> None:
    for name in ("argocd", "ado", "github"):
        client = ctx.get(name)
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()


def build_worker(settings: Settings, routing: RoutingConfig, *, burst: bool = False,
                 redis_url: str | None = None) -> Worker:
    from workers import faults
    from workers.runtime import BridgeWorker

    check_startup(settings, routing)  # ConfigError: e.g. an Argo CD app named without an Argo CD URL
    faults.configure(settings.faults.crash_at, settings.faults.marker_dir)

    async def startup(ctx: Ctx) -> None:
        await make_context(settings, routing, ctx)
        from workers.verify import resume_watches

        migrated = await ctx["store"].migrate_legacy_in_flight()
        if migrated:
            log.info("indexed %d in-flight deployment(s) written before the state machine", migrated)
        await resume_watches(ctx)
        log.info("worker ready: %d routes, queue %s", len(routing.routes), settings.queue_name)

    async def shutdown(ctx: Ctx) -> None:
        await close_context(ctx)

    return BridgeWorker(
        lease_seconds=settings.job_lease_seconds,
        functions=job_functions(settings),
        cron_jobs=cron_jobs(settings),
        queue_name=settings.queue_name,
        redis_pool=open_redis(settings, redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        burst=burst,
        max_jobs=settings.worker_max_jobs,
        handle_signals=False,
        poll_delay=0.05,
        max_tries=STEP_TRIES,
        health_check_interval=30,
        health_check_key=f"{settings.key_prefix}:worker:health",
        keep_result=3600,
    )


LIVENESS_STALL_S = 60.0


def health_app(worker: Worker, settings: Settings) -> Starlette:
    """`/healthz` (liveness): the worker's loop is turning — also while Redis is down, so a failover does not get
    every worker restarted. `/readyz` (readiness): connected to Redis. `/metrics` for Prometheus."""

    async def healthz(request: Request) -> Response:
        stalled = time.monotonic() - getattr(worker, "last_loop", time.monotonic())
        main = worker.main_task
        if (main is not None and main.done()) or stalled > LIVENESS_STALL_S:
            return JSONResponse({"status": "unhealthy", "reason": "worker loop stopped"}, status_code=503)
        return JSONResponse({"status": "ok", "connected": getattr(worker, "connected", None),
                             "jobs_complete": worker.jobs_complete, "jobs_failed": worker.jobs_failed,
                             "jobs_retried": worker.jobs_retried})

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.wait_for(worker.pool.ping(), timeout=2)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return JSONResponse({"status": "not ready", "reason": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        body = await metrics.render(worker._pool, settings.queue_name, settings.key_prefix)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", metrics_endpoint)])


async def run_worker(settings: Settings, routing: RoutingConfig, *, redis_url: str | None = None,
                     serve_health: bool = True) -> None:
    """Run the worker until cancelled (SIGTERM/SIGINT are handled by the caller's loop)."""
    import uvicorn

    worker = build_worker(settings, routing, redis_url=redis_url)
    tasks = [asyncio.ensure_future(worker.async_run())]
    server = None
    if serve_health:
        config = uvicorn.Config(health_app(worker, settings), host=settings.host, port=settings.worker_metrics_port,
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        tasks.append(asyncio.ensure_future(server.serve()))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
        raise RuntimeError("the worker stopped by itself")  # only a signal (cancellation) may end it
    finally:
        if server is not None:
            server.should_exit = True
        try:
            await worker.close()
        finally:  # the health server stops even when closing the worker failed
            tasks[0].cancel()
            # Let uvicorn shut down by itself: cancelled mid-serve, its socket stays open and keeps answering.
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
