"""The GitOps writer: every pending bump of a repository in one commit and one push, one writer at a time.

    submit_bump(record)          pending[repository] += record.id; enqueue FLUSH_REPOSITORY
    flush_repository(repository) lock → drain pending: holds, ordering (last setter), edit, ONE commit, ONE push
                                 (fetch + re-apply + retry when the remote moved) → record commit, VERIFY_DEPLOYMENT

Crash safety: a bump leaves the pending set only after its record carries the outcome. A re-run finds a bump that
was pushed but not recorded by its `Deployment-Id:` trailer in the remote history, and records that commit instead
of writing a second one. `apply_bumps` is the edit + commit + push step on its own; the pull-request job reuses it
with `branch=` to push a new branch instead of the target branch.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from arq import Retry
from redis.exceptions import RedisError

from bridge import metrics
from bridge.errors import BridgeError, PermanentError, PushRejected, is_transient, retry_delay
from bridge.queue import FLUSH_REPOSITORY, VERIFY_DEPLOYMENT, tick_job_id, unique_job_id, verify_job_id
from bridge.records import DeploymentRecord, JobSpec, decode_record
from bridge.routing import Environment
from workers import faults
from workers.context import Ctx, enqueue, keys, routing, settings, store
from workers.gitobjects import Blob
from workers.gitrepo import RepoCache
from workers.lock import LockOutcome, RedisLock, locked
from workers.ordering import Candidate, Setter, decide
from workers.outcome import finish_deployment, finish_deployments
from workers.values import ValuesEditError, set_values
from workers.verdict import parse_time

BATCH_SIZE = 200
ACQUIRE_WAIT_SECONDS = 0.25
SUMMARY_SUBJECT = "ci: update image tags ({count} apps)"


# -- the edit + commit + push step (shared with pull requests) ----------------------------------------------------


@dataclass(frozen=True)
class Bump:
    deployment_id: str
    route: str
    environment: str
    file: str
    keys: tuple[str, ...]
    tag: str
    create_missing: bool = False
    build_id: int = 0
    build_number: str | None = None
    build_url: str | None = None
    source_commit: str | None = None
    rollback_of: int | None = None  # a rollback: the build it undoes (trailer `Rollback-Of:`)
    # (key, a value the bridge wrote there): a key holding none of its values was changed by a person, and the bump
    # is left out as "manual-change" (routing `on_manual_change: hold`). Keys without a pair are not checked.
    expect: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_record(cls, record: DeploymentRecord, *, create_missing: bool = False) -> Bump:
        if not record.tag:
            raise PermanentError(f"deployment {record.id} has no tag")
        rollback_of = (record.details.get("rollback_of") or {}).get("build_id") if record.kind == "rollback" else None
        return cls(record.id, record.route, record.environment, record.file, tuple(record.keys), record.tag,
                   create_missing, record.build_id, record.build_number, record.build_url, record.source_commit,
                   rollback_of if isinstance(rollback_of, int) else (0 if record.kind == "rollback" else None))


Status = Literal["changed", "unchanged", "already-pushed", "failed", "manual-change"]


@dataclass(frozen=True)
class BumpResult:
    bump: Bump
    status: Status
    old: dict[str, str | None] = field(default_factory=dict)
    commit_sha: str | None = None  # the commit that carries the bump (for "unchanged": the head that has the value)
    error: str | None = None


@dataclass(frozen=True)
class ApplyResult:
    branch: str
    results: tuple[BumpResult, ...]
    commit_sha: str | None  # the commit this call pushed; None when nothing needed a commit
    head: str               # the branch head after this call
    push_retries: int = 0


class _SafeFormat(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def render_subject(template: str, bump: Bump) -> str:
    if bump.rollback_of is not None:
        return _one_line(f"rollback: {bump.route} {bump.environment} to {bump.tag} (build {bump.build_id})")
    fields = _SafeFormat(app=bump.route, route=bump.route, tag=bump.tag, env=bump.environment,
                         environment=bump.environment, build_id=bump.build_id, build_number=bump.build_number or "",
                         file=bump.file)
    try:
        return _one_line(template.format_map(fields))
    except (ValueError, IndexError, AttributeError):
        return _one_line(f"ci: update {bump.route} image tag to {bump.tag} ({bump.environment})")


def trailers(bump: Bump) -> list[str]:
    lines = [f"Rollback-Of: {bump.rollback_of}"] if bump.rollback_of is not None else []
    lines.append(f"Build-Id: {bump.build_id}")
    if bump.build_url:
        lines.append(f"Build-Url: {_one_line(bump.build_url)}")
    if bump.source_commit:
        lines.append(f"Source-Commit: {_one_line(bump.source_commit)}")
    lines += [f"Environment: {bump.environment}", f"Deployment-Id: {bump.deployment_id}"]
    return lines


def commit_message(template: str, bumps: Sequence[Bump]) -> str:
    """Subject from the template (a summary subject for several bumps), then one trailer set per bump."""
    if len(bumps) == 1:
        head = render_subject(template, bumps[0])
        body = f"{bumps[0].file}: {', '.join(bumps[0].keys)} → {bumps[0].tag}"
    else:
        head = SUMMARY_SUBJECT.format(count=len(bumps))
        body = "\n".join(f"- {render_subject(template, b)}" for b in bumps)
    return f"{head}\n\n{body}\n\n" + "\n".join(line for b in bumps for line in trailers(b)) + "\n"


def _edit_files(files: Mapping[str, Blob | str], bumps: Sequence[Bump]) -> tuple[list[BumpResult], list[Blob]]:
    """Apply each bump to its file's text in order (pure); a failing bump is dropped, the others still apply."""
    results: list[BumpResult] = []
    changed_files: list[Blob] = []
    by_file: dict[str, list[Bump]] = {}
    for b in bumps:
        by_file.setdefault(b.file, []).append(b)
    for file, group in by_file.items():
        blob = files.get(file, f"{file}: not read")
        try:
            if isinstance(blob, str):
                raise PermanentError(blob)
            original = blob.data.decode("utf-8")
        except (UnicodeDecodeError, PermanentError) as exc:
            reason = f"{file}: cannot read the values file ({exc})"
            results += [BumpResult(b, "failed", error=reason) for b in group]
            continue
        text = original
        for b in group:
            try:
                edit = set_values(text, {k: b.tag for k in b.keys}, create_missing=b.create_missing, filename=file)
            except ValuesEditError as exc:
                results.append(BumpResult(b, "failed", error=str(exc)))
                continue
            olds = {c.key: c.old for c in edit.changes}
            allowed: dict[str, set[str]] = {}
            for key, wrote in b.expect:
                allowed.setdefault(key, set()).add(wrote)
            manual = [(key, olds.get(key, b.tag), min(values)) for key, values in allowed.items()
                      if olds.get(key, b.tag) not in values]
            if manual:
                key, found, wrote = manual[0]
                results.append(BumpResult(b, "manual-change", {k: olds.get(k, b.tag) for k in b.keys},
                                          error=f"{file}:{key} is {found!r} in Git, not {wrote!r} that gitops-bridge "
                                                f"wrote there last: a person changed it"))
                continue
            if edit.changed:
                text = edit.text
                results.append(BumpResult(b, "changed", {k: olds.get(k, b.tag) for k in b.keys}))
            else:
                results.append(BumpResult(b, "unchanged", {k: b.tag for k in b.keys}))
        if text != original:
            changed_files.append(Blob(file, text.encode("utf-8"), blob.mode))
    return results, changed_files


