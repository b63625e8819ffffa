"""The queue contract between the web process and the workers: names, job ids, payloads (JSON only), enqueue.

Jobs are enqueued by name, so `bridge/` never imports `workers/`. Every job id is derived from what the job is about,
which makes enqueueing idempotent (arq refuses a second job with the same id while the first or its result exists).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from arq.connections import ArqRedis, RedisSettings
from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio.retry import Retry as RedisRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.settings import Settings


def redis_settings(settings: Settings, url: str | None = None) -> RedisSettings:
    """arq's connection settings for the bridge's Redis: `url` (given, else BRIDGE_REDIS_URL), or the Sentinels of
    BRIDGE_REDIS_SENTINELS when set and no URL is given explicitly (the URL then only supplies password, database and
    TLS; the master comes from the Sentinels, so a failover needs no restart)."""
    dsn = url or (settings.redis_url.get_secret_value() if settings.redis_url else "") or "redis://127.0.0.1:6379/0"
    connection = RedisSettings.from_dsn(dsn)
    if settings.redis_sentinels and url is None:
        sentinels = [(host, int(port)) for host, _, port in (s.rpartition(":") for s in settings.redis_sentinels)]
        connection = dataclasses.replace(
            connection, host=sentinels, sentinel=True, sentinel_master=settings.redis_sentinel_master
        )
    return connection


# Every command waits at most this long for Redis (a paused or partitioned server must not hang a job or a probe).
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0


def open_redis(settings: Settings, url: str | None = None, *,
               socket_timeout: float | None = SOCKET_TIMEOUT_S) -> ArqRedis:
    """A pool for the bridge's Redis (no I/O yet: connections are made on first use and re-made after a drop).

    Unlike `arq.create_pool` it bounds every command (`SOCKET_TIMEOUT_S`), retries a command once on a dropped
    connection, and never gives up at start: callers decide how long to wait (the worker waits for ever, the web
    process answers 503 meanwhile). `socket_timeout=None` is for a caller that bounds every use itself
    (`BuildEnqueuer`): redis-py arms a timer for each reply it reads when the pool has a socket timeout."""
    rs = redis_settings(settings, url)
    kwargs: dict[str, Any] = {
        "db": rs.database, "username": rs.username, "password": rs.password, "encoding": "utf8",
        "socket_timeout": socket_timeout, "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": RedisRetry(ExponentialBackoff(cap=0.5, base=0.05), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 15,
    }
    if rs.ssl:
        kwargs.update(ssl=True, ssl_cert_reqs=rs.ssl_cert_reqs, ssl_ca_certs=rs.ssl_ca_certs,
                      ssl_check_hostname=rs.ssl_check_hostname)
    if rs.sentinel:
        bounded = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": CONNECT_TIMEOUT_S}
        sentinel = Sentinel(rs.host, sentinel_kwargs=bounded, **kwargs)  # type: ignore[no-untyped-call]
        pool = cast(ArqRedis, sentinel.master_for(rs.sentinel_master, redis_class=ArqRedis))
    else:
        pool = ArqRedis(host=cast(str, rs.host), port=rs.port, **kwargs)
    pool.job_serializer = None
    pool.job_deserializer = None
    pool.default_queue_name = settings.queue_name
    pool.expires_extra_ms = expires_extra_ms
    return pool


# Job names: the worker registers functions under exactly these names. `bridge.lifecycle` says which owns which state.
PROCESS_BUILD = "process_build"            # (event: dict) → route, create records, hand to writer / PR
ADVANCE_DEPLOYMENT = "advance_deployment"  # (deployment_id: str) → hand the deployment to the step its state needs
FLUSH_REPOSITORY = "flush_repository"      # (repository: str) → apply every pending bump in one commit and push
OPEN_PULL_REQUEST = "open_pull_request"    # (deployment_id: str)
CHECK_PULL_REQUEST = "check_pull_request"  # (deployment_id: str) → merged? closed? again later
VERIFY_DEPLOYMENT = "verify_deployment"    # (deployment_id: str) → register with the application's watcher
WATCH_APPLICATION = "watch_application"    # (app_key: str) → one Argo CD read, judge every waiting deployment
REPORT_DEPLOYMENT = "report_deployment"    # (deployment_id: str, phase: "started" | "final")
ROLLBACK_AFTER_FAILURE = "rollback_after_failure"  # (deployment_id: str, to_build: int) → `on_failure: rollback`
PROMOTE_BUILD = "promote_build"            # (deployment_id: str, to_environment: str, force: bool, by: str)
RECONCILE_BUILDS = "reconcile_builds"      # cron: queue completed builds the webhook never delivered
SWEEP_DEPLOYMENTS = "sweep_deployments"    # cron: hand deployments whose next step is missing back to it
GATE_DEPLOYMENT = "gate_deployment"        # (gate_id: str) → authorise a pipeline gate, attach or start its deployment
WATCH_GATE = "watch_gate"                  # (gate_id: str) → progress lines, deadline, the TaskCompleted callback


@dataclass(frozen=True)
class Keys:
    """Every Redis key gitops-bridge owns (arq's own keys aside)."""

    prefix: str = "gitops-bridge"

    def seen(self, build_key: str) -> str:
        return f"{self.prefix}:seen:{build_key}"

    def deployment(self, deployment_id: str) -> str:
        return f"{self.prefix}:dep:{deployment_id}"

    @property
    def deployments(self) -> str:
        return f"{self.prefix}:deps"

    def state_index(self, state: str) -> str:
        """Deployments in an active state of `bridge.lifecycle`, scored by when they entered it."""
        return f"{self.prefix}:state:{state}"

    def sweep_cursor(self, state: str) -> str:
        """Where the sweeper's last pass over a state stopped (the entry score of the last deployment it read)."""
        return f"{self.prefix}:sweep:{state}"

    @property
    def legacy_in_flight(self) -> str:
        """The set that counted in-flight deployments before the state machine (migrated at worker start)."""
        return f"{self.prefix}:in-flight"

    def build_deployments(self, build_key: str) -> str:
        return f"{self.prefix}:build:{build_key}"

    def hold(self, route: str, environment: str) -> str:
        return f"{self.prefix}:hold:{route}:{environment}"

    @property
    def holds(self) -> str:
        return f"{self.prefix}:holds"

    def last_setter(self, repository: str, file: str, key: str) -> str:
        return f"{self.prefix}:last:{repository}:{file}:{key}"

    def pending(self, repository: str) -> str:
        return f"{self.prefix}:pending:{repository}"

    def written(self, repository: str, file: str, key: str) -> str:
        """Values the writer pushed to a target since it last recorded a setter there (to tell its own writes from a
        person's change)."""
        return f"{self.prefix}:written:{repository}:{file}:{key}"

    def last_succeeded(self, route: str, environment: str) -> str:
        """The deployment that last succeeded in an environment (written with its verdict; rollbacks read it)."""
        return f"{self.prefix}:last-ok:{route}:{environment}"

    def failing_since(self, route: str, environment: str) -> str:
        """When an environment's first failed verdict since its last success was set (DORA time to restore)."""
        return f"{self.prefix}:failing:{route}:{environment}"

    def rollback_sequence(self, route: str, environment: str) -> str:
        return f"{self.prefix}:rollback-seq:{route}:{environment}"

    def lock(self, repository: str) -> str:
        return f"{self.prefix}:lock:{repository}"

    def waiting(self, app_key: str) -> str:
        return f"{self.prefix}:waiting:{app_key}"

    @property
    def watched_apps(self) -> str:
        return f"{self.prefix}:apps"

    def pull_request(self, github_repo: str, number: int) -> str:
        """Pull request `owner/name#number` → the deployment id it carries (read by the GitHub webhook)."""
        return f"{self.prefix}:pr:{github_repo}#{number}"

    def pull_latest(self, route: str, environment: str) -> str:
        """The deployment id of the newest pull request opened for a route and environment."""
        return f"{self.prefix}:pr-latest:{route}:{environment}"

    def pull_lock(self, route: str, environment: str) -> str:
        return f"{self.prefix}:pr-lock:{route}:{environment}"

    @property
    def reconcile_watermark(self) -> str:
        return f"{self.prefix}:reconcile:watermark"


def build_job_id(build_key: str) -> str:
    return f"build:{build_key}"


# Step jobs keep no result (see bridge.lifecycle): their ids are refused only while a copy is queued or running.
def advance_job_id(deployment_id: str) -> str:
    return f"advance:{deployment_id}"


def report_job_id(deployment_id: str, phase: str) -> str:
    return f"report:{deployment_id}:{phase}"


def verify_job_id(deployment_id: str) -> str:
    return f"verify:{deployment_id}"


def open_pr_job_id(deployment_id: str) -> str:
    return f"open-pr:{deployment_id}"


def priority_key(queue_name: str) -> str:
    """The queue's priority set (job id → due time in ms): the worker starts these before the backlog once due
    (workers.runtime)."""
    return queue_name + ":priority"


def add_job(pipe: Any, queue_name: str, function: str, args: tuple[Any, ...], job_id: str,
            run_at: float | None = None, priority: bool = False) -> None:
    """Queue a job on a MULTI pipeline exactly as arq's `enqueue_job` writes it (job key with expiry, queue zset), so
    it commits or not together with the rest of the transaction; `run_at` (epoch seconds) defers it, `priority`
    starts it before the backlog. A job of that id already queued stays queued (the queue entry keeps its score)."""
    add_jobs(pipe, queue_name, [(function, args, job_id, run_at, priority)])


def add_jobs(pipe: Any, queue_name: str,
             jobs: Iterable[tuple[str, tuple[Any, ...], str, float | None, bool]]) -> None:
    """`add_job` for many (function, args, job id, run_at, priority): one job key each, one queue write for all of
    them (and one priority-set write for those that have priority)."""
    enqueue_time_ms = int(time.time() * 1000)
    queued: dict[str, int] = {}
    urgent: dict[str, int] = {}
    for function, args, job_id, run_at, priority in jobs:
        score = enqueue_time_ms if run_at is None else max(enqueue_time_ms, int(run_at * 1000))
        job = serialize_job(function, args, {}, None, enqueue_time_ms, serializer=None)
        pipe.psetex(job_key_prefix + job_id, expires_extra_ms + score - enqueue_time_ms, job)
        queued[job_id] = score
        if priority:
            urgent[job_id] = score
    if queued:
        pipe.zadd(queue_name, queued, nx=True)
    if urgent:
        pipe.zadd(priority_key(queue_name), urgent)


def deployment_id(build_key: str, route: str, environment: str) -> str:
    """Short, readable and unique: `<build id>-<route>-<env>-<hash of organization and project>`."""
    org_project, _, build_id = build_key.rpartition(":")
    digest = hashlib.sha1(org_project.encode()).hexdigest()[:6]
    return f"{build_id}-{route}-{environment}-{digest}"


def tick_job_id(kind: str, subject: str, interval: float, now: float | None = None) -> str:
    """One deferred job per subject and poll interval, however many callers ask for it."""
    tick = int((now if now is not None else time.time()) // max(interval, 0.001)) + 1
    return f"{kind}:{subject}:{tick}"


def unique_job_id(kind: str) -> str:
    return f"{kind}:{uuid.uuid4().hex}"


class NotReplicated(RedisError):
    """The job is on the master but fewer replicas than required acknowledged it in time: answer 503 (Azure DevOps
    redelivers, and the redelivery waits for the replicas again)."""


@dataclass(frozen=True)
class EnqueueOutcome:
    status: str  # "queued" | "duplicate"
    job_id: str


# One round trip, atomic: seen? → job or result exists? → write the job exactly as arq's `enqueue_job` does (job key
# with expiry, queue zset) → mark the build seen. Concurrent identical deliveries cannot both create the job.
_ENQUEUE_BUILD_LUA = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
local created = 0
if redis.call('exists', KEYS[2], KEYS[3]) == 0 then
  redis.call('psetex', KEYS[2], ARGV[3], ARGV[2])
  redis.call('zadd', KEYS[4], ARGV[4], ARGV[1])
  created = 1
end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[5])
return created
"""
_ENQUEUE_BUILD_SHA = hashlib.sha1(_ENQUEUE_BUILD_LUA.encode()).hexdigest()


def _build_call(redis: ArqRedis, keys: Keys, queue_name: str, event: dict[str, Any], build_key: str,
                retention_s: float) -> tuple[str, tuple[Any, ...]]:
    """The job id and the `EVALSHA` arguments (keys count, keys, args) that queue PROCESS_BUILD(event) once."""
    job_id = build_job_id(build_key)
    enqueue_time_ms = int(time.time() * 1000)
    job = serialize_job(PROCESS_BUILD, (event,), {}, None, enqueue_time_ms, serializer=redis.job_serializer)
    return job_id, (4, keys.seen(build_key), job_key_prefix + job_id, result_key_prefix + job_id, queue_name,
                    job_id, job, redis.expires_extra_ms, enqueue_time_ms, max(int(retention_s), 1))


async def _run_enqueues(redis: ArqRedis, calls: list[tuple[Any, ...]], min_replicas: int,
                        replica_wait_ms: int) -> list[int | Exception]:
    """Every call's Lua script in one pipelined round trip (then `WAIT` on the same connection when replicas are
    required): each call's own result, or its own error. An error of the round trip itself is raised (it affects
    every call)."""
    results: list[int | Exception] = [NoScriptError()] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):  # the second attempt only when the server did not know the script
        pipe = redis.pipeline(transaction=False)
        for i in todo:
            if attempt == 0:
                pipe.evalsha(_ENQUEUE_BUILD_SHA, *calls[i])
            else:
                pipe.eval(_ENQUEUE_BUILD_LUA, *calls[i])
        if min_replicas > 0:  # also for duplicates: their first delivery may not have reached the replicas
            pipe.wait(min_replicas, replica_wait_ms)
        answers = await pipe.execute(raise_on_error=False)
        if min_replicas > 0:
            acked = answers.pop()
            if isinstance(acked, Exception) or int(acked) < min_replicas:
                answers = [a if isinstance(a, Exception) else NotReplicated(
                    f"{acked} of {min_replicas} replicas acknowledged the job") for a in answers]
        for i, answer in zip(todo, answers, strict=True):
            results[i] = answer if isinstance(answer, Exception) else int(answer)
        todo = [i for i in todo if isinstance(results[i], NoScriptError)]
        if not todo:
            break
    return results


async def enqueue_build(
    redis: ArqRedis, keys: Keys, queue_name: str, event: dict[str, Any], build_key: str, retention_s: float,
    *, min_replicas: int = 0, replica_wait_ms: int = 1000,
) -> EnqueueOutcome:
    """Durably queue one build (job PROCESS_BUILD(event)), once. Raises redis errors unchanged (the caller answers
    503). Equivalent to `redis.enqueue_job(PROCESS_BUILD, event, _job_id=..., _queue_name=...)` guarded by the
    `seen` key, in a single Lua call instead of five round trips."""
    job_id, call = _build_call(redis, keys, queue_name, event, build_key, retention_s)
    (created,) = await _run_enqueues(redis, [call], min_replicas, replica_wait_ms)
    if isinstance(created, Exception):
        raise created
    return EnqueueOutcome("queued" if created == 1 else "duplicate", job_id)


class BuildEnqueuer:
    """`enqueue_build` for many concurrent callers: the calls that arrive while a round trip is under way go
    together in the next one (one pipeline, one socket write and read, one `WAIT`), instead of one round trip each.

    Each call is still its own atomic Lua script and gets its own answer: queued, duplicate, or its own error (a
    round trip that fails, or too few replicas, fails exactly the calls it carried). A caller that stops waiting
    (cancelled) is left out of the next round trip, or ignored by the one already carrying its call.

    Every round trip is bounded by `timeout_s` (one timer per round trip, not per call): one that takes longer fails
    with TimeoutError the calls it carried and those waiting for the next (Redis is not answering), so no caller
    waits much longer than `timeout_s`."""

    def __init__(self, redis: ArqRedis, keys: Keys, queue_name: str, retention_s: float, *, min_replicas: int = 0,
                 replica_wait_ms: int = 1000, max_batch: int = 256, timeout_s: float = 5.0) -> None:
        self.redis = redis
        self.keys, self.queue_name, self.retention_s = keys, queue_name, retention_s
        self.min_replicas, self.replica_wait_ms, self.max_batch = min_replicas, replica_wait_ms, max_batch
        self.timeout_s = timeout_s
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def enqueue(self, event: dict[str, Any], build_key: str) -> EnqueueOutcome:
        job_id, call = _build_call(self.redis, self.keys, self.queue_name, event, build_key, self.retention_s)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        sender = self._sender
        if sender is None or sender.done() or sender.get_loop() is not future.get_loop():
            self._sender = asyncio.create_task(self._send())
        created = await future  # a caller that gives up cancels only its own future
        return EnqueueOutcome("queued" if created == 1 else "duplicate", job_id)

    async def _send(self) -> None:
        while self._waiting:
            batch = [item for item in self._waiting[:self.max_batch] if not item[1].done()]
            self._waiting = self._waiting[self.max_batch:]
            if not batch:
                continue
            try:
                async with asyncio.timeout(self.timeout_s):
                    results = await _run_enqueues(self.redis, [call for call, _ in batch], self.min_replicas,
                                                  self.replica_wait_ms)
            except BaseException as exc:  # the round trip failed: every call in it fails (timed out, cancelled: all)
                everyone = isinstance(exc, TimeoutError) or not isinstance(exc, Exception)
                failed = batch + self._waiting if everyone else batch
                for _, future in failed:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RedisError("enqueue cancelled"))
                if everyone:
                    self._waiting = []
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
