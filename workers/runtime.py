"""The worker process's resilience, on top of arq: it never exits on a Redis outage, a killed worker's jobs are
picked up by another within seconds, and a transient error inside a job is a retry, never a failed job.

Why a heartbeat rather than short job timeouts: arq marks a running job "in progress" for one worker-wide time (the
longest job timeout + 10 s: 970 s with the default git timeouts), and no other worker may take the job before the
marker expires. Shortening every job timeout would cut real work short (a push to a large repository may take a
minute). Instead the marker lives `lease` seconds only (`BRIDGE_JOB_LEASE_SECONDS`, default 15) and the worker that
runs the job renews it several times per lease while the job runs. A worker killed with `kill -9` stops renewing: its
jobs, still in the queue, are taken by another worker within one lease (every job is idempotent, see
`bridge.lifecycle`).

Redis outages: connecting, the poll loop, finishing a job and the health record all retry with bounded, jittered
back-off (`bridge.errors.retry_delay`) instead of letting arq's main loop end. `connected` is false meanwhile (the
readiness probe); `last_loop` keeps moving (the liveness probe), so a failover does not get every worker restarted.

Pickup: arq polls the queue every `poll_delay`, so a job waited half of it on average before it started. Redis (6 or
later) also tells a connection whenever a key under the queue's name changes (client-side caching's broadcast mode:
`CLIENT TRACKING ... BCAST PREFIX <queue>`, redirected to itself and read as `__redis__:invalidate` messages; no
server configuration, no change to who enqueues). Each message wakes the poll loop at once. It is only a hint: a lost
message, an older Redis or a dropped listener means polling every `poll_delay`, as before.

Timers before backlog: arq starts the ready jobs oldest score first, so a deferred job (an Argo CD watcher's tick, due
at its poll interval) waits behind every job queued before it came due — during a burst of thousands of builds or
reports, for many intervals. A job named in the queue's priority set (`prioritize`: job id → due time) is started
before the backlog once due; it is still the same arq job (same id, same queue entry), so it runs once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from arq import Retry, Worker
from arq.constants import in_progress_key_prefix
from arq.typing import WorkerCoroutine
from arq.utils import timestamp_ms
from redis.exceptions import RedisError, ResponseError

from bridge.errors import is_transient, retry_delay
from bridge.queue import priority_key
from workers.context import Ctx

log = logging.getLogger("gitops_bridge.worker")

PRIORITY_FORGET_MS = 3_600_000  # entries of jobs that ran elsewhere or vanished are dropped after an hour
PRIORITY_STALE_ROOM = 20  # entries read beyond the free slots: stale ones (ran elsewhere) are dropped as met


async def prioritize(redis: Any, queue_name: str, job_id: str, due: float) -> None:
    """Start job `job_id` (already queued) before the backlog once `due` (epoch seconds) has come."""
    await redis.zadd(priority_key(queue_name), {job_id: int(due * 1000)})

# KEYS: in-progress marker, queue; ARGV: job id, now (ms), lease (ms). The job's score when claimed; CLAIM_GONE when
# it is no longer queued; CLAIM_LATER when it runs elsewhere or is not due yet — exactly arq's checks, atomically.
CLAIM_GONE, CLAIM_LATER = -1, -2
CLAIM_LUA = """
local score = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]))
if not score or score == 0 then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 or score > tonumber(ARGV[2]) then return -2 end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""
FINISH_ATTEMPTS = 8
LISTEN_PING_S = 15.0  # a listener that heard nothing for this long checks its connection


