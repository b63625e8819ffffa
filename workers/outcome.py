"""The end of every deployment: set the verdict once and queue its final report in the same transaction, count it,
and (from the final report) start what follows it. See `bridge.lifecycle` for the states."""

from __future__ import annotations

import functools
import logging
from datetime import datetime

from bridge import metrics
from bridge.lifecycle import is_success
from bridge.queue import PROMOTE_BUILD, REPORT_DEPLOYMENT, report_job_id
from bridge.records import DeploymentRecord, Effect, JobSpec, Restored, Verdict
from workers import faults
from workers.context import Ctx, enqueue, routing, settings, store

log = logging.getLogger("gitops_bridge.outcome")

FINAL = "final"
FAILURES = ("failed", "timed-out")  # the verdicts that start an environment's restore clock


@functools.lru_cache(maxsize=1024)  # a batch of verdicts shares its stamps' strings (millisecond resolution)
def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def _span(start: str | None, end: str | None) -> float | None:
    a, b = _parse(start), _parse(end)
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds())


STAGES = (
    # (stage, from stamp(s), to stamp): observed when both exist; the first present "from" stamp counts
    ("queue", ("received",), "started"),
    ("write", ("started",), "pushed"),
    ("review", ("pr_opened",), "merged"),
    ("sync", ("merged", "pushed"), "synced"),
    ("health", ("synced",), "healthy"),
)


def observe_lead_times(record: DeploymentRecord) -> None:
    t = record.timeline
    for stage, starts, end in STAGES:
        began = next((t[name] for name in starts if name in t), None)
        seconds = _span(began, t.get(end))
        if seconds is not None:
            metrics.STAGE_SECONDS.labels(stage=stage).observe(seconds)
    build_done = record.build_finished or t.get("received")
    spans = [("commit_to_synced", t.get("committed") or t.get("merged"), t.get("synced"))]
    if record.kind != "rollback":  # a rollback carries the restored build's times: no lead time for a change
        spans += [
            ("build_to_commit", build_done, t.get("committed") or t.get("merged")),
            ("build_to_healthy", build_done, t.get("healthy")),
            # DORA's lead time for changes: from the build's queue time (no look-up gives the source commit's time)
            ("queue_to_healthy", record.build_queued, t.get("healthy")),
        ]
    for span, span_start, span_end in spans:
        seconds = _span(span_start, span_end)
        if seconds is not None:
            metrics.LEAD_TIME.labels(span=span).observe(seconds)


def observe_restore(record: DeploymentRecord, failing_since: float) -> None:
    """DORA time to restore: from the environment's first failure to this success (a fix or a rollback). Called only
    by the process whose transaction set the success verdict and stopped the clock, so at most once per restore."""
    end = _parse(record.timeline.get("finished"))
    if end is not None:
        seconds = max(0.0, end.timestamp() - failing_since)
        metrics.TIME_TO_RESTORE.labels(environment=record.environment).observe(seconds)


def final_report(deployment_id: str) -> JobSpec:
    return JobSpec(REPORT_DEPLOYMENT, (deployment_id, FINAL), report_job_id(deployment_id, FINAL))


def reports_on(ctx: Ctx) -> bool:
    """Report-back is configured: reports on and an Azure DevOps client with a token."""
    ado = ctx.get("ado")
    return bool(settings(ctx).azure_devops.report and ado is not None and getattr(ado, "enabled", False))


async def report(ctx: Ctx, deployment_id: str, phase: str) -> None:
    """Queue a report-back to the build; one job per (deployment, phase) at a time, however often this is called.
    Without report-back only the final phase is queued: it ends the deployment's life (workers.report.complete),
    while a `started` report would have nothing to do."""
    if phase != FINAL and not reports_on(ctx):
        return
    await enqueue(ctx, REPORT_DEPLOYMENT, deployment_id, phase, job_id=report_job_id(deployment_id, phase))


