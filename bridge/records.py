"""Deployment records in Redis: one per (build × environment), with its timeline, kept for the retention period.

Both processes use this store: the workers write records, the web process reads them for `/api/deployments`.
Every write is one Redis transaction that moves the record *and* its indexes together: the per-state indexes of
`bridge.lifecycle` (scored by when the deployment entered the state), the list of all deployments and the build's
set. `finish` sets a verdict at most once and queues the final report in the same transaction (an outbox), so a
verdict never exists without its report on the way.
"""

from __future__ import annotations

import builtins
import json
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from bridge.clock import now_iso
from bridge.lifecycle import ACTIVE_STATES, IN_FLIGHT_STATES, VERDICTS, Kind, State, Verdict, allowed
from bridge.queue import Keys, add_jobs
from bridge.routing import Environment, Route

__all__ = ["VERDICTS", "DeploymentRecord", "DeploymentStore", "Effect", "FailingSince", "JobSpec", "Jobs",
           "LastSucceeded", "Restored", "SortedSetAdd", "State", "Verdict", "coalesce", "decode_record",
           "encode_record", "now_iso"]

STAMPS = (
    "received", "queued", "started", "committed", "pushed", "pr_opened", "merged",
    "sync_started", "synced", "healthy", "finished", "reported",
)


# -- the stored form -------------------------------------------------------------------------------------------------
# A record is kept for the retention period, so its bytes count (issue 12: <= 1 KB per deployment). It is stored as
# JSON without the fields that hold their default (null, empty, `kind` build, `promotion` push), raw-deflated with a
# preset dictionary of the words every record repeats, behind a version byte. Records that start with `{` are the
# plain JSON of earlier versions and read as they are. RECORD_ZDICT_V1 must never change: records written with it
# are read with it for the whole retention period; a better dictionary is a new version byte.
RECORD_V1 = b"\x01"
RECORD_ZDICT_V1 = (
    b'"pr_url":"","pr_number":,"promoted_from":"","kind":"rollback","promotion":"pull-request","details":{"by":"'
    b'"rollback_of":{"deployment_id":"","build_id":},"gate":"check","superseded","held","rejected","timed-out",'
    b'"failed","pushed","awaiting-merge","verifying","writing","reporting","queued","merged","pr_opened",'
    b'"Degraded","Progressing","not healthy","refs/heads/release/","refs/heads/main","GitHub","Git",'
    b'https://dev.azure.com/","organization_url":"https://","/_apis/build/Builds/","/_build/results?buildId='
    b'{"id":"","build_key":"","build_id":,"build_number":"","build_url":"","build_finished":"","build_queued":"'
    b'","organization":"","project":"","definition":"","source_branch":"refs/heads/main","source_commit":"'
    b'","source_repository_id":"","source_repository_type":"TfsGit","route":"","environment":"dev","repository":"'
    b'","file":"/values-dev.yaml","keys":["image.tag"],"tag":"","old_tags":{"image.tag":"'
    b'"},"argocd_app":"-dev","argocd_url":"/applications/","state":"done","verdict":"succeeded","reason":"'
    b' synced and Healthy","commit_sha":"","delivered":{"tags":"succeeded","properties":"succeeded",'
    b'"commit_status":"succeeded"},"timeline":{"received":"2026-01-01T00:00:00.000Z","queued":"'
    b'Z","started":"Z","committed":"Z","pushed":"Z","sync_started":"Z","synced":"Z","healthy":"Z","finished":"'
    b'Z","reported":"Z"},"created":1.0,"updated":1.0}'
)


