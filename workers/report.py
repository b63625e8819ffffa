"""Report a deployment back to its Azure DevOps build: build tags, build properties and, for Azure Repos builds, a
commit status on the source commit.

Tags, a closed set per environment `<env>`; at the end the verdict's tag is added and the rest of the set removed
(one PATCH), so a build shows exactly one of them per environment:

    deploying-<env>           the deployment is under way
    deployed-<env>            succeeded
    pushed-<env>              pushed (committed; the environment has no Argo CD application to verify)
    deploy-failed-<env>       failed
    deploy-timed-out-<env>    timed-out (Argo CD did not get there before the deadline)
    deploy-superseded-<env>   superseded (a newer build got there first)
    deploy-held-<env>         held (the environment is on hold)
    deploy-rejected-<env>     rejected (the pull request was closed without merging)

Properties `gitops-bridge.<env>.<field>` (JSON Patch `add`, every field written each time, "" when unknown):
status (`in-progress` or the verdict), deployment, tag, commit (GitOps commit), app, url (Argo CD), pr, started,
finished, reason.

Commit status: context `deploy/<env>`, genre `gitops-bridge`; `pending` while running, then succeeded → succeeded,
pushed → succeeded (the description says "pushed, not verified"), failed and rejected → failed, timed-out → error,
superseded and held → notApplicable. Target URL: the Argo CD application (or the pull request).

Two phases: `started` (pending, written once the deployment starts) and `final` (the verdict, queued in the same
transaction that set it). Delivery is at least once and deduplicated: the record keeps a ledger (`delivered`) of what
each sink received, written right after each sink answered, so a re-run (a retry, a restarted worker, the sweeper)
skips what already landed; a second post happens only after a crash between sending and recording it, and never
with another state. The `started` report never runs after the verdict exists (the final report covers it), and the
reports of one deployment never run together (a short, renewed lock, checked before every write). Transient failures
retry with back-off: the final one until `azure_devops.report_deadline_seconds` after the verdict, then it is given up
and counted in bridge_reports_failed_total{kind}; permanent ones (401/403/404) are counted once. The final report
ends the deployment's life: it starts the `after:` followers and moves the record to `done`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from arq import Retry

from bridge import metrics
from bridge.errors import BridgeError, UpstreamUnavailable, is_transient, retry_delay
from bridge.organizations import Organization
from bridge.records import DeploymentRecord
from workers import faults
from workers.azure_devops import AzureDevOpsClient
from workers.context import Ctx, keys, settings, store
from workers.gate import settle_gates
from workers.lock import RedisLock, locked
from workers.outcome import FINAL, reports_on, start_followers
from workers.rollback import rolled_back_tag
from workers.verdict import parse_time

log = logging.getLogger(__name__)

STARTED_ATTEMPTS = 4  # the pending state is worth a few tries, not a long wait: the final report follows
REPORT_LEASE_SECONDS = 15.0
REPORT_LOCK_WAIT_SECONDS = 10.0
STARTED = "started"
STATUS_GENRE = "gitops-bridge"
RUNNING_TAG = "deploying-{env}"
VERDICT_TAGS = {
    "succeeded": "deployed-{env}",
    "pushed": "pushed-{env}",
    "failed": "deploy-failed-{env}",
    "timed-out": "deploy-timed-out-{env}",
    "superseded": "deploy-superseded-{env}",
    "held": "deploy-held-{env}",
    "rejected": "deploy-rejected-{env}",
}
COMMIT_STATES = {
    "succeeded": "succeeded",
    "pushed": "succeeded",
    "failed": "failed",
    "rejected": "failed",
    "timed-out": "error",
    "superseded": "notApplicable",
    "held": "notApplicable",
}
VERDICT_TEXT = {
    "succeeded": "deployed",
    "pushed": "pushed, not verified",
    "failed": "deployment failed",
    "timed-out": "timed out waiting for Argo CD",
    "superseded": "superseded by a newer build",
    "held": "held",
    "rejected": "pull request closed without merging",
}
MAX_DESCRIPTION = 250
MAX_REASON = 500


# -- what to write (pure) ------------------------------------------------------------------------------------------

def tag_changes(environment: str, verdict: str | None) -> tuple[list[str], list[str]]:
    """(tags to add, tags to remove) for the environment's closed tag set."""
    every = [RUNNING_TAG.format(env=environment)] + [t.format(env=environment) for t in VERDICT_TAGS.values()]
    add = RUNNING_TAG.format(env=environment) if verdict is None else VERDICT_TAGS[verdict].format(env=environment)
    return [add], [t for t in every if t != add]


