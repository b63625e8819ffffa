"""Report a deployment back to its Azure DevOps build: build tags, build properties and, for Azure Repos builds, a
commit status on the source commit.

Tags, a closed set per environment `<env>`; at the end the verdict's tag is added and the rest of the set removed
(one PATCH), so a build shows exactly one of them per environment:

    deploying-<env>           the deployment is under way
    deployed-<env>            succeeded
    deploy-failed-<env>       failed
    deploy-timed-out-<env>    timed-out (Argo CD did not get there before the deadline)
    deploy-superseded-<env>   superseded (a newer build got there first)
    deploy-held-<env>         held (the environment is on hold)
    deploy-rejected-<env>     rejected (the pull request was closed without merging)

Properties `gitops-bridge.<env>.<field>` (JSON Patch `add`, every field written each time, "" when unknown):
status (`in-progress` or the verdict), deployment, tag, commit (GitOps commit), app, url (Argo CD), pr, started,
finished, reason.

Commit status: context `deploy/<env>`, genre `gitops-bridge`; `pending` while running, then succeeded → succeeded,
failed and rejected → failed, timed-out → error, superseded and held → notApplicable. Target URL: the Argo CD
application (or the pull request).

A job reports the record's *current* state, whatever its phase, and reads the record again after writing an
in-progress state: a start report that runs late (a retry) can never leave `pending` over the verdict. Reports never
change the verdict. Transient failures retry (arq Retry, backoff, at most REPORT_ATTEMPTS tries); what still fails
counts in bridge_reports_failed_total{kind} and is logged, once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from arq import Retry

from bridge import metrics
from bridge.errors import BridgeError, LockBusy, UpstreamUnavailable, is_transient
from bridge.organizations import Organization
from bridge.records import DeploymentRecord
from workers.azure_devops import AzureDevOpsClient
from workers.context import Ctx, keys, settings, store
from workers.lock import locked

log = logging.getLogger(__name__)

REPORT_ATTEMPTS = 4  # below arq's default max_tries (5), so the last failure is ours to count
STATUS_GENRE = "gitops-bridge"
RUNNING_TAG = "deploying-{env}"
VERDICT_TAGS = {
    "succeeded": "deployed-{env}",
    "failed": "deploy-failed-{env}",
    "timed-out": "deploy-timed-out-{env}",
    "superseded": "deploy-superseded-{env}",
    "held": "deploy-held-{env}",
    "rejected": "deploy-rejected-{env}",
}
COMMIT_STATES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "rejected": "failed",
    "timed-out": "error",
    "superseded": "notApplicable",
    "held": "notApplicable",
}
VERDICT_TEXT = {
    "succeeded": "deployed",
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


async def _write(ado: AzureDevOpsClient, org: Organization, record: DeploymentRecord) -> list[Failure]:
    project, build = record.project or "", record.build_id
    failures: list[Failure] = []
    add, remove = tag_changes(record.environment, record.verdict)
    try:
        await ado.update_build_tags(org, project, build, add=add, remove=remove)
    except BridgeError as exc:
        failures.append(Failure("tags", exc))
    try:
        await ado.update_build_properties(org, project, build, property_patch(record))
    except BridgeError as exc:
        failures.append(Failure("properties", exc))
    status = commit_status(record)
    if status is not None:
        repo, commit = record.source_repository_id or "", record.source_commit or ""
        try:
            latest = await ado.list_commit_statuses(org, project, repo, commit, latest_only=True)
            if not any(_same_status(s, status) for s in latest):
                await ado.create_commit_status(org, project, repo, commit, **status)
        except BridgeError as exc:
            failures.append(Failure("commit_status", exc))
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
    delay = min(300.0, 10.0 * 2.0 ** max(0, job_try - 1))
    for f in failures:
        if isinstance(f.error, UpstreamUnavailable) and f.error.retry_after:
            delay = max(delay, min(f.error.retry_after, 600.0))
    return delay


async def report_deployment(ctx: Ctx, deployment_id: str, phase: str) -> str:
    """arq job: report the deployment's current state to its build. Returns what happened (for logs and tests):
    `skipped`, `gone`, `reported` or `failed`."""
    ado: AzureDevOpsClient | None = ctx.get("ado")
    if not settings(ctx).azure_devops.report or ado is None or not ado.enabled:
        log.debug("deployment %s: report %s skipped (no Azure DevOps token or reports off)", deployment_id, phase)
        return "skipped"
    record = await store(ctx).get(deployment_id)
    if record is None:
        log.info("deployment %s: gone before its %s report", deployment_id, phase)
        return "gone"
    # URL and credential of the configured organization the record names (older records: the one its URL matches)
    org = ado.resolve(record.organization, record.organization_url)
    if org is None or not record.project:
        metrics.REPORTS_FAILED.labels(kind="record").inc()
        log.warning("deployment %s: cannot report, the record names no project or an organization that is not "
                    "configured with a token (%s)", deployment_id, record.organization or record.organization_url)
        return "failed"
    # One report of a deployment at a time: the "started" and "finished" jobs may run together (a verdict that
    # came before the start report ran), and the check for an identical commit status is not atomic.
    try:
        async with locked(ctx["redis"], keys(ctx).lock(f"report:{deployment_id}"), lease_seconds=60,
                          wait_seconds=30):
            record = await store(ctx).get(deployment_id) or record
            failures = await _write(ado, org, record)
            if record.verdict is None:
                fresh = await store(ctx).get(deployment_id)
                if fresh is not None and fresh.verdict is not None:  # finished while we wrote: write the verdict
                    record = fresh
                    failures = await _write(ado, org, record)
    except LockBusy as exc:
        raise Retry(defer=5) from exc
    job_try = int(ctx.get("job_try") or 1)
    transient = [f for f in failures if is_transient(f.error)]
    if transient and job_try < REPORT_ATTEMPTS:
        defer = _backoff(job_try, transient)
        log.info("deployment %s: %s report will retry in %.0fs (%s)", deployment_id, phase, defer,
                 "; ".join(str(f.error) for f in transient))
        raise Retry(defer=defer)
    for f in failures:
        metrics.REPORTS_FAILED.labels(kind=f.kind).inc()
        log.warning("deployment %s: %s report, %s failed: %s", deployment_id, phase, f.kind, f.error)
    if failures:
        return "failed"
    if record.verdict is not None:
        await store(ctx).update(deployment_id, stamp=["reported"])
    return "reported"