def encode_record(record: DeploymentRecord) -> bytes:
    """The stored form of `record` (see RECORD_ZDICT_V1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, RECORD_ZDICT_V1)
    body = record.model_dump_json(exclude_defaults=True).encode()
    return RECORD_V1 + packer.compress(body) + packer.flush()


def decode_record(raw: bytes | str) -> DeploymentRecord:
    """A stored record, in any form this or an earlier version wrote."""
    if isinstance(raw, bytes) and raw[:1] == RECORD_V1:
        unpacker = zlib.decompressobj(-15, RECORD_ZDICT_V1)
        raw = unpacker.decompress(raw[1:]) + unpacker.flush()
    return DeploymentRecord.model_validate_json(raw)


class DeploymentRecord(BaseModel):
    # Built on first use: the web process needs it for the operator API only, not to start (bench/config.py).
    model_config = ConfigDict(defer_build=True)

    id: str
    kind: Kind = "build"
    build_key: str
    build_id: int
    build_number: str | None = None
    build_url: str | None = None
    build_finished: str | None = None
    build_queued: str | None = None  # the build's queueTime: DORA's lead time for changes starts here
    organization_url: str | None = None
    organization: str | None = None  # the configured organization's name; report-back resolves URL and token from it
    project: str | None = None
    definition: str | None = None
    source_branch: str | None = None
    source_commit: str | None = None
    source_repository_id: str | None = None
    source_repository_type: str | None = None
    route: str
    environment: str
    repository: str
    file: str
    keys: list[str]
    promotion: str = "push"
    tag: str | None = None
    old_tags: dict[str, str | None] = Field(default_factory=dict)
    argocd_app: str | None = None
    argocd_url: str | None = None
    state: State = "queued"
    verdict: Verdict | None = None
    reason: str | None = None
    commit_sha: str | None = None
    pr_url: str | None = None
    pr_number: int | None = None
    promoted_from: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    # What the report-back delivered, per sink (tags, properties, commit_status): "started" or the verdict.
    delivered: dict[str, str] = Field(default_factory=dict)
    timeline: dict[str, str] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)

    @field_validator("state", mode="before")
    @classmethod
    def _legacy_state(cls, value: Any) -> Any:
        return "queued" if value == "received" else value  # records written before the state machine

    def stamp(self, *names: str) -> None:
        """Stamp the names not stamped yet, all with one time (a stamp already there keeps its time)."""
        missing = [name for name in names if name not in self.timeline]
        if missing:
            self.timeline.update(dict.fromkeys(missing, now_iso()))


# The record fields that describe the build (copied as they are when the same build deploys elsewhere).
BUILD_FIELDS = (
    "build_key", "build_id", "build_number", "build_url", "build_finished", "build_queued", "organization_url",
    "organization", "project", "definition", "source_branch", "source_commit", "source_repository_id",
    "source_repository_type",
)


def build_fields(record: DeploymentRecord) -> dict[str, Any]:
    """The build's fields of `record`, for another deployment of the same build (a promotion, a release)."""
    return {name: getattr(record, name) for name in BUILD_FIELDS}


def target_fields(route: Route, env: Environment) -> dict[str, Any]:
    """The record fields that come from the routing target."""
    return {
        "route": route.name,
        "environment": env.name,
        "repository": env.repository,
        "file": env.file,
        "keys": list(env.keys),
        "promotion": env.promotion,
        "argocd_app": env.argocd.app if env.argocd else None,
    }


class Effect(Protocol):
    """Something written in the same transaction as a record change (the outbox): a job, a pending bump."""

    def write(self, pipe: Pipeline, queue_name: str | None) -> None: ...


@dataclass(frozen=True)
class JobSpec:
    """Queue a job (by name, JSON-able arguments)."""

    function: str
    args: tuple[Any, ...]
    job_id: str
    run_at: float | None = None  # epoch seconds; None: now
    priority: bool = False  # started before the backlog (a step a verdict waits for, not a report)

    def write(self, pipe: Pipeline, queue_name: str | None) -> None:
        Jobs((self,)).write(pipe, queue_name)


@dataclass(frozen=True)
class Jobs:
    """Queue many jobs: one job key each, one queue write for all (a batch of verdicts and their reports)."""

    specs: tuple[JobSpec, ...]

    def write(self, pipe: Pipeline, queue_name: str | None) -> None:
        if queue_name is None:
            raise RuntimeError("this store has no queue name: it cannot queue jobs")
        add_jobs(pipe, queue_name, [(spec.function, spec.args, spec.job_id, spec.run_at, spec.priority)
                                    for spec in self.specs])