def _backoff(attempt: int) -> float:
    return random.uniform(0.0, min(2.0, 0.05 * 2**attempt))  # full jitter


async def apply_bumps(
    repos: RepoCache,
    repository: str,
    bumps: Sequence[Bump],
    *,
    branch: str | None = None,
    before_push: Callable[[], Awaitable[None]] | None = None,
) -> ApplyResult:
    """Edit, commit and push `bumps` to `branch` (default: the repository's branch) in one commit. Never forces.

    The caller holds the repository lock. A new `branch` starts from the repository's branch. Bumps whose
    `Deployment-Id:` trailer is already in the branch's recent history are reported "already-pushed" with that commit;
    bumps whose value is already there are "unchanged" (commit_sha = head); failing edits are "failed" and left out.
    The files are read from the fetched branch head and the commit is written on top of it without a work tree
    (`RepoCache.write_commit`). When the push is rejected, the branch is fetched again and the edits applied to its
    new head, up to `settings.git.push_attempts` times (PushRejected after that).
    """
    target = branch or repos.config(repository).branch
    attempts = max(1, repos.git.push_attempts)
    template = repos.git.commit_template
    retries = 0
    for attempt in range(attempts):
        synced = await repos.sync(repository, target)
        pushed = await repos.find_trailers(repository, [b.deployment_id for b in bumps],
                                           ref=synced.head) if synced.exists else {}
        results = [BumpResult(b, "already-pushed", commit_sha=pushed[b.deployment_id])
                   for b in bumps if b.deployment_id in pushed]
        todo = [b for b in bumps if b.deployment_id not in pushed]
        originals = await repos.read_files(repository, synced.head, (b.file for b in todo)) if todo else {}
        edited, files = await asyncio.to_thread(_edit_files, originals, todo)
        faults.reached("after-edit")
        changed = [r for r in edited if r.status == "changed"]
        if not changed:
            results += [replace(r, commit_sha=synced.head) if r.status == "unchanged" else r for r in edited]
            return ApplyResult(target, tuple(results), None, synced.head, retries)
        sha = await repos.write_commit(repository, synced.head, files,
                                       commit_message(template, [r.bump for r in changed]))
        faults.reached("after-commit")
        if before_push is not None:
            await before_push()
        try:
            await repos.push(repository, sha, target)
        except PushRejected:
            retries += 1
            metrics.GIT_PUSHES.labels(outcome="rejected").inc()
            metrics.GIT_PUSH_RETRIES.inc()
            if attempt + 1 >= attempts:
                raise
            await asyncio.sleep(_backoff(attempt))
            continue
        except BridgeError:
            metrics.GIT_PUSHES.labels(outcome="failed").inc()
            raise
        metrics.GIT_PUSHES.labels(outcome="pushed").inc()
        metrics.GIT_COMMITS.inc()
        metrics.BUMPS_PER_COMMIT.observe(len(changed))
        faults.reached("after-push")
        results += [replace(r, commit_sha=sha if r.status == "changed" else synced.head)
                    if r.status not in ("failed", "manual-change") else r for r in edited]
        return ApplyResult(target, tuple(results), sha, sha, retries)
    raise PushRejected(f"{repository}: push to {target} rejected {attempts} times")  # pragma: no cover


