"""Test helpers for the writer: bare git remotes, routing, records, a ctx, and a worker process entry point.

Run as a worker: `python tests/writer_worker.py CONFIG.json` where the JSON holds
`{"routing": {...}, "prefix": ..., "queue": ..., "work_dir": ..., "git": {...}, "crash_at": null, "burst": true}`.
`crash_at` names a writer crash point (after-edit, after-commit, after-push, after-record) at which the process
kills itself with SIGKILL; it is wired through `workers.faults.hook`, never through the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from arq import create_pool  # noqa: E402
from arq.connections import RedisSettings  # noqa: E402
from arq.worker import Worker, func  # noqa: E402
from redis_server import shared_redis_url  # noqa: E402

from bridge.queue import FLUSH_REPOSITORY, REPORT_DEPLOYMENT, VERIFY_DEPLOYMENT, Keys  # noqa: E402
from bridge.records import DeploymentRecord, DeploymentStore  # noqa: E402
from bridge.routing import parse_routing  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from workers import faults, writer  # noqa: E402
from workers.gitrepo import RepoCache  # noqa: E402

REDIS_URL = shared_redis_url(2)
GIT_ENV = {"GIT_AUTHOR_NAME": "Human", "GIT_AUTHOR_EMAIL": "human@example.com",
           "GIT_COMMITTER_NAME": "Human", "GIT_COMMITTER_EMAIL": "human@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": tempfile.gettempdir()}

VALUES = """# Default values for {app}.
# This is a YAML-formatted file.
replicaCount: 2

image:
  # -- image repository
  repository: registry.example.com/team/{app}
  # -- overrides the chart appVersion
  tag: "{tag}"
  pullPolicy: IfNotPresent

service:
  type: ClusterIP
  port: 80   # keep in sync with the probe

resources: {{}}
"""


# -- git ------------------------------------------------------------------------------------------------------------

def git(*args: str, cwd: Path | str) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout


def make_remote(root: Path, files: dict[str, str], branch: str = "main") -> Path:
    """A bare repository with one commit holding `files`."""
    remote = root / "remote.git"
    git("init", "-q", "--bare", f"--initial-branch={branch}", str(remote), cwd=root)
    work = root / "seed"
    git("init", "-q", f"--initial-branch={branch}", str(work), cwd=root)
    for name, text in files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "initial", cwd=work)
    git("push", "-q", str(remote), f"HEAD:refs/heads/{branch}", cwd=work)
    return remote


def human_commit(remote: Path, root: Path, file: str, text: str, message: str = "human edit") -> str:
    """Push a commit as a person would (clone, edit, commit, push); returns its SHA."""
    work = Path(tempfile.mkdtemp(dir=root, prefix="human-"))
    git("clone", "-q", str(remote), str(work), cwd=root)
    path = work / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    for _ in range(50):
        try:
            git("push", "-q", "origin", "HEAD:main", cwd=work)
            break
        except RuntimeError:
            git("pull", "-q", "--rebase", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).strip()


def remote_file(remote: Path, file: str, ref: str = "main") -> str:
    return git("show", f"{ref}:{file}", cwd=remote)


def remote_log(remote: Path, ref: str = "main") -> list[tuple[str, str]]:
    """(sha, full message) newest first."""
    out = git("log", "--format=%H%x1f%B%x1e", ref, cwd=remote)
    entries = [e.strip("\n") for e in out.split("\x1e") if e.strip()]
    return [(e.split("\x1f", 1)[0].strip(), e.split("\x1f", 1)[1]) for e in entries]


def values_file(app: str, tag: str = "1.0.0") -> str:
    return VALUES.format(app=app, tag=tag)


# -- config, records, ctx -------------------------------------------------------------------------------------------

def routing_raw(url: str, apps: list[str], *, ordering: str = "build-id", env: str = "prod",
                extra_env: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "repositories": {"gitops": {"url": url, "branch": "main"}},
        "routes": [
            {"name": app, "ordering": ordering, "match": {"project": "p", "definition": app},
             "environments": [{"name": env, "repository": "gitops", "file": f"apps/{app}/{env}/values.yaml",
                               **(extra_env or {})}]}
            for app in apps
        ],
    }


def record(app: str, build_id: int, *, env: str = "prod", tag: str | None = None, keys: list[str] | None = None,
           file: str | None = None, **extra: Any) -> DeploymentRecord:
    return DeploymentRecord(
        id=f"{build_id}-{app}-{env}", build_key=f"org:p:{build_id}", build_id=build_id, route=app, environment=env,
        repository="gitops", file=file or f"apps/{app}/{env}/values.yaml", keys=keys or ["image.tag"],
        tag=tag or f"1.0.{build_id}", build_url=f"https://dev.azure.com/org/p/_build/results?buildId={build_id}",
        source_commit=f"{build_id:040x}", state="writing", **extra,
    )


def make_settings(work_dir: Path, prefix: str, queue: str, **git: Any) -> Settings:
    git_cfg = {"work_dir": str(work_dir), "lock_lease_seconds": 5.0, "lock_wait_seconds": 20.0, **git}
    return Settings(key_prefix=prefix, queue_name=queue, git=git_cfg)


async def make_ctx(settings: Settings, routing: dict[str, Any]) -> dict[str, Any]:
    redis = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    keys = Keys(prefix=settings.key_prefix)
    cfg = parse_routing(routing)
    store = DeploymentStore(redis, keys, queue_name=settings.queue_name)
    return {"settings": settings, "routing": cfg, "keys": keys, "store": store, "redis": redis,
            "repos": RepoCache(settings.git, cfg.repositories), "job_try": 1}


async def noop(ctx: dict[str, Any], *args: Any) -> None:
    return None


def build_worker(config: dict[str, Any]) -> Worker:
    settings = make_settings(Path(config["work_dir"]), config["prefix"], config["queue"], **config.get("git", {}))

    async def startup(ctx: dict[str, Any]) -> None:
        keys = Keys(prefix=settings.key_prefix)
        cfg = parse_routing(config["routing"])
        ctx.update({"settings": settings, "routing": cfg, "keys": keys, "store": DeploymentStore(ctx["redis"], keys,
                                                                                                 queue_name=settings.queue_name),
                    "repos": RepoCache(settings.git, cfg.repositories)})
        await ctx["redis"].sadd(f"{settings.key_prefix}:ready", os.getpid())

    return Worker(
        functions=[func(writer.flush_repository, name=FLUSH_REPOSITORY),  # type: ignore[list-item]
                   func(noop, name=VERIFY_DEPLOYMENT), func(noop, name=REPORT_DEPLOYMENT)],
        redis_settings=RedisSettings.from_dsn(REDIS_URL), queue_name=config["queue"], burst=config.get("burst", True),
        poll_delay=0.02, on_startup=startup, handle_signals=False, max_jobs=config.get("max_jobs", 10),
        job_timeout=config.get("job_timeout", 60), keep_result=60,
    )


async def wait_ready(redis: Any, prefix: str, count: int, timeout: float = 30.0) -> None:
    """Wait until `count` worker processes have started (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await redis.scard(f"{prefix}:ready") < count:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"only {await redis.scard(f'{prefix}:ready')} of {count} workers started")
        await asyncio.sleep(0.05)


def _crash_at(point: str | None) -> None:
    if not point:
        return

    def hook(reached: str) -> None:
        if reached == point:
            os.kill(os.getpid(), signal.SIGKILL)

    faults.hook = hook


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    _crash_at(config.get("crash_at"))

    async def run() -> None:
        await build_worker(config).async_run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