class BridgeWorker(Worker):
    """arq's Worker, made to outlive Redis outages and to release a dead worker's jobs in seconds."""

    def __init__(self, *args: Any, lease_seconds: float = 15.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = max(1.0, lease_seconds)
        self.heartbeat_s = self.in_progress_timeout_s / 4
        self.connected = False
        self.last_loop = time.monotonic()
        self.outages = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self.queue_changed = asyncio.Event()
        self._claim_script: Any = None

    async def main(self) -> None:
        if self._pool is None:
            raise RuntimeError("BridgeWorker needs redis_pool= (bridge.queue.open_redis)")
        await self._until_connected()
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self._until_done("start-up", functools.partial(self.on_startup, self.ctx))
        log.info("worker started: %d functions, queue %s", len(self.functions), self.queue_name)
        self._heartbeat = asyncio.create_task(self._renew_in_progress(), name="in-progress-heartbeat")
        self._listener = asyncio.create_task(self._listen_to_queue(), name="queue-listener")
        try:
            await self._poll_loop()
        finally:  # the loop's end (burst done, an error, cancelled) ends the listener and closes its connection
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)

    async def _poll_loop(self) -> None:
        failures = 0
        while True:
            try:
                self.queue_changed.clear()  # what changes from here on is seen by the next poll
                await self._poll_iteration()
                if not self.connected:
                    log.info("Redis is back after %d failed attempt(s); resuming", failures)
                self.connected, failures = True, 0
            except Exception as exc:  # noqa: BLE001 - Redis errors are survived, anything else is a bug: exit
                if not (is_transient(exc) or isinstance(exc, RedisError)):
                    raise
                failures += 1
                if self.connected:
                    self.outages += 1
                    log.warning("Redis unavailable (%s: %s); the worker keeps running and retries",
                                type(exc).__name__, exc)
                self.connected = False
                await asyncio.sleep(retry_delay(failures, base=0.2, cap=5.0))
            self.last_loop = time.monotonic()
            if self.burst and await self._burst_done():
                return
            await self._until_next_poll()

    async def _until_next_poll(self) -> None:
        try:
            async with asyncio.timeout(self.poll_delay_s):
                await self.queue_changed.wait()
        except TimeoutError:
            pass

    async def _listen_to_queue(self) -> None:
        """Set `queue_changed` whenever Redis reports a change under the queue's name (see the module docstring)."""
        failures = 0
        while True:
            conn = self.pool.connection_pool.make_connection()  # type: ignore[no-untyped-call]
            conn.health_check_interval = 0  # redis-py's PING check expects a plain reply, not a subscriber's
            try:
                await conn.connect()
                await conn.send_command("CLIENT", "ID", check_health=False)
                client_id = await conn.read_response()
                await conn.send_command("CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST", "PREFIX",
                                        self.queue_name, check_health=False)
                await conn.read_response()
                await conn.send_command("SUBSCRIBE", "__redis__:invalidate", check_health=False)
                await conn.read_response()
                failures = 0
                while True:
                    message = await conn.read_response(timeout=LISTEN_PING_S)
                    if message is None:
                        await conn.send_command("PING", check_health=False)
                    self.queue_changed.set()
            except ResponseError as exc:  # Redis < 6, or CLIENT refused: polling alone
                log.info("no queue notifications from this Redis (%s); polling every %.2fs", exc, self.poll_delay_s)
                return
            except Exception as exc:  # noqa: BLE001 - a dropped listener only slows pickup to the poll delay
                failures += 1
                log.debug("queue listener: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(retry_delay(failures, base=0.2, cap=5.0))
            finally:
                await conn.disconnect()

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started():
            await asyncio.gather(*self.tasks.values())
            return True
        if await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _until_connected(self) -> None:
        failures = 0
        while True:
            try:
                await self.pool.ping()
                self.connected = True
                return
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc):
                    raise
                failures += 1
                if failures == 1:
                    log.warning("waiting for Redis (%s: %s)", type(exc).__name__, exc)
                self.last_loop = time.monotonic()
                await asyncio.sleep(retry_delay(failures, base=0.2, cap=5.0))

    async def _until_done(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        failures = 0
        while True:
            try:
                await call()
                return
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc):
                    raise
                failures += 1
                log.warning("%s: Redis unavailable (%s); trying again", what, type(exc).__name__)
                self.last_loop = time.monotonic()
                await asyncio.sleep(retry_delay(failures, base=0.2, cap=5.0))

    async def _renew_in_progress(self) -> None:
        """Keep the in-progress markers of this worker's running jobs alive (and only those)."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            running = [job_id for job_id, task in list(self.tasks.items()) if not task.done()]
            if not running:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for job_id in running:
                        pipe.pexpire(in_progress_key_prefix + job_id, int(self.in_progress_timeout_s * 1000))
                    await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - a missed renewal only lets another worker re-run the job
                log.debug("in-progress heartbeat failed: %s", exc)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's `start_jobs`, with the job slot (semaphore and counter) owned by exactly one party at a time.

        arq takes the slot before it marks a job in progress and gives it back on several paths inside a Redis
        pipeline; when Redis fails there (or while the pipeline unwatches), the slot either leaks for good (enough
        outages and the worker takes no job at all) or is given back twice ("BoundedSemaphore released too many
        times", and the worker exits). Here the slot is given back in one place unless a task was started, which
        then owns it until it completes.

        Due priority jobs go first (module docstring)."""
        urgent = await self._due_priority()
        if urgent:
            job_ids = urgent + [j for j in job_ids if j not in set(urgent)]
        settled: list[bytes] = []  # claimed here, or gone from the queue: either way off the priority set
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                break
            self.job_counter += 1
            job_id = job_id_b.decode()
            answer: int | None = None
            try:
                answer = await self._claim(job_id)
            finally:
                if answer is None or answer < 0:  # not ours, or Redis failed: the slot goes back here and only here
                    self.job_counter -= 1
                    self.sem.release()
            if answer != CLAIM_LATER:
                settled.append(job_id_b)
            if answer < 0:
                continue
            score = answer
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
        done = [j for j in urgent if j in set(settled)]
        if done:  # an entry of a job that ran elsewhere would otherwise be tried first at every poll for an hour
            await self.pool.zrem(priority_key(self.queue_name), *done)

    async def _claim(self, job_id: str) -> int:
        """Mark the job in progress for this worker (a `lease`-long marker, see the heartbeat); its queue score when
        this worker now owns it, CLAIM_GONE when it is done (no longer queued), CLAIM_LATER when it runs elsewhere or
        is deferred. One script call (arq's own claim takes a WATCH, two reads and a MULTI: four round trips a job).
        A Redis error raises: a marker that was set but not confirmed expires within one lease and the job runs again
        (idempotent)."""
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(CLAIM_LUA)
        score = await self._claim_script(keys=[in_progress_key_prefix + job_id, self.queue_name],
                                         args=[job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)])
        return int(score)

    async def _due_priority(self) -> list[bytes]:
        key = priority_key(self.queue_name)
        now = int(time.time() * 1000)
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - PRIORITY_FORGET_MS)
            pipe.zrangebyscore(key, "-inf", now, start=0, num=self.max_jobs + PRIORITY_STALE_ROOM)
            _, due = await pipe.execute()
        return [j if isinstance(j, bytes) else str(j).encode() for j in due]

    async def finish_job(self, *args: Any, **kwargs: Any) -> None:
        await self._retrying("finishing a job", functools.partial(super().finish_job, *args, **kwargs))

    async def finish_failed_job(self, *args: Any, **kwargs: Any) -> None:
        await self._retrying("finishing a failed job", functools.partial(super().finish_failed_job, *args, **kwargs))

    async def _retrying(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        """A few quick tries; after that the job stays queued and is re-run when its marker expires (idempotent)."""
        for attempt in range(FINISH_ATTEMPTS):
            if self._pool is None:  # closing: a job cut short stays queued and runs again elsewhere
                return
            try:
                await call()
                return
            except Exception as exc:  # noqa: BLE001
                if not is_transient(exc) or attempt + 1 == FINISH_ATTEMPTS:
                    raise
                await asyncio.sleep(retry_delay(attempt, base=0.1, cap=2.0))

    async def heart_beat(self) -> None:
        try:
            await super().heart_beat()
        except Exception as exc:  # noqa: BLE001 - the health record and cron are re-tried next iteration
            if not is_transient(exc):
                raise
            log.debug("health record / cron skipped: %s", exc)

    async def close(self) -> None:
        """Stop: cancel the running jobs (re-run elsewhere, they are idempotent), then close Redis."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        running = [t for t in self.tasks.values() if not t.done()]
        if running:
            log.info("worker stopping: %d job(s) cut short will run again elsewhere", len(running))
        for task in running:
            task.cancel()
        if self.main_task is not None:
            self.main_task.cancel()
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await self.pool.delete(self.health_check_key)
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
        except Exception as exc:  # noqa: BLE001 - closing during an outage
            log.info("closing without Redis: %s", type(exc).__name__)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


def step(function: Callable[..., Awaitable[Any]]) -> WorkerCoroutine:
    """A job that turns every transient error (Redis, network, 5xx, a busy lock…) into an arq retry with bounded,
    jittered back-off, without limit on the count: only the deployment's deadline ends a step. Permanent errors
    propagate (each step turns those into a verdict itself)."""

    @functools.wraps(function)
    async def run(ctx: Ctx, *args: Any) -> Any:
        try:
            return await function(ctx, *args)
        except Retry:
            raise
        except Exception as exc:
            if not is_transient(exc):
                raise
            tries = int(ctx.get("job_try") or 1)
            delay = retry_delay(tries)
            log.warning("%s: transient error (%s: %s), try %d, again in %.1fs", function.__name__,
                        type(exc).__name__, exc, tries, delay)
            raise Retry(defer=delay) from exc

    return cast(WorkerCoroutine, run)
