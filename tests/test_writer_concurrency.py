"""Four worker processes, 100 builds for 20 routes submitted at once, and a person pushing in the middle."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from redis_server import shared_redis_url
from writer_worker import (
    ROOT,
    git,
    human_commit,
    make_ctx,
    make_remote,
    make_settings,
    record,
    remote_file,
    remote_log,
    routing_raw,
    values_file,
    wait_ready,
)

from workers.writer import submit_bump

pytestmark = pytest.mark.slow

ROUTES = [f"app-{i:02d}" for i in range(20)]
WORKERS = 4


def start_workers(tmp_path: Path, config: dict[str, object], count: int) -> list[subprocess.Popen[bytes]]:
    path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(config))
    return [subprocess.Popen([sys.executable, str(ROOT / "tests" / "writer_worker.py"), str(path)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(count)]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        p.wait(timeout=10)


async def test_burst_from_many_workers_lands_every_bump_without_force(
    tmp_path: Path, redis_url: Callable[[int], str]
) -> None:
    redis_url(2)
    remote = make_remote(tmp_path, {f"apps/{r}/prod/values.yaml": values_file(r) for r in ROUTES})
    git("config", "core.logAllRefUpdates", "always", cwd=remote)  # a reflog on the bare remote
    prefix, queue = f"cc{uuid.uuid4().hex[:6]}", f"qc{uuid.uuid4().hex[:6]}"
    raw = routing_raw(f"file://{remote}", ROUTES)
    settings = make_settings(tmp_path / "cache", prefix, queue)
    ctx = await make_ctx(settings, raw)
    procs = start_workers(tmp_path, {"routing": raw, "prefix": prefix, "queue": queue, "burst": False,
                                     "work_dir": str(tmp_path / "cache")}, WORKERS)
    try:
        await wait_ready(ctx["redis"], prefix, WORKERS)
        rng = random.Random(7)
        builds = [(route, 1000 + i * 20 + j) for j, route in enumerate(ROUTES) for i in range(5)]
        rng.shuffle(builds)
        records = [record(route, build) for route, build in builds]
        for r in records:
            assert await ctx["store"].create(r)

        async def human() -> str:
            sha = ""
            for n in range(3):  # people keep committing while the writers work
                await asyncio.sleep(0.15)
                sha = await asyncio.to_thread(human_commit, remote, tmp_path, "README.md", f"hand-written {n}\n",
                                              f"docs: a human commit {n}")
            return sha

        async def post() -> None:  # five waves within about half a second
            for wave in range(5):
                await asyncio.gather(*(submit_bump(ctx, r) for r in records[wave * 20:(wave + 1) * 20]))
                await asyncio.sleep(0.1)

        human_sha, _ = await asyncio.gather(human(), post())

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            got = [await ctx["store"].get(r.id) for r in records]
            if all(g is not None and (g.verdict is not None or g.commit_sha) for g in got):
                break
            assert all(p.poll() is None for p in procs), "a worker died"
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("not every bump was recorded in time")
        assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 0
    finally:
        stop(procs)
        await ctx["redis"].aclose()

    final = git("rev-parse", "main", cwd=remote).strip()
    # Every route ends at its highest build; nothing lost, nothing downgraded.
    for j, route in enumerate(ROUTES):
        top = 1000 + 4 * 20 + j
        assert f'tag: "1.0.{top}"' in remote_file(remote, f"apps/{route}/prod/values.yaml"), route
    assert remote_file(remote, "README.md") == "hand-written 2\n"
    assert git("merge-base", "--is-ancestor", human_sha, final, cwd=remote) == ""
    # No force push: every state the branch ever had is an ancestor of the final head.
    reflog = git("reflog", "show", "--format=%H", "refs/heads/main", cwd=remote).split()
    assert human_sha in reflog and len(reflog) >= 5
    for sha in reflog:
        assert git("merge-base", "--is-ancestor", sha, final, cwd=remote) == "", sha
    # One commit per applied bump, and each record names the commit that carries it.
    carried: dict[str, list[str]] = {}
    for sha, message in remote_log(remote):
        for line in message.splitlines():
            if line.startswith("Deployment-Id: "):
                carried.setdefault(line.removeprefix("Deployment-Id: "), []).append(sha)
    got = {r.id: g for r in records if (g := await_get(r.id, prefix)) is not None}
    applied = [g for g in got.values() if g.verdict is None]
    assert len(got) == len(records)
    assert all(g.verdict in (None, "superseded") for g in got.values())
    assert len(applied) >= len(ROUTES)
    for g in applied:
        assert carried.get(g.id) == [g.commit_sha], g.id
        assert g.state == "verifying"
    assert set(carried) == {g.id for g in applied}
    commits = len(git("rev-list", "main", cwd=remote).split()) - 4  # minus the seed and the human commits
    assert commits < len(applied)  # coalesced


def await_get(dep_id: str, prefix: str):  # type: ignore[no-untyped-def]
    import redis

    from bridge.queue import Keys
    from bridge.records import decode_record

    with redis.Redis.from_url(shared_redis_url(2)) as client:
        raw = client.get(Keys(prefix=prefix).deployment(dep_id))
    return decode_record(raw) if raw else None
