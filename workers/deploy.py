"""The deployment job, step by step: event → targets → records → (hold, tag) → writer or pull request.

What follows (commit, push, pull request, Argo CD, report) runs in the jobs this one hands over to, by name.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from arq import Retry

from bridge.errors import InvalidBuild, PermanentError, is_transient
from bridge.events import BuildEvent
from bridge.lifecycle import is_success
from bridge.queue import FLUSH_REPOSITORY, OPEN_PULL_REQUEST, deployment_id, open_pr_job_id, tick_job_id
from bridge.records import DeploymentRecord, Effect, JobSpec, SortedSetAdd, build_fields, now_iso, target_fields
from bridge.routing import Environment, Route, Target, branch_matches, match_event
from bridge.tags import build_values, render_tag
from workers.context import Ctx, keys, routing, store
from workers.outcome import finish_deployment, report

log = logging.getLogger("gitops_bridge.deploy")

OUTBOX_SECONDS = 1.0  # how long after a push bump its safety-net flush job runs (hand_over)


def backoff(job_try: int, base: float = 2.0, cap: float = 120.0) -> float:
    return float(min(cap, base ** min(job_try, 7)))


async def process_build(ctx: Ctx, payload: dict[str, Any]) -> dict[str, Any]:
    """Route one finished build and start a deployment for each environment it matches."""
    event = BuildEvent.from_json(payload.get("event", payload))
    received = payload.get("received") or now_iso()
    event = await _complete(ctx, event)
    targets = match_event(routing(ctx), event)
    if event.source_branch is None:
        # Without the branch (no look-up possible) only routes that accept every branch may deploy.
        targets = [t for t in targets if t.route.match.branches == ["*"] and t.environment.branches is None]
    if event.project_name is None:
        # Run events carry only the project id: a route naming its project by name cannot be confirmed.
        targets = [t for t in targets if t.route.match.project.lower() == (event.project_id or "").lower()]
    started = []
    written: set[str] = set()
    for target in targets:
        route, env = target.route, target.environment
        fresh = new_record(event, route, env, received)
        if not await _create_started(ctx, fresh, route, env):
            record = await _record_for(ctx, event, target, received)
            if not await start_deployment(ctx, record, route, env):
                continue
        started.append(fresh.id)
        if env.promotion == "push":
            written.add(env.repository)
    log.info("build %s routed to %d deployment(s)", event.build_id, len(targets),
             extra={"build_id": event.build_id, "deployments": [t.key for t in targets]})
    for repository in sorted(written):
        await flush_inline(ctx, repository)
    return {"build": event.build_key, "deployments": started}


async def flush_inline(ctx: Ctx, repository: str) -> None:
    """Write the bumps now, in this job, instead of one queue hop later. Never waits for a busy lock: its holder
    drains the pending set, this bump included, before it lets go, so a job slot is not spent waiting (in a burst
    every build but the writer's would wait). The flush job queued with the bumps (the outbox) still runs: it finds
    nothing left, or finishes what this one could not (a crash, an error)."""
    from workers.writer import flush_repository

    try:
        await flush_repository(ctx, repository, inline=True)
    except Exception as exc:  # noqa: BLE001 - the queued flush job owns the retry
        log.info("writing %s now did not finish (%s); its flush job takes over", repository, type(exc).__name__)


async def _complete(ctx: Ctx, event: BuildEvent) -> BuildEvent:
    """Fill in what the payload lacks (branch, commit, repository) from the Azure DevOps build."""
    if event.organization is not None and event.build_key != event.legacy_build_key:
        # Deployed before organizations were configuration (keys from the payload's URL)? Keep that identity, so a
        # redelivery or the reconciler after the upgrade finds those records instead of deploying the build again.
        if await store(ctx).for_build(event.legacy_build_key):
            event = dataclasses.replace(event, organization=None)
    if not event.needs_lookup:
        return event
    client = ctx.get("ado")
    if client is None or not getattr(client, "enabled", False):
        return event
    from workers.azure_devops import lookup_build

    try:
        return await lookup_build(client, event)
    except Exception as exc:
        if is_transient(exc) and ctx.get("job_try", 1) < 8:
            raise Retry(defer=backoff(ctx.get("job_try", 1))) from exc
        log.warning("build %s: look-up failed (%s); routing without branch and commit", event.build_id, exc)
        return event


def new_record(event: BuildEvent, route: Route, env: Environment, received: str) -> DeploymentRecord:
    record = DeploymentRecord(
        id=deployment_id(event.build_key, route.name, env.name),
        build_key=event.build_key,
        build_id=event.build_id,
        build_number=event.build_number,
        build_url=event.web_url,
        build_finished=event.finish_time,
        build_queued=event.queue_time,
        organization_url=event.base_url,
        organization=event.organization,
        project=event.project_id or event.project_name,
        definition=str(event.definition_id) if event.definition_id is not None else event.definition_name,
        source_branch=event.source_branch,
        source_commit=event.source_version,
        source_repository_id=event.repository.id if event.repository else None,
        source_repository_type=event.repository.type if event.repository else None,
        state="queued",
        **target_fields(route, env),
    )
    record.timeline["received"] = received
    record.stamp("queued")
    return record


def promoted_record(source: DeploymentRecord, route: Route, env: Environment, by: str, force: bool) -> DeploymentRecord:
    """A deployment of the same build to another environment of its route."""
    record = DeploymentRecord(
        id=deployment_id(source.build_key, route.name, env.name),
        promoted_from=source.id,
        details={"promoted_by": by, "force": force},
        state="queued",
        **build_fields(source),
        **target_fields(route, env),
    )
    record.stamp("received", "queued")
    return record


async def _record_for(ctx: Ctx, event: BuildEvent, target: Target, received: str) -> DeploymentRecord:
    record = new_record(event, target.route, target.environment, received)
    if not await store(ctx).create(record):
        existing = await store(ctx).get(record.id)
        if existing is not None:
            return existing
    return record


def _tag(record: DeploymentRecord, route: Route) -> str:
    """The image tag of the route's template for this build (InvalidBuild when a value it needs is missing)."""
    return render_tag(
        route.tag,
        build_values(
            build_id=record.build_id,
            build_number=record.build_number,
            commit=record.source_commit,
            branch=record.source_branch,
            definition_id=int(record.definition) if record.definition and record.definition.isdigit() else None,
        ),
    )


async def _create_started(ctx: Ctx, record: DeploymentRecord, route: Route, env: Environment) -> bool:
    """A new deployment that can start at once (not held, its tag renders) is stored already `writing`, with its
    hand-over, in the transaction that creates it: `queued → writing` without a second read-modify-write of the
    record. False when it cannot (it exists already, is held, or has no tag): `start_deployment` then decides."""
    if await store(ctx).get_hold(route.name, env.name) is not None:
        return False
    try:
        record.tag = _tag(record, route)
    except InvalidBuild:
        return False
    record.state = "writing"
    record.stamp("started")
    if not await store(ctx).create(record, then=hand_over(ctx, record, env)):
        return False
    await report(ctx, record.id, "started")
    return True


async def start_deployment(ctx: Ctx, record: DeploymentRecord, route: Route, env: Environment) -> bool:
    """`queued → writing`: hold check, tag, then hand over to the writer (push) or the pull-request job. Idempotent:
    only a deployment still `queued` moves."""
    if record.state != "queued":
        return False
    if record.kind == "rollback":  # the planned tag, past the hold it set (workers.rollback)
        from workers.rollback import start_rollback

        return await start_rollback(ctx, record, env)
    await report(ctx, record.id, "started")
    hold = await store(ctx).get_hold(route.name, env.name)
    if hold is not None:
        await finish_deployment(ctx, record.id, "held", f"{route.name}/{env.name} is held: {hold.get('reason', '')}")
        return False
    try:
        tag = _tag(record, route)
    except InvalidBuild as exc:
        await finish_deployment(ctx, record.id, "failed", str(exc))
        return False
    moved = await store(ctx).advance(record.id, ("queued",), "writing", tag=tag, stamp=("started",),
                                     then=hand_over(ctx, record, env))
    return moved is not None


def hand_over(ctx: Ctx, record: DeploymentRecord, env: Environment) -> list[Effect]:
    """What `writing` needs, written in the same transaction as the state: the pull-request job, or the bump in its
    repository's pending set with a flush job.

    The starter writes the bump itself right after (`flush_inline`), so the flush job is only the outbox's safety net
    (a crash, an error): it runs `OUTBOX_SECONDS` later and is one job per repository and interval, however many
    bumps ask for it — a burst of builds queues a handful, not one each. Its id names the interval it runs in, so a
    bump never asks for a job that is running already (whose end would drop the request)."""
    if env.promotion == "pull-request":
        return [JobSpec(OPEN_PULL_REQUEST, (record.id,), open_pr_job_id(record.id))]
    now = time.time()
    return [SortedSetAdd(keys(ctx).pending(record.repository), record.id, now),
            JobSpec(FLUSH_REPOSITORY, (record.repository,),
                    tick_job_id("flush", record.repository, OUTBOX_SECONDS, now), run_at=now + OUTBOX_SECONDS)]


async def start_and_write(ctx: Ctx, record: DeploymentRecord, route: Route, env: Environment) -> bool:
    """`start_deployment` for one deployment, then its bump written at once (push promotion)."""
    started = await start_deployment(ctx, record, route, env)
    if started and env.promotion == "push":
        await flush_inline(ctx, env.repository)
    return started


async def promote_build(ctx: Ctx, source_id: str, to_environment: str, force: bool, by: str) -> dict[str, Any]:
    """Deploy the build of deployment `source_id` to another environment of the same route.

    Refuses (creating no record) when the previous environment did not succeed, unless forced. Only verified builds
    move forward: the automatic `after:` path calls this only for a succeeded deployment.
    """
    source = await store(ctx).get(source_id)
    if source is None:
        raise PermanentError(f"deployment {source_id} not found")
    route = routing(ctx).route(source.route)
    env = route.environment(to_environment)
    previous = route.previous(env.name)
    if env.branches is not None and source.source_branch and not branch_matches(env.branches, source.source_branch):
        if not force:
            return {"status": "refused", "reason": f"branch {source.source_branch} is not allowed in {env.name}"}
    if previous is not None and not force:
        prev = await store(ctx).get(deployment_id(source.build_key, route.name, previous.name))
        if prev is None or not is_success(prev.verdict):
            state = "not deployed" if prev is None else (prev.verdict or "still in flight")
            return {"status": "refused", "reason": f"{previous.name} did not succeed for build {source.build_id} "
                                                   f"({state}); use force to override"}
    fresh = promoted_record(source, route, env, by, force)
    if not await store(ctx).create(fresh):
        existing = await store(ctx).get(fresh.id)
        if existing is None:
            raise PermanentError(f"deployment {fresh.id} vanished")
        fresh = existing
    started = await start_and_write(ctx, fresh, route, env)
    return {"status": "started" if started else "exists", "deployment": fresh.id}