async def finish_deployment(ctx: Ctx, deployment_id: str, verdict: Verdict, reason: str, **changes: object) -> bool:
    """Set the verdict (once) and queue the final report in one transaction; count the verdict here, in the process
    that made the transition (a crash right after can lose the count, a re-run can never double it).

    Returns False when the deployment already had a verdict: a re-run job then does nothing more.
    """
    then: list[Effect] = [final_report(deployment_id)]
    if verdict in FAILURES:  # `on_failure: rollback`: the rollback job rides with the verdict
        from workers.rollback import rollback_on_failure

        reason, then = await rollback_on_failure(ctx, deployment_id, verdict, reason, then)
    before = await store(ctx).get(deployment_id)
    restored = None
    if before is not None and before.verdict is None:
        if verdict in FAILURES:  # the environment's restore clock starts (unless it runs already)
            then.append(store(ctx).failing_effect(before))
        if is_success(verdict):  # "last succeeded" moves with the verdict (rollbacks read it); the clock stops
            then.append(store(ctx).last_succeeded_effect(before.model_copy(update=changes)))
            restored = store(ctx).restored_effect(before)
            then.append(restored)
    record = await store(ctx).finish(deployment_id, verdict, reason, then=then, **changes)
    if record is None:
        return False
    metrics.DEPLOYMENTS.labels(environment=record.environment, verdict=verdict).inc()
    if restored is not None and restored.since is not None:
        observe_restore(record, restored.since)
    if record.kind == "rollback":
        from workers.rollback import rollback_finished

        await rollback_finished(ctx, record)
    observe_lead_times(record)
    log.info("deployment %s: %s (%s)", deployment_id, verdict, reason,
             extra={"deployment": deployment_id, "verdict": verdict})
    faults.reached("after-verdict")
    return True


async def finish_deployments(ctx: Ctx, verdict: Verdict, reasons: dict[str, str], *, stamp: tuple[str, ...] = (),
                             batch: int = 200) -> int:
    """`finish_deployment` for many deployments with one verdict: one transaction per `batch` records instead of
    several round trips each (a watcher deciding a thousand waiters at once). Failed and timed-out go one by one:
    `on_failure: rollback` decides per deployment. Returns how many this call decided."""
    if verdict in FAILURES:
        decided = 0
        for dep, reason in reasons.items():
            if stamp:
                await store(ctx).stamp_many([dep], stamp)
            decided += await finish_deployment(ctx, dep, verdict, reason)
        return decided
    st = store(ctx)
    restored: dict[str, Restored] = {}  # the restore clock each record's transaction stopped (the last try's)

    def then(record: DeploymentRecord) -> list[Effect]:
        effects: list[Effect] = [final_report(record.id)]
        if is_success(verdict):
            restored[record.id] = st.restored_effect(record)
            effects += [st.last_succeeded_effect(record), restored[record.id]]
        return effects

    ids = list(reasons)
    decided = 0
    for start in range(0, len(ids), batch):
        chunk = {dep: reasons[dep] for dep in ids[start:start + batch]}
        for record in await st.finish_many(chunk, verdict, stamp=stamp, then=then):
            decided += 1
            metrics.DEPLOYMENTS.labels(environment=record.environment, verdict=verdict).inc()
            clock = restored.get(record.id)
            if clock is not None and clock.since is not None:
                observe_restore(record, clock.since)
            if record.kind == "rollback":
                from workers.rollback import rollback_finished

                await rollback_finished(ctx, record)
            observe_lead_times(record)
            log.info("deployment %s: %s (%s)", record.id, verdict, record.reason,
                     extra={"deployment": record.id, "verdict": verdict})
        if decided:
            faults.reached("after-verdict")
    return decided


async def start_followers(ctx: Ctx, record: DeploymentRecord) -> None:
    """Environments declaring `after: <this environment>` start once this one succeeded (or was pushed).
    Idempotent: one promote job per (deployment, environment), and a promotion that finds its record does nothing."""
    if not is_success(record.verdict) or record.kind == "rollback":  # a rollback restores one environment only
        return
    try:
        route = routing(ctx).route(record.route)
    except KeyError:
        return
    for env in route.environments:
        if env.after == record.environment and env.trigger != "gate":  # a gated one waits for its gate call
            await enqueue(
                ctx, PROMOTE_BUILD, record.id, env.name, False, "after:" + record.environment,
                job_id=f"promote:{record.id}:{env.name}",
            )
