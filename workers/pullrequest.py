"""Gated environments (`promotion: pull-request`): a branch with the bump, one pull request, and waiting for a merge.

    open_pull_request(dep_id)    ordering check → branch `gitops-bridge/<env>/<route>-<tag>` from the target branch
                                 with the same format-exact edit → find-or-create the PR → state `awaiting-merge` →
                                 the older open PR of the same route and environment is closed as superseded
    check_pull_request(dep_id)   merged → commit_sha = merge commit, stamp `merged`, VERIFY_DEPLOYMENT;
                                 closed unmerged → `rejected`; open → check again in `pr_poll_seconds`;
                                 older than `pr_max_age_seconds` → `timed-out`

Decisions (documented for operators):
* A newer build for the same route and environment closes the older open pull request with the comment
  "Superseded by #N" and finishes the older deployment `superseded`; it never edits the older PR in place, so every
  pull request shows exactly one build. An older build never replaces a newer one: it finishes `superseded` without
  opening a pull request (the route's `ordering` decides what "older" means; forced promotions skip the check).
* A deployment that waits longer than `pr_max_age_seconds` finishes `timed-out` and its pull request is closed with
  a comment: a merge nobody follows would deploy without verification or a report.
* Nothing holds a worker slot while waiting: the wait is a chain of deferred CHECK_PULL_REQUEST jobs (one per poll
  interval, `tick_job_id`), and the GitHub webhook (`bridge.github_webhook`) queues an extra check at once.
* When the target branch already has the tag, no pull request is opened: the deployment goes on to verification
  with the target branch's head as its commit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from arq import Retry
from redis.exceptions import RedisError

from bridge.errors import BridgeError, NotFound, PermanentError, is_transient, retry_delay
from bridge.queue import CHECK_PULL_REQUEST, VERIFY_DEPLOYMENT, tick_job_id, verify_job_id
from bridge.records import DeploymentRecord, JobSpec
from bridge.routing import Repository, Route
from workers.context import Ctx, enqueue, keys, routing, settings, store
from workers.github import GitHubClient, PullInfo
from workers.gitobjects import Blob
from workers.lock import locked
from workers.ordering import Policy, Setter, is_older
from workers.outcome import finish_deployment
from workers.values import set_values
from workers.writer import Bump, apply_bumps, repository_lock, write_deadline

log = logging.getLogger("gitops_bridge.pullrequest")

BRANCH_PREFIX = "gitops-bridge/"
MARKER = "<!-- gitops-bridge:deployment={} -->"
_MARKER_RE = re.compile(r"<!-- gitops-bridge:deployment=([A-Za-z0-9._-]+) -->")
_RULED_OUT = ("rejected", "failed", "timed-out", "superseded", "held")


# -- pure helpers -----------------------------------------------------------------------------------------------------

def branch_name(environment: str, route: str, tag: str) -> str:
    """`gitops-bridge/<env>/<route>-<tag>`, with what git forbids in ref names (`..`, `.lock`, `@{`) replaced."""
    safe = re.sub(r"\.{2,}", ".", tag).replace("@{", "-")
    safe = re.sub(r"(\.lock|\.)+$", "", safe) or "tag"
    return f"{BRANCH_PREFIX}{environment}/{route}-{safe}"


def deployment_from_body(body: str | None) -> str | None:
    match = _MARKER_RE.search(body or "")
    return match.group(1) if match else None


def pull_title(record: DeploymentRecord) -> str:
    if record.kind == "rollback":
        return f"Roll back {record.route} in {record.environment} to {record.tag} (build {record.build_id})"
    return f"Deploy {record.route} {record.tag} to {record.environment}"


def pull_body(record: DeploymentRecord, old_tags: dict[str, str | None]) -> str:
    build = f"[{record.build_number or record.build_id}]({record.build_url})" if record.build_url \
        else str(record.build_number or record.build_id)
    lines = [
        f"gitops-bridge deploys build {build} of `{record.route}` to **{record.environment}**.",
        "",
        "| | |",
        "| --- | --- |",
        f"| Build | {build} |",
        f"| Source commit | `{record.source_commit or 'unknown'}`"
        + (f" ({record.source_branch})" if record.source_branch else "") + " |",
        f"| File | `{record.file}` |",
    ]
    for key in record.keys:
        old = old_tags.get(key)
        lines.append(f"| `{key}` | `{old if old is not None else '(not set)'}` → `{record.tag}` |")
    lines += [f"| Deployment | `{record.id}` |", "", "Merge to deploy; close to reject.", "", MARKER.format(record.id)]
    return "\n".join(lines)


def setter_of(record: DeploymentRecord, commit: str | None = None) -> Setter:
    return Setter(record.build_id, record.build_finished, record.id, record.tag, commit)


def forced(record: DeploymentRecord) -> bool:
    """A forced promotion skips the ordering checks (deploy.py writes `forced`; the writer reads `force`); so does a
    rollback, which opens a pull request for an older tag on purpose."""
    return record.kind == "rollback" or bool(record.details.get("forced") or record.details.get("force"))


def blocks(newer: DeploymentRecord | None, candidate: DeploymentRecord, policy: Policy) -> bool:
    """True when `newer` (the latest PR deployment) must not be replaced by `candidate`."""
    if newer is None or newer.id == candidate.id or newer.verdict in _RULED_OUT:
        return False
    if forced(candidate):
        return False
    return is_older(setter_of(candidate), setter_of(newer), policy)


# -- the branch (git) -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BranchOutcome:
    old_tags: dict[str, str | None]
    already_on_base: bool   # the target branch has the tag: no pull request needed
    base_sha: str
    head_sha: str | None    # the branch's head (None when already_on_base)
    pushed: bool


def _read_base(blob: Blob | str, record: DeploymentRecord, create_missing: bool) -> tuple[dict[str, str | None], bool]:
    """Old values on the target branch, and whether the edit would change anything there."""
    assert record.tag is not None
    if isinstance(blob, str):
        raise NotFound("git", f"{record.file} in repository {record.repository}")
    edit = set_values(blob.data.decode("utf-8"), {key: record.tag for key in record.keys},
                      create_missing=create_missing, filename=record.file)
    old: dict[str, str | None] = {key: record.tag for key in record.keys}
    for change in edit.changes:
        old[change.key] = change.old
    return old, edit.changed


async def prepare_branch(ctx: Ctx, record: DeploymentRecord, branch: str, create_missing: bool) -> BranchOutcome:
    """Read the target branch, then put the same format-exact edit on `branch` (made from it) and push it.

    Runs under the repository's writer lock (it guards the shared clone) and reuses the writer's edit + commit +
    push step. Idempotent: a branch that already carries the edit (or the deployment's trailer) is left as it is.
    """
    repos = ctx["repos"]
    async with repository_lock(ctx, record.repository):
        base = await repos.sync(record.repository)
        files = await repos.read_files(record.repository, base.head, [record.file])
        old_tags, needed = await asyncio.to_thread(_read_base, files[record.file], record, create_missing)
        if not needed:
            return BranchOutcome(old_tags, True, base.head, None, False)
        applied = await apply_bumps(repos, record.repository, [Bump.from_record(record, create_missing=create_missing)],
                                    branch=branch)
    result = applied.results[0]
    if result.status == "failed":
        raise PermanentError(result.error or "values edit failed")
    return BranchOutcome(old_tags, False, base.head, applied.head, applied.commit_sha is not None)


# -- jobs -------------------------------------------------------------------------------------------------------------

def _github(ctx: Ctx) -> GitHubClient | None:
    client: GitHubClient | None = ctx.get("github")
    return client


async def _fail_or_retry(ctx: Ctx, record: DeploymentRecord, exc: Exception, what: str) -> None:
    """Transient: retry with back-off until the deployment's deadline (then `timed-out`); permanent: `failed`."""
    if is_transient(exc):
        if time.time() < write_deadline(ctx, record):
            retry_after = getattr(exc, "retry_after", None)
            raise Retry(defer=retry_after or retry_delay(int(ctx.get("job_try") or 1), cap=120.0)) from exc
        await finish_deployment(ctx, record.id, "timed-out", f"{what} before the deadline: {exc}")
        return
    await finish_deployment(ctx, record.id, "failed", f"{what}: {exc}")


async def schedule_check(ctx: Ctx, dep_id: str) -> None:
    interval = max(1.0, settings(ctx).github.pr_poll_seconds)
    await enqueue(ctx, CHECK_PULL_REQUEST, dep_id, job_id=tick_job_id("check-pr", dep_id, interval),
                  defer_by=interval)


async def _latest(ctx: Ctx, route: str, environment: str) -> DeploymentRecord | None:
    raw = await ctx["redis"].get(keys(ctx).pull_latest(route, environment))
    if not raw:
        return None
    return await store(ctx).get(raw.decode() if isinstance(raw, bytes) else raw)


async def _last_setters(ctx: Ctx, record: DeploymentRecord) -> list[Setter]:
    raws = [await ctx["redis"].get(keys(ctx).last_setter(record.repository, record.file, k)) for k in record.keys]
    return [s for s in (Setter.from_json(r) for r in raws) if s is not None]


async def open_pull_request(ctx: Ctx, dep_id: str) -> dict[str, Any]:
    record = await store(ctx).get(dep_id)
    if record is None or record.verdict is not None:
        return {"status": "skipped"}
    if record.state == "awaiting-merge":
        await schedule_check(ctx, dep_id)  # a re-run after the PR was recorded: make sure the wait goes on
        return {"status": "exists", "pull_request": record.pr_number}
    if record.state != "writing":
        return {"status": "skipped"}
    client = _github(ctx)
    try:
        route = routing(ctx).route(record.route)
        env = route.environment(record.environment)
        repo = routing(ctx).repositories[record.repository]
    except KeyError:
        await finish_deployment(ctx, dep_id, "failed", f"{record.route}/{record.environment} is no longer routed")
        return {"status": "failed"}
    if client is None or repo.github is None or record.tag is None:
        reason = ("pull-request promotion needs a GitHub token (BRIDGE_GITHUB__TOKEN)" if client is None else
                  f"repository {record.repository} has no `github:` owner/name" if repo.github is None else
                  "no tag rendered")
        await finish_deployment(ctx, dep_id, "failed", reason)
        return {"status": "failed"}
    hold = await store(ctx).get_hold(record.route, record.environment)
    if hold is not None and record.kind != "rollback":  # a rollback passes the hold it set
        await finish_deployment(ctx, dep_id, "held", f"{record.route}/{record.environment} is held: "
                                                     f"{hold.get('reason', '')}")
        return {"status": "held"}
    try:
        lease = settings(ctx).git.lock_lease_seconds
        async with locked(ctx["redis"], keys(ctx).pull_lock(record.route, record.environment),
                          lease_seconds=lease, wait_seconds=min(30.0, settings(ctx).git.lock_wait_seconds)):
            return await _open_locked(ctx, record, route, env.create_missing_keys, repo, client)
    except Retry:
        raise
    except (BridgeError, TimeoutError, ConnectionError, RedisError) as exc:
        await _fail_or_retry(ctx, record, exc, "pull request")
        return {"status": "failed"}


async def _open_locked(
    ctx: Ctx, record: DeploymentRecord, route: Route, create_missing: bool, repo: Repository, client: GitHubClient
) -> dict[str, Any]:
    assert repo.github is not None and record.tag is not None
    latest = await _latest(ctx, record.route, record.environment)
    if blocks(latest, record, route.ordering):
        assert latest is not None
        where = f" (pull request #{latest.pr_number})" if latest.pr_number else ""
        await finish_deployment(ctx, record.id, "superseded",
                                f"newer build {latest.build_id} is already on its way{where}")
        return {"status": "superseded"}
    if not forced(record):
        for current in await _last_setters(ctx, record):
            if current.deployment_id != record.id and is_older(setter_of(record), current, route.ordering):
                await finish_deployment(ctx, record.id, "superseded",
                                        f"{record.file} was already set by newer build {current.build_id}")
                return {"status": "superseded"}
    redis = ctx["redis"]
    ttl = int(settings(ctx).retention_days * 86400)
    latest_key = keys(ctx).pull_latest(record.route, record.environment)

    # a rollback's branch must not be the (merged) branch that once deployed the same tag
    branch = branch_name(record.environment, record.route, record.tag if record.kind != "rollback" else record.id)
    outcome = await prepare_branch(ctx, record, branch, create_missing)
    if outcome.already_on_base:
        await _supersede(ctx, latest, record, client, None)
        await redis.set(latest_key, record.id, ex=ttl)
        await store(ctx).update(record.id, old_tags=outcome.old_tags, commit_sha=outcome.base_sha, state="verifying",
                                details={**record.details, "pull_request": "not needed: the tag is on the branch"},
                                then=[JobSpec(VERIFY_DEPLOYMENT, (record.id,), verify_job_id(record.id))])
        return {"status": "already-deployed", "commit": outcome.base_sha}

    labels = list(settings(ctx).github.labels)
    pr = await client.find_or_create_pull(repo.github, branch, repo.branch, pull_title(record),
                                          pull_body(record, outcome.old_tags), labels)
    await redis.set(keys(ctx).pull_request(repo.github, pr.number), record.id, ex=ttl)
    details = {**record.details, "pr_repo": repo.github, "pr_branch": branch, "pr_head": pr.head_sha,
               "pr_opened_at": record.details.get("pr_opened_at") or time.time()}
    # The older PR goes before this one is recorded: a crash in between leaves the re-run (which finds this PR
    # again) to finish the job; only then does this deployment become the latest of its route and environment.
    await _supersede(ctx, latest, record, client, pr)
    await store(ctx).update(record.id, old_tags=outcome.old_tags, pr_number=pr.number, pr_url=pr.url,
                            state="awaiting-merge", details=details, stamp=("pr_opened",))
    await redis.set(latest_key, record.id, ex=ttl)
    await schedule_check(ctx, record.id)
    log.info("deployment %s: pull request #%d %s", record.id, pr.number, "opened" if pr.created else "found",
             extra={"deployment": record.id, "pull_request": pr.number})
    return {"status": "opened" if pr.created else "exists", "pull_request": pr.number, "url": pr.url}


async def _supersede(
    ctx: Ctx, older: DeploymentRecord | None, newer: DeploymentRecord, client: GitHubClient, pr: PullInfo | None
) -> None:
    """Finish the older deployment `superseded` and close its open pull request with a comment.

    Idempotent: a re-run after a crash between the two steps closes the pull request of an already superseded one.
    """
    if older is None or older.id == newer.id or older.pr_number is None:
        return
    repo = str(older.details.get("pr_repo") or "")
    by = f"#{pr.number}" if pr is not None else "the target branch"
    if older.verdict is None:
        if older.state != "awaiting-merge":
            return  # merged already and on its way through verification
        if repo and (await client.get_pull(repo, older.pr_number)).merged:
            return  # merged meanwhile: its own check moves it on to verification
        await finish_deployment(ctx, older.id, "superseded", f"superseded by {by} (build {newer.build_id})")
        older = await store(ctx).get(older.id)
    if older is None or older.verdict != "superseded" or not repo or older.pr_number is None:
        return
    note = f"Superseded by {by} (build {newer.build_id}, tag `{newer.tag}`). Closed by gitops-bridge."
    await client.close_pull(repo, older.pr_number, note)


async def check_pull_request(ctx: Ctx, dep_id: str) -> dict[str, Any]:
    record = await store(ctx).get(dep_id)
    if record is None or record.verdict is not None or record.state != "awaiting-merge" or record.pr_number is None:
        return {"status": "skipped"}
    client = _github(ctx)
    repo = str(record.details.get("pr_repo") or "")
    if client is None or not repo:
        await finish_deployment(ctx, dep_id, "failed", "cannot check the pull request: GitHub is not configured")
        return {"status": "failed"}
    try:
        pr = await client.get_pull(repo, record.pr_number)
    except PermanentError as exc:
        await finish_deployment(ctx, dep_id, "failed", f"pull request #{record.pr_number}: {exc}")
        return {"status": "failed"}
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("deployment %s: checking pull request #%s failed (%s); checking again later",
                    dep_id, record.pr_number, exc)
        await schedule_check(ctx, dep_id)
        return {"status": "unavailable"}
    if pr.merged:
        if pr.merge_commit_sha:
            return await _merged(ctx, record, pr)
        await schedule_check(ctx, dep_id)  # GitHub can report the merge a moment before its commit
        return {"status": "merging"}
    if pr.state == "closed":
        await finish_deployment(ctx, dep_id, "rejected", f"pull request #{pr.number} was closed without merging")
        return {"status": "rejected"}
    opened = float(record.details.get("pr_opened_at") or record.created)
    max_age = settings(ctx).github.pr_max_age_seconds
    if time.time() - opened > max_age:
        hours = max_age / 3600
        if await finish_deployment(ctx, dep_id, "timed-out",
                                   f"pull request #{pr.number} was not merged within {hours:g} h"):
            try:
                await client.close_pull(repo, pr.number, f"Not merged within {hours:g} h: gitops-bridge stopped "
                                                         "waiting. Run the build again or promote it to deploy.")
            except BridgeError as exc:
                log.warning("deployment %s: closing timed-out pull request failed: %s", dep_id, exc)
        return {"status": "timed-out"}
    await schedule_check(ctx, dep_id)
    return {"status": "open"}


def _policy(ctx: Ctx, record: DeploymentRecord) -> Policy:
    try:
        return routing(ctx).route(record.route).ordering
    except KeyError:
        return "build-id"


async def _merged(ctx: Ctx, record: DeploymentRecord, pr: PullInfo) -> dict[str, Any]:
    assert pr.merge_commit_sha is not None
    # Remember who set the targets, as the writer does, so an older build can never move them back.
    setter = setter_of(record, pr.merge_commit_sha)
    policy = _policy(ctx, record)
    ttl = int(settings(ctx).retention_days * 86400)
    for key in record.keys:
        name = keys(ctx).last_setter(record.repository, record.file, key)
        current = Setter.from_json(await ctx["redis"].get(name))
        if current is None or not is_older(setter, current, policy):
            await ctx["redis"].set(name, setter.to_json(), ex=ttl)
    await store(ctx).update(record.id, commit_sha=pr.merge_commit_sha, state="verifying", stamp=("merged",),
                            then=[JobSpec(VERIFY_DEPLOYMENT, (record.id,), verify_job_id(record.id))])
    log.info("deployment %s: pull request #%d merged as %s", record.id, pr.number, pr.merge_commit_sha[:12])
    return {"status": "merged", "commit": pr.merge_commit_sha}
