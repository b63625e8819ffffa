"""The worker side of a rollback (`bridge.rollbacks` plans and stores it): its first step, and what its report adds.

A rollback is a deployment of kind `rollback` that walks the ordinary states. It differs in three places only:

* `queued → writing` keeps the tag the plan chose (the restored build's) and ignores the hold (the rollback set it);
* the writer lets it write an older tag than the last setter's (`workers.ordering`, `Candidate.rollback`) and adds a
  `Rollback-Of:` trailer;
* its final report also adds `rolled-back-<env>` to the build it undid (ledger sink `rolled_back`), the one
  exception to "one final report per build and environment".

Automatic rollback (`on_failure: rollback`): the verdict `failed` (or `timed-out` with `rollback_on_timeout`) of a
build that wrote a commit names the build it will be rolled back to in its reason ("rolled back to build N") and
queues `rollback_after_failure` in the same transaction. That job starts the rollback under a fixed id (a re-run finds
it), forced past newer deployments (the hold it sets stops them). A rollback never triggers another: a failed one
leaves the environment held (cause `rollback-failed`) and counts in bridge_rollbacks_failed_total (the alert).
"""

from __future__ import annotations

import logging
from typing import Any

from bridge import metrics
from bridge.lifecycle import is_success
from bridge.queue import ROLLBACK_AFTER_FAILURE
from bridge.records import DeploymentRecord, Effect, JobSpec
from bridge.rollbacks import RollbackRefused, launch_rollback, plan_rollback
from bridge.routing import Environment
from workers.context import Ctx, routing, store
from workers.outcome import report

log = logging.getLogger("gitops_bridge.rollback")

ROLLED_BACK_TAG = "rolled-back-{env}"


def is_rollback(record: DeploymentRecord) -> bool:
    return record.kind == "rollback"


def rolled_back_build(record: DeploymentRecord) -> int | None:
    """The build id a rollback undid (None for builds, or when nothing was known to run)."""
    if not is_rollback(record):
        return None
    value = (record.details.get("rollback_of") or {}).get("build_id")
    return value if isinstance(value, int) else None


async def start_rollback(ctx: Ctx, record: DeploymentRecord, env: Environment) -> bool:
    """`queued → writing` for a rollback: same hand-over as a build, no hold check, the planned tag."""
    from workers.deploy import hand_over

    if record.state != "queued":
        return False
    await report(ctx, record.id, "started")
    moved = await store(ctx).advance(record.id, ("queued",), "writing", stamp=("started",),
                                     then=hand_over(ctx, record, env))
    if moved is not None:
        log.info("rollback %s: writing %s to %s/%s", record.id, record.tag, record.route, record.environment,
                 extra={"deployment": record.id})
    return moved is not None


def rolled_back_tag(record: DeploymentRecord) -> tuple[int, str] | None:
    """(build id, tag) to add to the undone build once the rollback's commit exists; None otherwise."""
    build = rolled_back_build(record)
    if build is None or record.verdict is None or not record.commit_sha or build == record.build_id:
        return None
    return build, ROLLED_BACK_TAG.format(env=record.environment)


# -- automatic rollback ------------------------------------------------------------------------------------------

def _policy(ctx: Ctx, record: DeploymentRecord) -> Environment | None:
    try:
        env = routing(ctx).route(record.route).environment(record.environment)
    except KeyError:
        return None
    return env if env.on_failure == "rollback" else None


async def rollback_on_failure(ctx: Ctx, deployment_id: str, verdict: str, reason: str,
                              then: list[Effect]) -> tuple[str, list[Effect]]:
    """For `finish_deployment`: the reason and outbox of a `failed`/`timed-out` verdict under `on_failure: rollback`
    (unchanged when the policy does not apply: another kind, nothing written, nothing succeeded before)."""
    record = await store(ctx).get(deployment_id)
    if record is None or record.kind != "build" or record.verdict is not None or not record.commit_sha:
        return reason, then
    env = _policy(ctx, record)
    if env is None or (verdict == "timed-out" and not env.rollback_on_timeout):
        return reason, then
    history = await store(ctx).last_succeeded(record.route, record.environment)
    entry = next((h for h in history if h.get("tag") and h["tag"] != record.tag), None)
    if entry is None:
        return f"{reason}; not rolled back: nothing succeeded in {record.environment} before", then
    to_build = int(entry["build_id"])
    job = JobSpec(ROLLBACK_AFTER_FAILURE, (deployment_id, to_build), f"auto-rollback:{deployment_id}")
    return f"{reason}; rolled back to build {to_build}", [*then, job]


def auto_rollback_id(deployment_id: str) -> str:
    return f"rollback-auto-{deployment_id}"


async def rollback_after_failure(ctx: Ctx, deployment_id: str, to_build: int) -> dict[str, Any]:
    """arq job (queued with the failed verdict): start the automatic rollback. Idempotent by its fixed id."""
    failed = await store(ctx).get(deployment_id)
    if failed is None or failed.kind != "build":
        return {"status": "gone"}
    rollback_id = auto_rollback_id(deployment_id)
    if await store(ctx).get(rollback_id) is not None:
        return {"status": "exists", "rollback": rollback_id}
    try:
        plan = await plan_rollback(store(ctx), routing(ctx), failed.route, failed.environment, to_build=to_build,
                                   force=True, reason=f"build {failed.build_id} {failed.verdict}: {failed.reason}",
                                   by="gitops-bridge", cause="automatic", rollback_id=rollback_id)
        await launch_rollback(store(ctx), plan)
    except RollbackRefused as refused:
        if await store(ctx).get(rollback_id) is not None:
            return {"status": "exists", "rollback": rollback_id}
        log.warning("deployment %s: automatic rollback refused: %s", deployment_id, refused.reason,
                    extra={"deployment": deployment_id})
        await store(ctx).set_hold(failed.route, failed.environment, f"automatic rollback refused: {refused.reason}",
                                  by="gitops-bridge", cause="rollback-failed")
        metrics.ROLLBACKS_FAILED.labels(environment=failed.environment).inc()
        return {"status": "refused", "reason": refused.reason}
    log.warning("deployment %s: %s, rolling back to build %s (%s)", deployment_id, failed.verdict, to_build,
                rollback_id, extra={"deployment": deployment_id})
    return {"status": "started", "rollback": rollback_id}


async def rollback_finished(ctx: Ctx, record: DeploymentRecord) -> None:
    """After a rollback's verdict: nothing more when it succeeded (its time to restore was observed with the verdict,
    as for any success, by `workers.outcome`); otherwise the hold stays, says so, and alerts
    (bridge_rollbacks_failed_total). Never another rollback."""
    if is_success(record.verdict):
        return
    metrics.ROLLBACKS_FAILED.labels(environment=record.environment).inc()
    log.error("rollback %s of %s/%s ended %s: the environment stays held (%s)", record.id, record.route,
              record.environment, record.verdict, record.reason, extra={"deployment": record.id})
    await store(ctx).set_hold(record.route, record.environment,
                              f"rollback {record.id} to build {record.build_id} {record.verdict}: {record.reason}",
                              by=str(record.details.get("by") or "gitops-bridge"), rollback=record.id,
                              cause="rollback-failed")