# -- the pending set and the flush job ----------------------------------------------------------------------------


def repository_lock(ctx: Ctx, repository: str) -> Any:
    """`async with repository_lock(ctx, name) as lock:` — the lock every writer of the clone holds (LockBusy)."""
    git = settings(ctx).git
    return locked(ctx["redis"], keys(ctx).lock(repository), lease_seconds=git.lock_lease_seconds,
                  wait_seconds=git.lock_wait_seconds)


async def submit_bump(ctx: Ctx, record: DeploymentRecord) -> None:
    """Queue a push-promotion bump for its repository's writer (the record must be stored already)."""
    await ctx["redis"].zadd(keys(ctx).pending(record.repository), {record.id: time.time()}, nx=True)
    await enqueue(ctx, FLUSH_REPOSITORY, record.repository, job_id=unique_job_id(f"flush:{record.repository}"))


class _BatchFailed(Exception):
    def __init__(self, ids: list[str], cause: BaseException) -> None:
        self.ids, self.cause = ids, cause
        super().__init__(str(cause))


async def flush_repository(ctx: Ctx, repository: str, *, inline: bool = False) -> None:
    """arq job: drain the repository's pending bumps under its lock; re-check after releasing it.

    `inline` (a starter writing its own bumps, deploy.flush_inline): a busy lock is not waited for, and nothing is
    queued for later — the holder re-checks the pending set after releasing, and the bumps' outbox job covers a
    holder that died."""
    redis = ctx["redis"]
    pending = keys(ctx).pending(repository)
    git = settings(ctx).git
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(git.lock_wait_seconds, 1.0)
    check = not inline  # an inline writer just added its bump: straight to the lock (the drain reads pending)
    while loop.time() < deadline:
        if check and not await redis.zcard(pending):
            return
        check = True
        lock = RedisLock(redis, keys(ctx).lock(repository), lease_seconds=git.lock_lease_seconds)
        if await lock.acquire(0.0 if inline else ACQUIRE_WAIT_SECONDS) is not LockOutcome.ACQUIRED:
            if inline:
                return
            # The holder re-checks pending after it releases; this deferred job covers a holder that died.
            await enqueue(ctx, FLUSH_REPOSITORY, repository, defer_by=git.lock_lease_seconds,
                          job_id=tick_job_id("flush-later", repository, git.lock_lease_seconds))
            return
        try:
            await _drain(ctx, repository, lock, deadline)
        except _BatchFailed as failed:
            await _batch_failed(ctx, repository, failed)
        finally:
            await lock.release()
    if await redis.zcard(pending):
        await enqueue(ctx, FLUSH_REPOSITORY, repository, job_id=unique_job_id(f"flush:{repository}"))


