"""bridge.queue's build enqueue against a real Redis (a private server per test): `enqueue_build` and the batching
`BuildEnqueuer` — one atomic Lua call per build, concurrent calls sharing a round trip, each with its own answer."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis_server import PrivateRedis

from bridge.queue import (
    PROCESS_BUILD,
    BuildEnqueuer,
    Keys,
    NotReplicated,
    _build_call,
    _run_enqueues,
    build_job_id,
    enqueue_build,
)
from bridge.settings import Settings

QUEUE = "test:queue"
KEYS = Keys(prefix="test")


def pool(server: PrivateRedis) -> Any:
    from bridge.queue import open_redis

    return open_redis(Settings(redis_url=server.url, queue_name=QUEUE))


def event(build: int) -> dict[str, Any]:
    return {"event": {"build_id": build}, "received": "2026-01-01T00:00:00.000Z"}


def enqueuer(redis: Any, **kwargs: Any) -> BuildEnqueuer:
    return BuildEnqueuer(redis, KEYS, QUEUE, 3600, **kwargs)


async def test_concurrent_calls_share_round_trips_and_each_gets_its_own_answer(private_redis: PrivateRedis) -> None:
    redis = pool(private_redis)
    try:
        batcher = enqueuer(redis, max_batch=7)
        await batcher.enqueue(event(1), "org:p:1")  # build 1 already queued before the burst
        builds = [1, *range(2, 30), 5, 5]  # a known build, 28 new ones, build 5 three times at once
        outcomes = await asyncio.gather(*(batcher.enqueue(event(b), f"org:p:{b}") for b in builds))
        statuses = [(b, o.status) for b, o in zip(builds, outcomes, strict=True)]
        assert statuses[0] == (1, "duplicate")
        assert [s for b, s in statuses if b == 5] == ["queued", "duplicate", "duplicate"]
        assert all(s == "queued" for b, s in statuses[1:] if b != 5)
        assert [o.job_id for o in outcomes[:2]] == [build_job_id("org:p:1"), build_job_id("org:p:2")]
        assert await redis.zcard(QUEUE) == 29
        job = deserialize_job(await redis.get(job_key_prefix + build_job_id("org:p:17")), deserializer=None)
        assert (job.function, job.args) == (PROCESS_BUILD, (event(17),))
        assert await redis.exists(KEYS.seen("org:p:29")) == 1
    finally:
        await redis.aclose()


async def test_a_server_without_the_script_is_sent_the_script(private_redis: PrivateRedis) -> None:
    redis = pool(private_redis)
    try:
        batcher = enqueuer(redis)
        await redis.script_flush()
        first = await asyncio.gather(*(batcher.enqueue(event(b), f"org:p:{b}") for b in (1, 2, 1)))
        await redis.script_flush()
        single = await enqueue_build(redis, KEYS, QUEUE, event(3), "org:p:3", 3600)
        assert [o.status for o in first] == ["queued", "queued", "duplicate"]
        assert single.status == "queued"
        assert await redis.zcard(QUEUE) == 3
    finally:
        await redis.aclose()


async def test_an_error_of_one_call_fails_only_that_call(private_redis: PrivateRedis) -> None:
    redis = pool(private_redis)
    try:
        good = [_build_call(redis, KEYS, QUEUE, event(b), f"org:p:{b}", 3600)[1] for b in (1, 2)]
        bad = list(_build_call(redis, KEYS, QUEUE, event(3), "org:p:3", 3600)[1])
        bad[7] = "not-a-number"  # the job key's expiry: PSETEX refuses it inside the script
        results = await _run_enqueues(redis, [good[0], tuple(bad), good[1]], 0, 1000)
        assert results[0] == 1 and results[2] == 1
        assert isinstance(results[1], ResponseError)
        assert await redis.zcard(QUEUE) == 2
    finally:
        await redis.aclose()


async def test_a_failed_round_trip_fails_every_call_it_carried_and_the_next_ones_go_through(
    private_redis: PrivateRedis,
) -> None:
    redis = pool(private_redis)
    try:
        batcher = enqueuer(redis)
        await batcher.enqueue(event(1), "org:p:1")
        private_redis.stop()
        failed = await asyncio.gather(*(batcher.enqueue(event(b), f"org:p:{b}") for b in (2, 3, 4)),
                                      return_exceptions=True)
        assert all(isinstance(f, RedisConnectionError) for f in failed)
        private_redis.start()
        again = await asyncio.gather(*(batcher.enqueue(event(b), f"org:p:{b}") for b in (2, 3, 3)))  # no persistence
        assert [o.status for o in again] == ["queued", "queued", "duplicate"]
    finally:
        await redis.aclose()


async def test_too_few_replicas_fail_every_call_of_the_round_trip(private_redis: PrivateRedis) -> None:
    redis = pool(private_redis)
    try:
        batcher = enqueuer(redis, min_replicas=1, replica_wait_ms=20)
        results = await asyncio.gather(*(batcher.enqueue(event(b), f"org:p:{b}") for b in (1, 2, 2)),
                                       return_exceptions=True)
        assert all(isinstance(r, NotReplicated) for r in results)
        assert await redis.zcard(QUEUE) == 2  # on the master; Azure DevOps redelivers and waits for replicas again
        with pytest.raises(NotReplicated):
            await enqueue_build(redis, KEYS, QUEUE, event(1), "org:p:1", 3600, min_replicas=1, replica_wait_ms=20)
    finally:
        await redis.aclose()


async def test_a_caller_that_gives_up_does_not_disturb_the_others(private_redis: PrivateRedis) -> None:
    redis = pool(private_redis)
    try:
        batcher = enqueuer(redis)
        impatient = asyncio.create_task(batcher.enqueue(event(1), "org:p:1"))
        others = [asyncio.create_task(batcher.enqueue(event(b), f"org:p:{b}")) for b in (2, 3)]
        impatient.cancel()
        assert [(await o).status for o in others] == ["queued", "queued"]
        with pytest.raises(asyncio.CancelledError):
            await impatient
        assert (await batcher.enqueue(event(4), "org:p:4")).status == "queued"
    finally:
        await redis.aclose()


async def test_a_round_trip_redis_does_not_answer_in_time_fails_its_calls_and_the_waiting_ones(
    private_redis: PrivateRedis,
) -> None:
    redis = pool(private_redis)
    process = private_redis.process
    assert process is not None
    try:
        batcher = enqueuer(redis, timeout_s=0.5)
        await batcher.enqueue(event(1), "org:p:1")  # connected
        process.send_signal(signal.SIGSTOP)  # a hung server: the connection stays open, nothing answers
        try:
            carried = asyncio.create_task(batcher.enqueue(event(2), "org:p:2"))
            await asyncio.sleep(0.1)  # its round trip is under way
            waiting = [asyncio.create_task(batcher.enqueue(event(b), f"org:p:{b}")) for b in (3, 4)]
            results = await asyncio.gather(carried, *waiting, return_exceptions=True)
        finally:
            process.send_signal(signal.SIGCONT)
        assert all(isinstance(r, TimeoutError) for r in results), results
        assert (await batcher.enqueue(event(5), "org:p:5")).status == "queued"
    finally:
        await redis.aclose()