def property_patch(record: DeploymentRecord) -> list[dict[str, Any]]:
    t = record.timeline
    fields = {
        "status": record.verdict or "in-progress",
        "deployment": record.id,
        "tag": record.tag,
        "commit": record.commit_sha,
        "app": record.argocd_app,
        "url": record.argocd_url,
        "pr": record.pr_url,
        "started": t.get("started") or t.get("queued") or t.get("received"),
        "finished": t.get("finished") if record.verdict else None,
        "reason": (record.reason or "")[:MAX_REASON] if record.verdict else None,
    }
    prefix = f"/gitops-bridge.{record.environment}."
    return [{"op": "add", "path": prefix + name, "value": value or ""} for name, value in fields.items()]


def commit_status(record: DeploymentRecord) -> dict[str, Any] | None:
    """The status to post on the source commit, or None when the build's repository is not Azure Repos."""
    if record.source_repository_type != "TfsGit" or not record.source_repository_id or not record.source_commit:
        return None
    env = record.environment
    if record.verdict is None:
        state = "pending"
        text = f"{env}: deploying {record.tag}" if record.tag else f"{env}: deploying"
    else:
        state = COMMIT_STATES[record.verdict]
        text = f"{env}: {VERDICT_TEXT[record.verdict]}"
        if record.reason:
            text += f" - {record.reason}"
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 3] + "..."
    return {
        "state": state,
        "description": text,
        "target_url": record.argocd_url or record.pr_url,
        "context_name": f"deploy/{env}",
        "context_genre": STATUS_GENRE,
    }


# -- writing it ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    kind: str  # closed set: tags, properties, commit_status, record
    error: BaseException


async def _write(ctx: Ctx, ado: AzureDevOpsClient, org: Organization, record: DeploymentRecord,
                 lock: RedisLock) -> list[Failure]:
    """Write each sink that has not received this state yet, recording each delivery as soon as it landed."""
    project, build = record.project or "", record.build_id
    what = record.verdict or STARTED
    failures: list[Failure] = []

    async def deliver(kind: str, send: Callable[[], Awaitable[object]]) -> None:
        if record.delivered.get(kind) == what:
            return
        try:
            await lock.ensure_held()
            await send()
        except BridgeError as exc:
            failures.append(Failure(kind, exc))
            return
        if kind == "commit_status" and record.verdict is not None:
            faults.reached("inside-report")
        await store(ctx).delivered(record.id, kind, what)

    add, remove = tag_changes(record.environment, record.verdict)
    await deliver("tags", lambda: ado.update_build_tags(org, project, build, add=add, remove=remove))
    await deliver("properties", lambda: ado.update_build_properties(org, project, build, property_patch(record)))
    status = commit_status(record)
    if status is not None:
        repo, commit = record.source_repository_id or "", record.source_commit or ""

        async def post_status() -> None:
            latest = await ado.list_commit_statuses(org, project, repo, commit, latest_only=True)
            if not any(_same_status(s, status) for s in latest):
                await ado.create_commit_status(org, project, repo, commit, **status)

        await deliver("commit_status", post_status)
    undone = rolled_back_tag(record)
    if undone is not None:  # a rollback's final report also marks the build it undid
        await deliver("rolled_back", lambda: ado.update_build_tags(org, project, undone[0], add=[undone[1]], remove=[]))
    return failures