async def _batch_failed(ctx: Ctx, repository: str, failed: _BatchFailed) -> None:
    """A transient failure (git remote down, push rejected too often, Redis, a lost lock) is retried with back-off;
    only the bumps whose deadline passed meanwhile end `timed-out`. A permanent one fails the batch's bumps."""
    cause = failed.cause
    if is_transient(cause):
        now = time.time()
        for dep_id, record in (await _load(ctx, failed.ids)).items():
            if record is not None and record.verdict is None and now >= write_deadline(ctx, record):
                await finish_deployment(ctx, dep_id, "timed-out",
                                        f"could not write to git before the deadline: {cause}")
                await ctx["redis"].zrem(keys(ctx).pending(repository), dep_id)
        raise Retry(defer=retry_delay(int(ctx.get("job_try") or 1))) from cause
    reason = f"git write failed: {cause}"
    for dep_id in failed.ids:
        await finish_deployment(ctx, dep_id, "failed", reason)
        await ctx["redis"].zrem(keys(ctx).pending(repository), dep_id)


def write_deadline(ctx: Ctx, record: DeploymentRecord) -> float:
    """A bump that cannot be written ends at its environment's deadline, counted from when the deployment started."""
    deadline = settings(ctx).argocd.deadline_seconds
    try:
        env = routing(ctx).route(record.route).environment(record.environment)
        deadline = env.deadline_seconds or deadline
    except KeyError:
        pass
    started = parse_time(record.timeline.get("started") or record.timeline.get("queued"))
    return (started.timestamp() if started else record.created) + deadline


async def _drain(ctx: Ctx, repository: str, lock: RedisLock, deadline: float) -> None:
    redis = ctx["redis"]
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        raw = await redis.zrange(keys(ctx).pending(repository), 0, BATCH_SIZE - 1)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw]
        if not ids:
            return
        try:
            await _flush_batch(ctx, repository, lock, ids)
        except (BridgeError, OSError, TimeoutError, RedisError) as exc:
            raise _BatchFailed(ids, exc) from exc


async def _load(ctx: Ctx, ids: list[str]) -> dict[str, DeploymentRecord | None]:
    raws = await ctx["redis"].mget([keys(ctx).deployment(i) for i in ids])
    return {i: decode_record(r) if r else None for i, r in zip(ids, raws, strict=True)}


