from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis_server import shared_redis_url

from bridge.errors import LockBusy
from workers.lock import FENCE_TTL_SECONDS, LockLost, LockOutcome, RedisLock, locked

REDIS_URL = shared_redis_url(2)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def key() -> str:
    return f"test-lock:{uuid.uuid4().hex}"


async def test_one_holder_at_a_time_and_bounded_wait(redis: Redis, key: str) -> None:
    first = RedisLock(redis, key, lease_seconds=5)
    second = RedisLock(redis, key, lease_seconds=5)
    assert await first.acquire(0) is LockOutcome.ACQUIRED
    assert await second.acquire(0.2) is LockOutcome.TIMED_OUT
    assert await first.release() is True
    assert await second.acquire(0) is LockOutcome.ACQUIRED
    assert second.fence is not None and first.fence is not None and second.fence > first.fence
    await second.release()
    # the fence counter outlives every lease but does not stay forever; an unfenced lock leaves no key behind
    assert 0 < await redis.ttl(second.fence_key) <= FENCE_TTL_SECONDS
    unfenced = RedisLock(redis, key + ":unfenced", lease_seconds=5, fenced=False)
    assert await unfenced.acquire(0) is LockOutcome.ACQUIRED and unfenced.fence is None
    await unfenced.ensure_held()
    assert await unfenced.release() is True
    assert await redis.exists(unfenced.key, unfenced.fence_key) == 0


async def test_waiter_gets_the_lock_when_released(redis: Redis, key: str) -> None:
    first = RedisLock(redis, key, lease_seconds=5)
    assert await first.acquire(0) is LockOutcome.ACQUIRED
    second = RedisLock(redis, key, lease_seconds=5)
    waiter = asyncio.create_task(second.acquire(5))
    await asyncio.sleep(0.1)
    await first.release()
    assert await waiter is LockOutcome.ACQUIRED
    await second.release()


async def test_dead_holder_blocks_only_for_its_lease(redis: Redis, key: str) -> None:
    dead = RedisLock(redis, key, lease_seconds=0.3, renew=False)  # a holder that never renews: as if killed
    assert await dead.acquire(0) is LockOutcome.ACQUIRED
    other = RedisLock(redis, key, lease_seconds=5)
    assert await other.acquire(3) is LockOutcome.ACQUIRED
    with pytest.raises(LockLost):
        await dead.ensure_held()
    assert await dead.release() is False  # cannot release someone else's lock
    await other.ensure_held()
    await other.release()


async def test_renewal_keeps_a_live_holder(redis: Redis, key: str) -> None:
    holder = RedisLock(redis, key, lease_seconds=0.3)
    assert await holder.acquire(0) is LockOutcome.ACQUIRED
    await asyncio.sleep(1.0)  # three leases
    await holder.ensure_held()
    assert await RedisLock(redis, key, lease_seconds=1).acquire(0) is LockOutcome.TIMED_OUT
    await holder.release()
    assert await redis.exists(key) == 0


async def test_lost_lock_is_detected_before_acting(redis: Redis, key: str) -> None:
    holder = RedisLock(redis, key, lease_seconds=5)
    assert await holder.acquire(0) is LockOutcome.ACQUIRED
    await redis.set(key, "someone-else")  # e.g. taken over after a long pause
    with pytest.raises(LockLost):
        await holder.ensure_held()
    assert await holder.release() is False
    assert await redis.get(key) == b"someone-else"


async def test_locked_context_manager(redis: Redis, key: str) -> None:
    async with locked(redis, key, lease_seconds=5, wait_seconds=0) as lock:
        await lock.ensure_held()
        with pytest.raises(LockBusy):
            async with locked(redis, key, lease_seconds=5, wait_seconds=0.1):
                pass
    assert await redis.exists(key) == 0
