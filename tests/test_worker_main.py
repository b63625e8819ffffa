"""workers/main.py: the job registry (names are bridge/queue.py's), the reconcile cron (only with an Azure DevOps token
and organization URL), and the health app (/healthz, /metrics) on a real worker and a real Redis (db 8)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from arq import Worker
from arq.connections import RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from redis_server import shared_redis_url

from bridge import queue
from bridge.queue import FLUSH_REPOSITORY, PROCESS_BUILD, RECONCILE_BUILDS, REPORT_DEPLOYMENT, SWEEP_DEPLOYMENTS
from bridge.routing import RoutingConfig, parse_routing
from bridge.settings import Settings
from workers.main import build_worker, cron_jobs, health_app, job_functions, run_worker
from workers.runtime import CLAIM_GONE, CLAIM_LATER, CLAIM_LUA

DB = 8
QUEUE = "test-worker-main:queue"
ROUTING = parse_routing({
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [{"name": "api", "match": {"project": "Acme", "definition": "api-ci"},
                "environments": [{"name": "dev", "repository": "gitops", "file": "api/dev.yaml"}]}],
})

# Every public str constant of bridge/queue.py is a job name (the contract between the web side and the workers).
JOB_NAMES = {v for k, v in vars(queue).items() if k.isupper() and not k.startswith("_") and isinstance(v, str)}


def make_settings(tmp_path: Path, url: str = shared_redis_url(DB), **kwargs: Any) -> Settings:
    kwargs["git"] = {"work_dir": tmp_path / "repos", **kwargs.get("git", {})}
    return Settings(redis_url=url, queue_name=QUEUE, key_prefix="test-worker-main", **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_every_queue_name_is_a_job() -> None:
    assert len(JOB_NAMES) == 14
    assert RECONCILE_BUILDS in JOB_NAMES and PROCESS_BUILD in JOB_NAMES


async def test_registry_names_match_the_queue_contract(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, azure_devops={"token": "pat-123456", "organization_url": "https://dev.azure.com/acme/"})
    worker = build_worker(settings, ROUTING, burst=True)
    assert set(worker.functions) == JOB_NAMES
    for name, function in worker.functions.items():
        assert function.coroutine.__name__ == name  # the Python name is the job name too: greppable both ways
    assert worker.queue_name == QUEUE


async def test_without_azure_devops_there_is_no_cron(tmp_path: Path) -> None:
    worker = build_worker(make_settings(tmp_path), ROUTING, burst=True)
    assert set(worker.functions) == JOB_NAMES - {RECONCILE_BUILDS}
    assert [job.name for job in worker.cron_jobs] == [SWEEP_DEPLOYMENTS]


@pytest.mark.parametrize(("seconds", "expected"), [(10, set(range(0, 60, 10))), (0, None), (7, set(range(0, 60, 7)))])
def test_the_sweeper_runs_every_sweep_seconds_unless_off(tmp_path: Path, seconds: float,
                                                        expected: set[int] | None) -> None:
    jobs = {j.name: j for j in cron_jobs(make_settings(tmp_path, sweep_seconds=seconds))}
    if expected is None:
        assert SWEEP_DEPLOYMENTS not in jobs
    else:
        assert jobs[SWEEP_DEPLOYMENTS].second == expected and jobs[SWEEP_DEPLOYMENTS].run_at_startup


def test_git_jobs_get_a_timeout_that_covers_every_push_attempt(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, git={"timeout_seconds": 10, "push_attempts": 3})
    functions = {f.name: f for f in job_functions(settings)}
    assert functions[FLUSH_REPOSITORY].timeout_s == 50
    assert functions[queue.OPEN_PULL_REQUEST].timeout_s == 50


@pytest.mark.parametrize(("ado", "expected"), [
    ({}, False),
    ({"token": "pat-123456"}, False),
    ({"organization_url": "https://dev.azure.com/acme/"}, False),
    ({"token": "pat-123456", "organization_url": "https://dev.azure.com/acme/", "reconcile_seconds": 0}, False),
    ({"token": "pat-123456", "organization_url": "https://dev.azure.com/acme/"}, True),
])
def test_reconcile_cron_needs_a_token_and_an_organization(tmp_path: Path, ado: dict[str, Any], expected: bool) -> None:
    jobs = [j for j in cron_jobs(make_settings(tmp_path, azure_devops=ado)) if j.name != SWEEP_DEPLOYMENTS]
    assert [j.name for j in jobs] == ([RECONCILE_BUILDS] if expected else [])
    if expected:
        assert jobs[0].run_at_startup
        assert jobs[0].minute == set(range(0, 60, 5))  # the default 300 s


@pytest.mark.parametrize(("seconds", "minutes"), [(60, set(range(60))), (30, set(range(60))), (900, {0, 15, 30, 45})])
def test_reconcile_interval_in_minutes(tmp_path: Path, seconds: float, minutes: set[int]) -> None:
    ado = {"token": "pat-123456", "organization_url": "https://dev.azure.com/acme/", "reconcile_seconds": seconds}
    jobs = {j.name: j for j in cron_jobs(make_settings(tmp_path, azure_devops=ado))}
    assert jobs[RECONCILE_BUILDS].minute == minutes


# arq 0.28's Worker.close() calls redis-py's deprecated close(); harmless, and not ours to change.
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")
async def test_healthz_and_metrics_of_a_running_worker(tmp_path: Path, redis_url: Callable[[int], str]) -> None:
    url = redis_url(DB)
    port = free_port()
    settings = make_settings(tmp_path, url, host="127.0.0.1", worker_metrics_port=port)
    task = asyncio.ensure_future(run_worker(settings, ROUTING))
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=QUEUE)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            body = await _until_healthy(client, task)
            assert body["status"] == "ok"
            # a job runs through the registry (a report without Azure DevOps configured is skipped)
            job = await pool.enqueue_job(REPORT_DEPLOYMENT, "nope-dep", "started", _job_id="report-probe")
            assert job is not None
            for _ in range(400):
                body = (await client.get("/healthz")).json()
                if body["jobs_complete"] >= 1:
                    break
                await asyncio.sleep(0.05)
            assert body["jobs_complete"] >= 1 and body["jobs_failed"] == 0 and body["connected"] is True
            assert (await client.get("/readyz")).json() == {"status": "ready"}

            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "bridge_" in metrics.text
            assert (await client.get("/nope")).status_code == 404
        with redis.Redis.from_url(url) as r:
            assert r.exists("test-worker-main:worker:health")  # arq's health key carries our prefix
    finally:
        await pool.aclose()
        task.cancel()
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)  # a clean stop: closing the worker raised nothing
    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(httpx.ConnectError):  # the health server stops with the worker
            await client.get(f"http://127.0.0.1:{port}/healthz")


async def _until_healthy(client: httpx.AsyncClient, task: asyncio.Future[None]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while loop.time() < deadline:
        assert not task.done(), task.exception()
        with contextlib.suppress(httpx.TransportError):
            response = await client.get("/healthz")
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
        await asyncio.sleep(0.05)
    raise AssertionError("worker never became healthy")


async def _probe(worker: Worker, settings: Settings, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=health_app(worker, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        return await client.get(path)


async def test_liveness_survives_a_redis_outage_while_readiness_follows_it(tmp_path: Path, private_redis: Any) -> None:
    """A Redis failover must not get every worker restarted: /healthz stays 200, /readyz says 503 until it is back."""
    settings = make_settings(tmp_path, private_redis.url)
    worker = build_worker(settings, RoutingConfig(repositories={}, routes=[]))
    task = asyncio.ensure_future(worker.async_run())
    try:
        for _ in range(200):
            if getattr(worker, "connected", False):
                break
            await asyncio.sleep(0.05)
        assert (await _probe(worker, settings, "/healthz")).status_code == 200
        assert (await _probe(worker, settings, "/readyz")).status_code == 200
        private_redis.stop()
        response = await _probe(worker, settings, "/readyz")
        assert response.status_code == 503 and response.json()["status"] == "not ready"
        await asyncio.sleep(1.0)  # the worker's loop meets the outage and keeps turning
        assert not task.done()
        assert (await _probe(worker, settings, "/healthz")).status_code == 200
        private_redis.start()
        for _ in range(200):
            if (await _probe(worker, settings, "/readyz")).status_code == 200 and worker.connected:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.05)
        assert worker.connected and not task.done()  # type: ignore[attr-defined]
    finally:
        await worker.close()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_redis_failure_while_starting_a_job_gives_its_slot_back(tmp_path: Path, private_redis: Any) -> None:
    """arq takes a slot before marking a job in progress; a Redis error there must not leak it (ten such outages
    would leave a worker that never takes a job again)."""
    settings = make_settings(tmp_path, private_redis.url, worker_max_jobs=2)
    worker = build_worker(settings, RoutingConfig(repositories={}, routes=[]))
    free = worker.sem._value
    private_redis.stop()
    try:
        for _ in range(5):
            with pytest.raises(redis.exceptions.ConnectionError):
                await worker.start_jobs([b"some-job"])
        assert worker.job_counter == 0
        assert worker.sem._value == free  # every slot is free again
    finally:
        await worker.pool.aclose()


@pytest.mark.parametrize("elsewhere", [True, False], ids=["running-elsewhere", "claimable"])
async def test_a_connection_lost_after_the_claim_ran_gives_the_slot_back_exactly_once(
    tmp_path: Path, private_redis: Any, elsewhere: bool
) -> None:
    """The connection drops after the claim ran in Redis but before its answer came back: the slot must come back
    once (twice raised "BoundedSemaphore released too many times" and the worker exited), no job may start on a
    claim that was not confirmed, and the marker it may have set expires within one lease."""
    settings = make_settings(tmp_path, private_redis.url, worker_max_jobs=2)
    worker = build_worker(settings, RoutingConfig(repositories={}, routes=[]))
    await worker.pool.zadd(worker.queue_name, {"job-1": 1})
    if elsewhere:
        await worker.pool.set(in_progress_key_prefix + "job-1", b"1", px=60_000)
    real_script = worker.pool.register_script(CLAIM_LUA)

    async def dropping_script(**kwargs: Any) -> Any:
        await real_script(**kwargs)
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    worker._claim_script = dropping_script  # type: ignore[attr-defined]
    free = worker.sem._value
    try:
        for _ in range(2):
            with pytest.raises(redis.exceptions.ConnectionError):
                await worker.start_jobs([b"job-1"])
        assert (worker.job_counter, worker.sem._value, worker.tasks) == (0, free, {})
        ttl = await worker.pool.pttl(in_progress_key_prefix + "job-1")
        assert 0 < ttl <= (60_000 if elsewhere else settings.job_lease_seconds * 1000)
    finally:
        await worker.pool.aclose()


@pytest.mark.parametrize("marker,score,answer", [
    (False, 1, 1), (True, 1, CLAIM_LATER), (False, None, CLAIM_GONE), (False, 0, CLAIM_GONE),
    (False, "future", CLAIM_LATER), (True, None, CLAIM_GONE),
], ids=["due", "running-elsewhere", "gone", "zero-score", "deferred", "finished-elsewhere"])
async def test_the_claim_takes_only_a_due_job_nobody_runs(tmp_path: Path, private_redis: Any, marker: bool,
                                                          score: Any, answer: int) -> None:
    """arq's checks, in one script: a job is claimed (marker set for one lease, its score returned) only when it is
    queued, due and not marked in progress by another worker; otherwise it says whether the job is gone or may be
    claimable later."""
    settings = make_settings(tmp_path, private_redis.url, worker_max_jobs=2)
    worker = build_worker(settings, RoutingConfig(repositories={}, routes=[]))
    try:
        if score is not None:
            value = int(time.time() * 1000) + 60_000 if score == "future" else score
            await worker.pool.zadd(worker.queue_name, {"job-1": value})
        if marker:
            await worker.pool.set(in_progress_key_prefix + "job-1", b"elsewhere", px=60_000)
        got = await worker._claim("job-1")  # type: ignore[attr-defined]
        assert got == answer
        marked = await worker.pool.get(in_progress_key_prefix + "job-1")
        if answer > 0:
            assert marked == b"1"
            assert 0 < await worker.pool.pttl(in_progress_key_prefix + "job-1") <= settings.job_lease_seconds * 1000
        else:
            assert marked == (b"elsewhere" if marker else None)
    finally:
        await worker.pool.aclose()


async def test_a_queued_job_wakes_the_poll_loop_at_once(tmp_path: Path, private_redis: Any) -> None:
    """The worker hears of a job when it is queued (Redis's broadcast tracking of the keys under the queue's name)
    instead of at its next poll."""
    worker = build_worker(make_settings(tmp_path, private_redis.url), RoutingConfig(repositories={}, routes=[]))
    listener = asyncio.ensure_future(worker._listen_to_queue())
    pool = await create_pool(RedisSettings.from_dsn(private_redis.url), default_queue_name=QUEUE)
    try:
        for _ in range(200):  # until the listener is subscribed
            if (await pool.pubsub_numsub("__redis__:invalidate"))[0][1] == 1:
                break
            await asyncio.sleep(0.05)
        assert await pool.enqueue_job(REPORT_DEPLOYMENT, "nope-dep", "started", _job_id="wake-probe") is not None
        await asyncio.wait_for(worker.queue_changed.wait(), 10)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await pool.aclose()
        await worker.pool.aclose()


async def test_a_due_priority_job_starts_before_the_backlog_queued_before_it(redis_url: Callable[[int], str]) -> None:
    """An Argo CD watcher's tick is a timer: once due it runs before older ready jobs (a burst's builds, reports)."""
    from arq.worker import func

    from workers.runtime import BridgeWorker, prioritize

    pool = await create_pool(RedisSettings.from_dsn(redis_url(DB)))
    ran: list[str] = []

    async def job(ctx: dict[str, Any], name: str) -> None:
        ran.append(name)

    now = time.time()
    for n in range(30):  # the backlog: ready since ten seconds
        await pool.enqueue_job("job", f"backlog-{n}", _job_id=f"backlog-{n}", _queue_name=QUEUE,
                               _defer_until=datetime.fromtimestamp(now - 10 + n * 0.01, UTC))
    await pool.enqueue_job("job", "tick", _job_id="tick", _queue_name=QUEUE,
                           _defer_until=datetime.fromtimestamp(now - 1, UTC))
    await prioritize(pool, QUEUE, "tick", now - 1)
    worker = BridgeWorker(functions=[func(job, name="job", keep_result=0)], redis_pool=pool, queue_name=QUEUE,
                          burst=True, max_jobs=1, poll_delay=0.01, handle_signals=False)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert ran[0] == "tick" and sorted(ran[1:]) == sorted(f"backlog-{n}" for n in range(30))
    assert await pool.zcard(QUEUE + ":priority") == 0  # started: forgotten
    await pool.aclose()


async def test_priority_entries_of_jobs_that_ran_elsewhere_do_not_block_the_lane(
        redis_url: Callable[[int], str]) -> None:
    """Entries whose job another worker ran (gone from the queue) are dropped when met, not tried first at every
    poll: a priority job queued after ten of them still starts before the backlog."""
    from arq.worker import func

    from workers.runtime import BridgeWorker, prioritize

    pool = await create_pool(RedisSettings.from_dsn(redis_url(DB)))
    ran: list[str] = []

    async def job(ctx: dict[str, Any], name: str) -> None:
        ran.append(name)

    now = time.time()
    for n in range(10):
        await prioritize(pool, QUEUE, f"ran-elsewhere-{n}", now - 5)
    for n in range(5):
        await pool.enqueue_job("job", f"backlog-{n}", _job_id=f"backlog-{n}", _queue_name=QUEUE,
                               _defer_until=datetime.fromtimestamp(now - 10 + n * 0.01, UTC))
    worker = BridgeWorker(functions=[func(job, name="job", keep_result=0)], redis_pool=pool, queue_name=QUEUE,
                          burst=True, max_jobs=1, poll_delay=0.01, handle_signals=False)
    await pool.enqueue_job("job", "running", _job_id="running", _queue_name=QUEUE)
    await pool.set(in_progress_key_prefix + "running", b"1", px=60_000)  # another worker runs it: keep its entry
    await prioritize(pool, QUEUE, "running", now - 5)
    try:
        await worker.start_jobs([])  # meets the ten stale entries and the running one
        assert await pool.zrange(QUEUE + ":priority", 0, -1) == [b"running"]
        await pool.delete(in_progress_key_prefix + "running")
        await pool.enqueue_job("job", "verify", _job_id="verify", _queue_name=QUEUE)
        await prioritize(pool, QUEUE, "verify", time.time())
        await worker.main()
    finally:
        await worker.close()
    assert ran[:2] == ["running", "verify"] and sorted(ran[2:]) == sorted(f"backlog-{n}" for n in range(5))
    await pool.aclose()