async def _flush_batch(ctx: Ctx, repository: str, lock: RedisLock, ids: list[str]) -> None:
    redis = ctx["redis"]
    k = keys(ctx)
    pending = k.pending(repository)
    done: list[str] = []
    live: list[tuple[DeploymentRecord, Any, Any]] = []  # (record, route, environment)
    holds: dict[tuple[str, str], dict[str, str] | None] = {}
    for dep_id, record in (await _load(ctx, ids)).items():
        if record is None or record.verdict is not None:
            done.append(dep_id)
            continue
        if record.commit_sha and record.state == "verifying":  # recorded by a run that died before cleaning up
            await enqueue(ctx, VERIFY_DEPLOYMENT, dep_id, job_id=verify_job_id(dep_id))
            done.append(dep_id)
            continue
        try:
            route = routing(ctx).route(record.route)
            env = route.environment(record.environment)
        except KeyError:
            await finish_deployment(ctx, dep_id, "failed", f"route {record.route}/{record.environment} not configured")
            done.append(dep_id)
            continue
        pair = (record.route, record.environment)
        if pair not in holds:
            holds[pair] = await store(ctx).get_hold(*pair)
        hold = holds[pair]
        if hold is not None and record.kind != "rollback":  # a rollback passes the hold it set
            await finish_deployment(ctx, dep_id, "held", f"held by {hold.get('by', 'operator')}: "
                                                         f"{hold.get('reason', '')}".rstrip(": "))
            done.append(dep_id)
            continue
        if not record.tag:
            await finish_deployment(ctx, dep_id, "failed", "no image tag was rendered for this deployment")
            done.append(dep_id)
            continue
        live.append((record, route, env))

    # Ordering, decided under the lock against the last setter of every target.
    target_keys = sorted({(r.file, key) for r, _, _ in live for key in r.keys})
    setters: dict[tuple[str, str], Setter] = {}
    if target_keys:
        raws = await redis.mget([k.last_setter(repository, f, key) for f, key in target_keys])
        for target, raw in zip(target_keys, raws, strict=True):
            setter = Setter.from_json(raw)
            if setter is not None:
                setters[target] = setter
    by_id = {r.id: (r, env) for r, _, env in live}
    decision = decide(
        (Candidate(r.id, (r.route, r.environment), tuple((r.file, key) for key in r.keys),
                   Setter(r.build_id, r.build_finished, r.id, r.tag), route.ordering, r.created,
                   bool(r.details.get("force")), r.kind == "rollback") for r, route, _ in live),
        setters,
    )
    if decision.superseded:  # a burst supersedes most of its builds: in batches, not a round trip each
        await finish_deployments(ctx, "superseded", {c.deployment_id: reason for c, reason in decision.superseded})
        done += [c.deployment_id for c, _ in decision.superseded]

    if decision.apply:
        await lock.ensure_held()
        applying = [by_id[c.deployment_id] for c in decision.apply]
        written = await _written(ctx, repository, applying)
        bumps = [replace(Bump.from_record(rec, create_missing=env.create_missing_keys),
                         expect=expected(rec, env, setters, written))
                 for rec, env in applying]

        async def before_push() -> None:
            await lock.ensure_held()
            await _remember_written(ctx, repository, bumps)

        result = await apply_bumps(ctx["repos"], repository, bumps, before_push=before_push)
        await lock.ensure_held()
        for r in result.results:
            record = by_id[r.bump.deployment_id][0]
            if r.status == "failed":
                await finish_deployment(ctx, record.id, "failed", r.error or "values edit failed")
                continue
            if r.status == "manual-change":
                await hold_for_manual_change(ctx, repository, record, r.error or "a person changed the value in Git",
                                             r.old)
                continue
            await _record(ctx, repository, record, r)
        faults.reached("after-record")
        done += [r.bump.deployment_id for r in result.results]
    if done:
        await redis.zrem(pending, *done)