@dataclass(frozen=True)
class SortedSetAdd:
    """Add a member to a sorted set unless it is there (e.g. a bump to its repository's pending set)."""

    key: str
    member: str
    score: float

    def write(self, pipe: Pipeline, queue_name: str | None) -> None:
        pipe.zadd(self.key, {self.member: self.score}, nx=True)


@dataclass(frozen=True)
class LastSucceeded:
    """The environment's "last succeeded" pointer, written in the transaction that sets a success verdict: what a
    rollback restores. Not the writer's last setter (the last *written* build, which may be the failed one)."""

    key: str
    record: DeploymentRecord
    ttl: int
    keep: int = 20  # the newest first: a rollback restores the newest one whose tag is not what runs now

    def write(self, pipe: Pipeline, queue_name: str | None) -> None:
        _push_pointers(pipe, [self])

    def pointer(self) -> str:
        r = self.record
        pointer = {"deployment_id": r.id, "kind": r.kind, "build_key": r.build_key, "build_id": r.build_id,
                   "tag": r.tag, "commit": r.commit_sha, "at": now_iso()}
        return json.dumps(pointer, separators=(",", ":"))


def _push_pointers(pipe: Pipeline, pointers: builtins.list[LastSucceeded]) -> None:
    """Push pointers (all to one list, oldest first): only the newest `keep` of them can stay in the list."""
    last = pointers[-1]
    pipe.lpush(last.key, *(p.pointer() for p in pointers[-last.keep:]))
    pipe.ltrim(last.key, 0, last.keep - 1)
    pipe.expire(last.key, last.ttl)


@dataclass(frozen=True)
class _Pointers:
    """Many `LastSucceeded` of one list, in one push."""

    pointers: builtins.list[LastSucceeded]

    def write(self, pipe: Pipeline, queue_name: str | None) -> None:
        _push_pointers(pipe, self.pointers)


@dataclass(frozen=True)
class FailingSince:
    """Start the environment's restore clock, in the transaction that sets a `failed`/`timed-out` verdict; a clock
    already running (an earlier failure not yet restored) keeps its start."""

    key: str
    ttl: int

    def write(self, pipe: Pipeline, queue_name: str | None) -> None:
        pipe.set(self.key, f"{time.time():.3f}", nx=True, ex=self.ttl)


@dataclass
class Restored:
    """Stop the environment's restore clock, in the transaction that sets a success verdict (GETDEL): `since` is the
    failure's time afterwards, in the one process whose transaction set the verdict (None when nothing was failing).
    A re-run finds the verdict set, writes nothing and reads nothing: time to restore is observed at most once."""

    key: str
    since: float | None = None

    def write(self, pipe: Pipeline, queue_name: str | None) -> None:
        pipe.getdel(self.key)

    def took(self, results: builtins.list[Any]) -> None:
        raw = results[0] if results else None
        try:
            self.since = float(raw) if raw is not None else None
        except ValueError:
            self.since = None


def coalesce(effects: Iterable[Effect]) -> builtins.list[Effect]:
    """A batch's effects in fewer commands, with the same outcome: its jobs in one queue write, the pointers to each
    list in one push, and each restore clock read (GETDEL) by its first reader only (a later one would find it
    stopped, so it observes nothing either way). Effects of other kinds keep their order."""
    out: builtins.list[Effect] = []
    jobs: builtins.list[JobSpec] = []
    pointers: dict[str, builtins.list[LastSucceeded]] = {}
    stopped: set[str] = set()
    for effect in effects:
        if isinstance(effect, JobSpec):
            jobs.append(effect)
        elif isinstance(effect, LastSucceeded):
            if effect.key not in pointers:
                pointers[effect.key] = []
                out.append(_Pointers(pointers[effect.key]))
            pointers[effect.key].append(effect)
        elif isinstance(effect, Restored):
            if effect.key not in stopped:
                stopped.add(effect.key)
                out.append(effect)
        else:
            if isinstance(effect, FailingSince):  # the clock may run again: the next success reads it
                stopped.discard(effect.key)
            out.append(effect)
    return ([Jobs(tuple(jobs))] if jobs else []) + out


