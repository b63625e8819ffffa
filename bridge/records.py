"""Deployment records in Redis: one per (build × environment), with its timeline, kept for the retention period.

Both processes use this store: the workers write records, the web process reads them for `/api/deployments`.
Updates are optimistic (WATCH/MULTI), so concurrent writers never lose each other's fields, and `finish` sets a
verdict at most once, which makes re-run jobs harmless.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import WatchError

from bridge.queue import Keys

Verdict = Literal["succeeded", "failed", "timed-out", "superseded", "held", "rejected"]
VERDICTS: tuple[str, ...] = ("succeeded", "failed", "timed-out", "superseded", "held", "rejected")
State = Literal["received", "queued", "writing", "awaiting-merge", "verifying", "done"]
STAMPS = (
    "received", "queued", "started", "committed", "pushed", "pr_opened", "merged",
    "sync_started", "synced", "healthy", "finished", "reported",
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DeploymentRecord(BaseModel):
    id: str
    build_key: str
    build_id: int
    build_number: str | None = None
    build_url: str | None = None
    build_finished: str | None = None
    organization_url: str | None = None
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
    state: State = "received"
    verdict: Verdict | None = None
    reason: str | None = None
    commit_sha: str | None = None
    pr_url: str | None = None
    pr_number: int | None = None
    promoted_from: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    timeline: dict[str, str] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)

    def stamp(self, *names: str) -> None:
        for name in names:
            self.timeline.setdefault(name, now_iso())


class DeploymentStore:
    def __init__(self, redis: Redis, keys: Keys | None = None, retention_seconds: float = 30 * 86400) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self.ttl = int(retention_seconds)

    async def create(self, record: DeploymentRecord) -> bool:
        """Store a new record; False (and nothing changed) when one with that id exists already."""
        created = await self.redis.set(self.keys.deployment(record.id), record.model_dump_json(), nx=True, ex=self.ttl)
        if not created:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.deployments, {record.id: record.created})
            if record.verdict is None:
                pipe.sadd(self.keys.in_flight, record.id)
            pipe.zremrangebyscore(self.keys.deployments, 0, time.time() - self.ttl)
            pipe.sadd(self.keys.build_deployments(record.build_key), record.id)
            pipe.expire(self.keys.build_deployments(record.build_key), self.ttl)
            await pipe.execute()
        return True

    async def get(self, deployment_id: str) -> DeploymentRecord | None:
        raw = await self.redis.get(self.keys.deployment(deployment_id))
        return DeploymentRecord.model_validate_json(raw) if raw else None

    async def _mutate(self, deployment_id: str, change: Callable[[DeploymentRecord], bool]) -> DeploymentRecord | None:
        """Read, change and write one record atomically (optimistic WATCH/MULTI, retried on contention).

        `change` edits the record in place and returns False to leave it unwritten (then None is returned).
        """
        key = self.keys.deployment(deployment_id)
        for _ in range(50):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise KeyError(deployment_id)
                    record = DeploymentRecord.model_validate_json(raw)
                    if not change(record):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return None
                    record.updated = time.time()
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, record.model_dump_json(), keepttl=True)
                    await pipe.execute()
                    return record
                except WatchError:
                    continue
        raise RuntimeError(f"deployment {deployment_id}: too much contention on the record")

    async def update(self, deployment_id: str, *, stamp: Iterable[str] = (), **changes: Any) -> DeploymentRecord:
        """Apply field changes and timeline stamps atomically; KeyError when the record is gone.

        A finished record keeps its state and verdict: a late job cannot reopen it.
        """

        def change(record: DeploymentRecord) -> bool:
            for name, value in changes.items():
                if record.verdict is not None and name in ("state", "verdict", "reason"):
                    continue
                setattr(record, name, value)
            record.stamp(*stamp)
            return True

        record = await self._mutate(deployment_id, change)
        assert record is not None  # change() always writes
        return record

    async def finish(self, deployment_id: str, verdict: Verdict, reason: str, **changes: Any) -> bool:
        """Set the verdict once. True when this call set it; False when the record already had one."""

        def change(record: DeploymentRecord) -> bool:
            if record.verdict is not None:
                return False
            for name, value in changes.items():
                setattr(record, name, value)
            record.verdict, record.reason, record.state = verdict, reason, "done"
            record.stamp("finished")
            return True

        if await self._mutate(deployment_id, change) is None:
            return False
        await self.redis.srem(self.keys.in_flight, deployment_id)  # type: ignore[misc]
        return True

    async def in_flight(self) -> int:
        """Deployments without a verdict; members whose record expired (retention) are dropped on the way."""
        members = list(await self.redis.smembers(self.keys.in_flight))  # type: ignore[misc]
        if not members:
            return 0
        names = [m.decode() if isinstance(m, bytes) else m for m in members]
        present = await self.redis.exists(*[self.keys.deployment(n) for n in names])
        if present == len(names):
            return len(names)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(self.keys.deployment(name))
            gone = [n for n, alive in zip(names, await pipe.execute(), strict=True) if not alive]
        if gone:
            await self.redis.srem(self.keys.in_flight, *gone)  # type: ignore[misc]
        return len(names) - len(gone)

    async def for_build(self, build_key: str) -> list[DeploymentRecord]:
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
                rec = DeploymentRecord.model_validate_json(raw)
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

    async def set_hold(self, route: str, environment: str, reason: str, by: str = "operator",
                       note: str | None = None) -> dict[str, str]:
        hold = {"route": route, "environment": environment, "reason": reason, "by": by, "since": now_iso()}
        if note:
            hold["note"] = note
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
