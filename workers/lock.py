"""A Redis lock with a lease, renewal and a fencing token: one writer per repository across every worker process.

The lease bounds how long a dead holder blocks the others; a live holder renews it in the background. Every
acquisition takes a fencing token (a counter that only grows), and the holder checks that the lock still carries its
token (`ensure_held`) right before anything irreversible (a push, recording the outcome). Waiting is bounded and
returns a `LockOutcome`, never a bare bool.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

from redis.asyncio import Redis

from bridge.errors import LockBusy

# KEYS[1] lock key; ARGV[1] token; ARGV[2] lease in ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


FENCE_TTL_SECONDS = 86400


class LockOutcome(enum.Enum):
    ACQUIRED = "acquired"
    TIMED_OUT = "timed-out"


class LockLost(LockBusy):
    """The lease expired or another holder took the lock: stop before doing anything irreversible."""


class RedisLock:
    """One acquisition of the lock at `key`. Not reentrant; make a new instance per acquisition."""

    def __init__(self, redis: Redis, key: str, *, lease_seconds: float, renew: bool = True,
                 fenced: bool = True) -> None:
        self.redis = redis
        self.key = key
        self.fenced = fenced  # False: no fencing counter, so a per-deployment lock leaves no key behind
        self.lease_ms = max(100, int(lease_seconds * 1000))
        self.renew = renew
        self.fence: int | None = None
        self.token: str | None = None
        self.lost = False
        self._renewer: asyncio.Task[None] | None = None

    @property
    def fence_key(self) -> str:
        return f"{self.key}:fence"

    async def acquire(self, wait_seconds: float) -> LockOutcome:
        """Try until `wait_seconds` have passed (0: one attempt). Starts the renewal task when acquired."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_seconds)
        token = uuid.uuid4().hex
        delay = 0.02
        while True:
            if await self.redis.set(self.key, token, nx=True, px=self.lease_ms):
                if self.fenced:
                    # Taken after acquiring, so fences grow in the order holders got the lock. The counter outlives
                    # every lease by far but not forever.
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.incr(self.fence_key)
                        pipe.expire(self.fence_key, FENCE_TTL_SECONDS)
                        fence, _ = await pipe.execute()
                    self.fence = int(fence)
                self.token, self.lost = token, False
                if self.renew:
                    self._renewer = asyncio.create_task(self._renew_loop(), name=f"lock-renew:{self.key}")
                return LockOutcome.ACQUIRED
            remaining = deadline - loop.time()
            if remaining <= 0:
                return LockOutcome.TIMED_OUT
            await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.25)

    async def _renew_loop(self) -> None:
        interval = self.lease_ms / 3000
        while not self.lost:
            await asyncio.sleep(interval)
            try:
                renewed = await self._eval(_RENEW, self.token or "", str(self.lease_ms))
            except Exception:  # noqa: BLE001 - a failed renewal is retried; ensure_held decides
                continue
            if not renewed:
                self.lost = True

    async def ensure_held(self) -> None:
        """Raise LockLost unless the lock still carries our token (the fencing check)."""
        if self.token is None or self.lost:
            raise LockLost(f"lock {self.key} is not held")
        current = await self.redis.get(self.key)
        if current is None or (current.decode() if isinstance(current, bytes) else current) != self.token:
            self.lost = True
            raise LockLost(f"lock {self.key} was lost (lease expired or taken over)")

    async def release(self) -> bool:
        """Release if still ours; True when this call released it."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.token is None:
            return False
        token, self.token = self.token, None
        return bool(await self._eval(_RELEASE, token))

    async def _eval(self, script: str, *args: str) -> Any:
        # redis-py types eval() as sync-or-async; this client is the asyncio one.
        return await cast(Awaitable[Any], self.redis.eval(script, 1, self.key, *args))


@contextlib.asynccontextmanager
async def locked(redis: Redis, key: str, *, lease_seconds: float, wait_seconds: float,
                 fenced: bool = True) -> AsyncIterator[RedisLock]:
    """`async with locked(...) as lock:`; raises LockBusy when the lock is not acquired within `wait_seconds`."""
    lock = RedisLock(redis, key, lease_seconds=lease_seconds, fenced=fenced)
    if await lock.acquire(wait_seconds) is not LockOutcome.ACQUIRED:
        raise LockBusy(f"lock {key} is busy")
    try:
        yield lock
    finally:
        await lock.release()