def expected(record: DeploymentRecord, env: Environment, setters: dict[tuple[str, str], Setter],
             written: dict[tuple[str, str], set[str]]) -> tuple[tuple[str, str], ...]:
    """The values the bridge may have left in the record's keys, to notice a person's change: what it last recorded
    writing there, and what it pushed there since (a run that died, or lost Redis, between its push and recording
    it). Nothing for a rollback (it overrides on purpose) or with `on_manual_change: follow`."""
    if record.kind == "rollback" or env.on_manual_change != "hold":
        return ()
    out = []
    for key in record.keys:
        setter = setters.get((record.file, key))
        if setter is not None and setter.tag:
            out.append((key, setter.tag))
            out += sorted((key, tag) for tag in written.get((record.file, key), set()))
    return tuple(out)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _written(ctx: Ctx, repository: str, applying: list[tuple[DeploymentRecord, Environment]]
                   ) -> dict[tuple[str, str], set[str]]:
    targets = sorted({(r.file, key) for r, _ in applying for key in r.keys})
    if not targets:
        return {}
    async with ctx["redis"].pipeline(transaction=False) as pipe:
        for file, key in targets:
            pipe.smembers(keys(ctx).written(repository, file, key))
        answers = await pipe.execute()
    return {target: {_decode(v) for v in members} for target, members in zip(targets, answers, strict=True)}


async def _remember_written(ctx: Ctx, repository: str, bumps: Sequence[Bump]) -> None:
    """Before a push: the values it may write count as the bridge's until a setter is recorded for them."""
    ttl = max(1, int(settings(ctx).retention_days * 86400))
    async with ctx["redis"].pipeline(transaction=False) as pipe:
        for b in bumps:
            for key in b.keys:
                pipe.sadd(keys(ctx).written(repository, b.file, key), b.tag)
                pipe.expire(keys(ctx).written(repository, b.file, key), ttl)
        await pipe.execute()


async def hold_for_manual_change(ctx: Ctx, repository: str, record: DeploymentRecord, reason: str,
                                 found: dict[str, str | None]) -> None:
    """A person's value is in Git: hold the environment (so no later build undoes it either) and end this one held.
    The person's value becomes what the bridge expects there, so once the hold is released builds deploy again."""
    k = keys(ctx)
    for key in record.keys:
        setter = Setter.from_json(await ctx["redis"].get(k.last_setter(repository, record.file, key)))
        value = found.get(key)
        if setter is not None and value is not None:
            async with ctx["redis"].pipeline(transaction=True) as pipe:
                pipe.set(k.last_setter(repository, record.file, key), replace(setter, tag=value).to_json(),
                         keepttl=True)
                pipe.delete(k.written(repository, record.file, key))
                await pipe.execute()
    await store(ctx).set_hold(record.route, record.environment, reason, by="gitops-bridge", cause="manual-change")
    details = {**record.details, "manual_change": {"found": found, "reason": reason}}
    await finish_deployment(ctx, record.id, "held", f"held: {reason}", details=details)
    metrics.MANUAL_CHANGES.labels(environment=record.environment).inc()


async def _record(ctx: Ctx, repository: str, record: DeploymentRecord, result: BumpResult) -> None:
    k = keys(ctx)
    setter = Setter(record.build_id, record.build_finished, record.id, record.tag, result.commit_sha)
    ttl = max(1, int(settings(ctx).retention_days * 86400))
    async with ctx["redis"].pipeline(transaction=True) as pipe:
        for key in record.keys:
            pipe.set(k.last_setter(repository, record.file, key), setter.to_json(), ex=ttl)
            pipe.delete(k.written(repository, record.file, key))  # the setter says what is there now
        await pipe.execute()
    stamps = ("committed", "pushed") if result.status != "unchanged" else ()
    details = dict(record.details)
    if result.status == "unchanged":
        details["unchanged"] = True
    await store(ctx).update(record.id, stamp=stamps, commit_sha=result.commit_sha, state="verifying",
                            old_tags=result.old or record.old_tags, details=details,
                            then=[JobSpec(VERIFY_DEPLOYMENT, (record.id,), verify_job_id(record.id), priority=True)])
