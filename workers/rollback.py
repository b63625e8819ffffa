"""The worker side of a rollback (`bridge.rollbacks` plans and stores it): its first step, and what its report adds.

A rollback is a deployment of kind `rollback` that walks the ordinary states. It differs in three places only:

* `queued → writing` keeps the tag the plan chose (the restored build's) and ignores the hold (the rollback set it);
* the writer lets it write an older tag than the last setter's (`workers.ordering`, `Candidate.rollback`) and adds a
  `Rollback-Of:` trailer;
* its final report also adds `rolled-back-<env>` to the build it undid (ledger sink `rolled_back`), the one
  exception to "one final report per build and environment".
"""

from __future__ import annotations

import logging

from bridge import metrics
from bridge.records import DeploymentRecord
from bridge.routing import Environment
from workers.context import Ctx, store
from workers.outcome import report
from workers.verdict import parse_time

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


async def observe_restore(ctx: Ctx, record: DeploymentRecord) -> None:
    """Time to restore: from the verdict of the deployment the rollback undid to the rollback's success."""
    of = str((record.details.get("rollback_of") or {}).get("deployment_id") or "")
    undone = await store(ctx).get(of) if of else None
    start = parse_time(undone.timeline.get("finished")) if undone else None
    end = parse_time(record.timeline.get("finished"))
    if start is not None and end is not None:
        metrics.TIME_TO_RESTORE.labels(environment=record.environment).observe(max(0.0, (end - start).total_seconds()))