def _same_status(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    context = existing.get("context") or {}
    return bool(
        context.get("name") == wanted["context_name"]
        and context.get("genre") == wanted["context_genre"]
        and existing.get("state") == wanted["state"]
        and (existing.get("description") or "") == wanted["description"]
        and (existing.get("targetUrl") or None) == wanted["target_url"]
    )


def _backoff(job_try: int, failures: list[Failure]) -> float:
    delay = retry_delay(job_try, base=2.0, cap=300.0)
    for f in failures:
        if isinstance(f.error, UpstreamUnavailable) and f.error.retry_after:
            delay = max(delay, min(f.error.retry_after, 600.0))
    return delay


def _is_final(phase: str) -> bool:
    return phase in (FINAL, "finished")  # "finished": jobs queued before the state machine


async def complete(ctx: Ctx, record: DeploymentRecord, *, reported: bool = True) -> None:
    """The last step of a deployment: its pipeline gates called back, its followers started, then `reporting → done`."""
    await settle_gates(ctx, record)  # one more sink: raises Retry while a callback must be tried again
    await start_followers(ctx, record)
    await store(ctx).mark_done(record.id, reported=reported)


async def report_deployment(ctx: Ctx, deployment_id: str, phase: str) -> str:
    """arq job: report the deployment to its build. Returns what happened (for logs and tests): `skipped`, `gone`,
    `reported`, `failed` or `done` (nothing left to deliver)."""
    final = _is_final(phase)
    record = await store(ctx).get(deployment_id)
    if record is None:
        log.info("deployment %s: gone before its %s report", deployment_id, phase)
        return "gone"
    if final and record.state == "done":
        return "done"
    if not final and record.verdict is not None:
        return "skipped"  # the final report says it all
    ado: AzureDevOpsClient | None = ctx.get("ado")
    if ado is None or not reports_on(ctx):
        log.debug("deployment %s: report %s skipped (no Azure DevOps token or reports off)", deployment_id, phase)
        if final:
            await complete(ctx, record)
        return "skipped"
    # URL and credential of the configured organization the record names (older records: the one its URL matches)
    org = ado.resolve(record.organization, record.organization_url)
    if org is None or not record.project:
        metrics.REPORTS_FAILED.labels(kind="record").inc()
        log.warning("deployment %s: cannot report, the record names no project or an organization that is not "
                    "configured with a token (%s)", deployment_id, record.organization or record.organization_url)
        if final:
            await complete(ctx, record, reported=False)
        return "failed"
    # Unfenced: the lock is per deployment, and its holder checks the token (ensure_held), not a fence.
    async with locked(ctx["redis"], keys(ctx).lock(f"report:{deployment_id}"), lease_seconds=REPORT_LEASE_SECONDS,
                      wait_seconds=REPORT_LOCK_WAIT_SECONDS, fenced=False) as lock:
        record = await store(ctx).get(deployment_id) or record
        if (final and record.state == "done") or (not final and record.verdict is not None):
            return "done" if final else "skipped"
        failures = await _write(ctx, ado, org, record, lock)
    transient = [f for f in failures if is_transient(f.error)]
    job_try = int(ctx.get("job_try") or 1)
    if transient and _may_retry(ctx, record, final, job_try):
        defer = _backoff(job_try, transient)
        log.info("deployment %s: %s report will retry in %.0fs (%s)", deployment_id, phase, defer,
                 "; ".join(str(f.error) for f in transient))
        raise Retry(defer=defer)
    for f in failures:
        metrics.REPORTS_FAILED.labels(kind=f.kind).inc()
        log.warning("deployment %s: %s report, %s failed: %s", deployment_id, phase, f.kind, f.error)
    if final:
        await complete(ctx, record, reported=not failures)
    return "failed" if failures else "reported"


def _may_retry(ctx: Ctx, record: DeploymentRecord, final: bool, job_try: int) -> bool:
    if not final:
        return job_try < STARTED_ATTEMPTS
    finished = parse_time(record.timeline.get("finished"))
    if finished is None:
        return True
    return time.time() - finished.timestamp() < settings(ctx).azure_devops.report_deadline_seconds