class DeploymentStore:
    def __init__(self, redis: Redis, keys: Keys | None = None, retention_seconds: float = 30 * 86400,
                 queue_name: str | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.ttl = int(retention_seconds)
        self.queue_name = queue_name

    def _index(self, pipe: Pipeline, record: DeploymentRecord, old_state: str | None) -> None:
        """Queue the index changes for `record` (now in `record.state`, before in `old_state`) on a MULTI pipeline."""
        if old_state == record.state:
            return
        if old_state in ACTIVE_STATES:
            pipe.zrem(self.keys.state_index(old_state), record.id)
        if record.state in ACTIVE_STATES:
            pipe.zadd(self.keys.state_index(record.state), {record.id: time.time()})

    def _index_many(self, pipe: Pipeline, moves: dict[tuple[str, str], builtins.list[str]]) -> None:
        """`_index` for a batch: one command per state index for all the records that left or entered it."""
        now = time.time()
        for (old_state, new_state), ids in moves.items():
            if old_state == new_state:
                continue
            if old_state in ACTIVE_STATES:
                pipe.zrem(self.keys.state_index(old_state), *ids)
            if new_state in ACTIVE_STATES:
                pipe.zadd(self.keys.state_index(new_state), dict.fromkeys(ids, now))

    def _outbox(self, pipe: Pipeline, effects: Iterable[Effect]) -> builtins.list[tuple[Effect, int, int]]:
        """Queue the effects; returns where each one's replies will be in the transaction's results."""
        spans = []
        for effect in effects:
            start = len(pipe.command_stack)
            effect.write(pipe, self.queue_name)
            spans.append((effect, start, len(pipe.command_stack)))
        return spans

    @staticmethod
    def _hand_back(spans: builtins.list[tuple[Effect, int, int]], results: builtins.list[Any]) -> None:
        """Give the effects that read (e.g. `Restored`) their replies, once the transaction executed."""
        for effect, start, end in spans:
            took = getattr(effect, "took", None)
            if took is not None:
                took(results[start:end])

    async def create(self, record: DeploymentRecord, *, then: Iterable[Effect] = ()) -> bool:
        """Store a new record with its indexes (and queue `then`), in one transaction; False (and nothing changed)
        when a record with that id exists already."""
        key = self.keys.deployment(record.id)
        jobs = list(then)
        for _ in range(50):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    if await pipe.exists(key):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, encode_record(record), ex=self.ttl)
                    pipe.zadd(self.keys.deployments, {record.id: record.created})
                    pipe.zremrangebyscore(self.keys.deployments, 0, time.time() - self.ttl)
                    if record.organization is None:  # only the legacy identity is ever looked up (`for_build`)
                        pipe.sadd(self.keys.build_deployments(record.build_key), record.id)
                        pipe.expire(self.keys.build_deployments(record.build_key), self.ttl)
                    self._index(pipe, record, None)
                    self._outbox(pipe, jobs)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise RuntimeError(f"deployment {record.id}: too much contention on the record")

    async def get(self, deployment_id: str) -> DeploymentRecord | None:
        raw = await self.redis.get(self.keys.deployment(deployment_id))
        return decode_record(raw) if raw else None

    async def _mutate(self, deployment_id: str, change: Callable[[DeploymentRecord], bool],
                      then: Iterable[Effect] = ()) -> DeploymentRecord | None:
        """Read, change and write one record atomically (optimistic WATCH/MULTI, retried on contention), moving its
        state index with it and queuing `then` in the same transaction.

        `change` edits the record in place and returns False to leave it unwritten (then None is returned).
        """
        key = self.keys.deployment(deployment_id)
        jobs = list(then)
        for _ in range(50):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise KeyError(deployment_id)
                    record = decode_record(raw)
                    old_state = record.state
                    if not change(record):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return None
                    record.updated = time.time()
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, encode_record(record), keepttl=True)
                    self._index(pipe, record, old_state)
                    spans = self._outbox(pipe, jobs)
                    self._hand_back(spans, await pipe.execute())
                    return record
                except WatchError:
                    continue
        raise RuntimeError(f"deployment {deployment_id}: too much contention on the record")

    async def _mutate_many(self, ids: Iterable[str], change: Callable[[DeploymentRecord], bool],
                           then: Callable[[DeploymentRecord], Iterable[Effect]] | None = None,
                           ) -> builtins.list[DeploymentRecord]:
        """`_mutate` for many records in one transaction (WATCH all, one MGET, one MULTI): what a watcher does when
        hundreds of deployments waiting on one application move together. Records that are gone or that `change`
        leaves alone are skipped; returns the records written. Contention retries the whole batch."""
        wanted = builtins.list(dict.fromkeys(ids))
        if not wanted:
            return []
        keys = [self.keys.deployment(i) for i in wanted]
        for _ in range(50):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*keys)
                    raws = await pipe.mget(keys)
                    written: builtins.list[DeploymentRecord] = []
                    moves: dict[tuple[str, str], builtins.list[str]] = {}
                    effects: builtins.list[Effect] = []
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for key, raw in zip(keys, raws, strict=True):
                        if raw is None:
                            continue
                        record = decode_record(raw)
                        old_state = record.state
                        if not change(record):
                            continue
                        record.updated = time.time()
                        pipe.set(key, encode_record(record), keepttl=True)
                        moves.setdefault((old_state, record.state), []).append(record.id)
                        effects += then(record) if then is not None else ()
                        written.append(record)
                    if not written:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return []
                    self._index_many(pipe, moves)
                    spans = self._outbox(pipe, coalesce(effects))
                    self._hand_back(spans, await pipe.execute())
                    return written
                except WatchError:
                    continue
        raise RuntimeError(f"{len(wanted)} deployments: too much contention on the records")

    async def stamp_many(self, ids: Iterable[str], stamps: Iterable[str]) -> builtins.list[DeploymentRecord]:
        """Add timeline stamps to many records in one transaction (a stamp already there keeps its time)."""
        names = tuple(stamps)

        def change(record: DeploymentRecord) -> bool:
            if all(name in record.timeline for name in names):
                return False
            record.stamp(*names)
            return True

        return await self._mutate_many(ids, change)

    async def finish_many(self, reasons: dict[str, str], verdict: Verdict, *, stamp: Iterable[str] = (),
                          then: Callable[[DeploymentRecord], Iterable[Effect]] | None = None,
                          ) -> builtins.list[DeploymentRecord]:
        """`finish` for many deployments with one verdict (each with its reason), in one transaction: the records
        this call decided (the others had a verdict already or are gone). `then(record)` gives each one's outbox."""
        names = tuple(stamp)

        def change(record: DeploymentRecord) -> bool:
            if record.verdict is not None or not allowed(record.state, "reporting"):
                return False
            record.verdict, record.reason, record.state = verdict, reasons[record.id], "reporting"
            record.stamp(*names, "finished")
            return True

        return await self._mutate_many(reasons, change, then)

    async def update(self, deployment_id: str, *, stamp: Iterable[str] = (), then: Iterable[Effect] = (),
                     **changes: Any) -> DeploymentRecord:
        """Apply field changes and timeline stamps atomically; KeyError when the record is gone.

        A state change that is not an arrow of the state machine (a late job writing to a record that moved on) is
        ignored, and so are verdict and reason once set: a late job cannot reopen a deployment.
        """

        def change(record: DeploymentRecord) -> bool:
            for name, value in changes.items():
                if name == "state" and not allowed(record.state, value):
                    continue
                if record.verdict is not None and name in ("verdict", "reason"):
                    continue
                setattr(record, name, value)
            record.stamp(*stamp)
            return True

        record = await self._mutate(deployment_id, change, then)
        assert record is not None  # change() always writes
        return record

    async def advance(self, deployment_id: str, expect: Iterable[str], to: State, *, stamp: Iterable[str] = (),
                      then: Iterable[Effect] = (), **changes: Any) -> DeploymentRecord | None:
        """Move the record from one of the `expect` states to `to` (with `changes`), and queue `then`, atomically.
        None (nothing written) when the record is in another state: someone else moved it on."""
        accepted = set(expect)

        def change(record: DeploymentRecord) -> bool:
            if record.state not in accepted or not allowed(record.state, to):
                return False
            for name, value in changes.items():
                setattr(record, name, value)
            record.state = to
            record.stamp(*stamp)
            return True

        return await self._mutate(deployment_id, change, then)

    async def finish(self, deployment_id: str, verdict: Verdict, reason: str, *, then: Iterable[Effect] = (),
                     **changes: Any) -> DeploymentRecord | None:
        """Set the verdict once and move to `reporting`, queuing `then` (the final report) in the same transaction.
        The record when this call set the verdict; None when it had one already (a re-run does nothing)."""

        def change(record: DeploymentRecord) -> bool:
            if record.verdict is not None or not allowed(record.state, "reporting"):
                return False
            for name, value in changes.items():
                setattr(record, name, value)
            record.verdict, record.reason, record.state = verdict, reason, "reporting"
            record.stamp("finished")
            return True

        return await self._mutate(deployment_id, change, then)

    async def mark_done(self, deployment_id: str, *, reported: bool = True) -> DeploymentRecord | None:
        """`reporting → done` once every final delivery landed (`reported`) or was given up; None when the record was
        not in `reporting`."""
        return await self.advance(deployment_id, ("reporting",), "done", stamp=("reported",) if reported else ())

    async def delivered(self, deployment_id: str, sink: str, what: str) -> None:
        """Record what a report sink received (the ledger that keeps final reports from being sent twice)."""

        def change(record: DeploymentRecord) -> bool:
            if record.delivered.get(sink) == what:
                return False
            record.delivered[sink] = what
            return True

        await self._mutate(deployment_id, change)

    # -- the state indexes --------------------------------------------------------------------------------------------

    async def state_summary(self) -> dict[str, tuple[int, float | None]]:
        """For each active state: how many deployments are in it, and since when the oldest one is (epoch seconds)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for state in ACTIVE_STATES:
                pipe.zcard(self.keys.state_index(state))
                pipe.zrange(self.keys.state_index(state), 0, 0, withscores=True)
            answers = await pipe.execute()
        out: dict[str, tuple[int, float | None]] = {}
        for i, state in enumerate(ACTIVE_STATES):
            count, oldest = answers[2 * i], answers[2 * i + 1]
            out[state] = (int(count), float(oldest[0][1]) if oldest else None)
        return out

    async def in_flight(self) -> int:
        """Deployments without a verdict yet (the sum of the in-flight states' indexes)."""
        summary = await self.state_summary()
        return sum(summary[state][0] for state in IN_FLIGHT_STATES)

    async def in_state(self, state: str, *, entered_before: float, limit: int = 200) -> builtins.list[str]:
        """Ids of deployments in `state` that entered it before `entered_before`, oldest first."""
        ids = await self.redis.zrangebyscore(self.keys.state_index(state), 0, entered_before, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def drop_from_index(self, state: str, deployment_id: str) -> None:
        await self.redis.zrem(self.keys.state_index(state), deployment_id)

    async def migrate_legacy_in_flight(self) -> int:
        """Index deployments of the set that counted in-flight work before the state machine; returns how many."""
        members = await self.redis.smembers(self.keys.legacy_in_flight)  # type: ignore[misc]
        moved = 0
        for member in members:
            dep = member.decode() if isinstance(member, bytes) else str(member)
            record = await self.get(dep)
            if record is not None and record.state in ACTIVE_STATES:
                await self.redis.zadd(self.keys.state_index(record.state), {dep: record.updated}, nx=True)
                moved += 1
            await self.redis.srem(self.keys.legacy_in_flight, dep)  # type: ignore[misc]
        return moved

    async def for_build(self, build_key: str) -> list[DeploymentRecord]:
        """Deployments of a build under the legacy identity (records without an organization, and every record of the
        versions before organizations were configuration): the only ones `workers.deploy` looks up this way."""
        ids = sorted(await self.redis.smembers(self.keys.build_deployments(build_key)))  # type: ignore[misc]
        records = [await self.get(i.decode() if isinstance(i, bytes) else i) for i in ids]
        return [r for r in records if r is not None]

    async def list(
        self,
        *,
        build_id: int | None = None,
        route: str | None = None,
        environment: str | None = None,
        verdict: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[DeploymentRecord], int | None]:
        """Newest first, filtered; returns the page and the offset of the next page (None at the end)."""
        out: list[DeploymentRecord] = []
        matched = 0
        start = 0
        batch = 200
        while True:
            ids = await self.redis.zrevrange(self.keys.deployments, start, start + batch - 1)
            if not ids:
                return out, None
            start += batch
            raws = await self.redis.mget([self.keys.deployment(i.decode() if isinstance(i, bytes) else i)
                                          for i in ids])
            for raw in raws:
                if raw is None:
                    continue
                rec = decode_record(raw)
                if build_id is not None and rec.build_id != build_id:
                    continue
                if route is not None and rec.route != route:
                    continue
                if environment is not None and rec.environment != environment:
                    continue
                if verdict is not None and (rec.verdict or "in-flight") != verdict:
                    continue
                if matched >= offset:
                    if len(out) == limit:
                        return out, matched
                    out.append(rec)
                matched += 1

    # -- holds -------------------------------------------------------------------------------------------------

    def last_succeeded_effect(self, record: DeploymentRecord) -> LastSucceeded:
        return LastSucceeded(self.keys.last_succeeded(record.route, record.environment), record, self.ttl)

    def failing_effect(self, record: DeploymentRecord) -> FailingSince:
        return FailingSince(self.keys.failing_since(record.route, record.environment), self.ttl)

    def restored_effect(self, record: DeploymentRecord) -> Restored:
        return Restored(self.keys.failing_since(record.route, record.environment))

    async def last_succeeded(self, route: str, environment: str) -> builtins.list[dict[str, Any]]:
        """What `LastSucceeded` wrote, newest first: deployment_id, kind, build_key, build_id, tag, commit, at."""
        raws = await self.redis.lrange(self.keys.last_succeeded(route, environment), 0, -1)  # type: ignore[misc]
        return [json.loads(raw) for raw in raws]

    async def set_hold(self, route: str, environment: str, reason: str, by: str = "operator",
                       note: str | None = None, *, rollback: str | None = None,
                       cause: str | None = None) -> dict[str, str]:
        hold = {"route": route, "environment": environment, "reason": reason, "by": by, "since": now_iso()}
        if note:
            hold["note"] = note
        if rollback:
            hold["rollback"] = rollback  # the rollback deployment that holds the environment
        if cause:
            hold["cause"] = cause  # rollback | manual-change | rollback-failed
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.hold(route, environment), json.dumps(hold))
            pipe.sadd(self.keys.holds, f"{route}:{environment}")
            await pipe.execute()
        return hold

    async def release_hold(self, route: str, environment: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.hold(route, environment))
            pipe.srem(self.keys.holds, f"{route}:{environment}")
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def get_hold(self, route: str, environment: str) -> dict[str, str] | None:
        raw = await self.redis.get(self.keys.hold(route, environment))
        return json.loads(raw) if raw else None

    async def list_holds(self) -> builtins.list[dict[str, str]]:
        out = []
        for member in sorted(await self.redis.smembers(self.keys.holds)):  # type: ignore[misc]
            text = member.decode() if isinstance(member, bytes) else member
            route, _, env = text.partition(":")
            hold = await self.get_hold(route, env)
            if hold:
                out.append(hold)
        return out
