"""The queue contract between the web process and the workers: names, job ids, payloads (JSON only), enqueue.

Jobs are enqueued by name, so `bridge/` never imports `workers/`. Every job id is derived from what the job is about,
which makes enqueueing idempotent (arq refuses a second job with the same id while the first or its result exists).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.exceptions import NoScriptError

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


# Job names: the worker registers functions under exactly these names.
PROCESS_BUILD = "process_build"            # (event: dict) → route, create records, hand to writer / PR
FLUSH_REPOSITORY = "flush_repository"      # (repository: str) → apply every pending bump in one commit and push
OPEN_PULL_REQUEST = "open_pull_request"    # (deployment_id: str)
CHECK_PULL_REQUEST = "check_pull_request"  # (deployment_id: str) → merged? closed? again later
VERIFY_DEPLOYMENT = "verify_deployment"    # (deployment_id: str) → register with the application's watcher
WATCH_APPLICATION = "watch_application"    # (app_key: str) → one Argo CD read, judge every waiting deployment
REPORT_DEPLOYMENT = "report_deployment"    # (deployment_id: str, phase: "started" | "finished")
PROMOTE_BUILD = "promote_build"            # (deployment_id: str, to_environment: str, force: bool, by: str)
RECONCILE_BUILDS = "reconcile_builds"      # cron: queue completed builds the webhook never delivered


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

    @property
    def in_flight(self) -> str:
        """Deployments without a verdict yet (for the in-flight gauge)."""
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


async def enqueue_build(
    redis: ArqRedis, keys: Keys, queue_name: str, event: dict[str, Any], build_key: str, retention_s: float
) -> EnqueueOutcome:
    """Durably queue one build (job PROCESS_BUILD(event)), once. Raises redis errors unchanged (the caller answers
    503). Equivalent to `redis.enqueue_job(PROCESS_BUILD, event, _job_id=..., _queue_name=...)` guarded by the
    `seen` key, in a single Lua call instead of five round trips."""
    job_id = build_job_id(build_key)
    enqueue_time_ms = int(time.time() * 1000)
    job = serialize_job(PROCESS_BUILD, (event,), {}, None, enqueue_time_ms, serializer=redis.job_serializer)
    script_keys = (keys.seen(build_key), job_key_prefix + job_id, result_key_prefix + job_id, queue_name)
    args = (job_id, job, redis.expires_extra_ms, enqueue_time_ms, max(int(retention_s), 1))
    try:
        created = await redis.evalsha(_ENQUEUE_BUILD_SHA, len(script_keys), *script_keys, *args)  # type: ignore[arg-type,misc]
    except NoScriptError:  # first call on this server (or it restarted): send the script itself
        created = await redis.eval(_ENQUEUE_BUILD_LUA, len(script_keys), *script_keys, *args)  # type: ignore[arg-type,misc]
    return EnqueueOutcome("queued" if created == 1 else "duplicate", job_id)
