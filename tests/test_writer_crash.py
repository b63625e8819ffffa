"""SIGKILL a writer at every stage; after arq runs the job again there is exactly one commit per bump and one outcome.

arq re-runs a job whose worker died once the job's in-progress key expires (job timeout + 10 s). The parametrized
tests delete that key instead of waiting for it (the same re-run, sooner); one test waits for arq for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from writer_worker import ROOT, make_ctx, make_remote, make_settings, record, remote_file, remote_log, routing_raw
from writer_worker import values_file as values

from workers.writer import submit_bump

APPS = ["api", "web"]


def run_worker(tmp_path: Path, config: dict[str, Any], timeout: float = 60) -> int:
    path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(config))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "writer_worker.py"), str(path)], cwd=ROOT,
                          capture_output=True, timeout=timeout, check=False)
    return done.returncode


async def crash_then_recover(tmp_path: Path, point: str, *, wait_for_arq: bool) -> tuple[Path, dict[str, Any], list]:
    remote = make_remote(tmp_path, {f"apps/{a}/prod/values.yaml": values(a) for a in APPS})
    prefix, queue = f"cr{uuid.uuid4().hex[:6]}", f"qr{uuid.uuid4().hex[:6]}"
    raw = routing_raw(f"file://{remote}", APPS)
    git_cfg = {"lock_lease_seconds": 1.0, "lock_wait_seconds": 20.0}
    ctx = await make_ctx(make_settings(tmp_path / "cache", prefix, queue, **git_cfg), raw)
    records = [record("api", 11), record("web", 12)]
    for r in records:
        assert await ctx["store"].create(r)
        await submit_bump(ctx, r)
    config = {"routing": raw, "prefix": prefix, "queue": queue, "work_dir": str(tmp_path / "cache"), "git": git_cfg,
              "burst": True, "job_timeout": 2 if wait_for_arq else 60}
    assert run_worker(tmp_path, {**config, "crash_at": point}) == -9  # killed at the crash point
    if not wait_for_arq:
        for key in await ctx["redis"].keys("arq:in-progress:*"):
            await ctx["redis"].delete(key)
    assert run_worker(tmp_path, config) == 0
    return remote, ctx, records


async def assert_exactly_once(remote: Path, ctx: dict[str, Any], records: list) -> None:
    carried: dict[str, list[str]] = {}
    for sha, message in remote_log(remote):
        for line in message.splitlines():
            if line.startswith("Deployment-Id: "):
                carried.setdefault(line.removeprefix("Deployment-Id: "), []).append(sha)
    for r in records:
        got = await ctx["store"].get(r.id)
        assert carried.get(r.id) == [got.commit_sha], (r.id, carried)
        assert got.state == "verifying" and got.verdict is None
        assert f'tag: "{r.tag}"' in remote_file(remote, r.file)
        assert await ctx["redis"].exists(f"arq:result:verify:{r.id}") or await ctx["redis"].exists(
            f"arq:job:verify:{r.id}")
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 0
    assert len(remote_log(remote)) == 2  # the seed and one writer commit


@pytest.mark.parametrize("point", ["after-edit", "after-commit", "after-push", "after-record"])
async def test_sigkill_at_each_stage(tmp_path: Path, redis_url: Callable[[int], str], point: str) -> None:
    redis_url(2)
    remote, ctx, records = await crash_then_recover(tmp_path, point, wait_for_arq=False)
    try:
        await assert_exactly_once(remote, ctx, records)
    finally:
        await ctx["redis"].aclose()


@pytest.mark.slow
async def test_arq_reruns_the_killed_job_by_itself(tmp_path: Path, redis_url: Callable[[int], str]) -> None:
    redis_url(2)
    remote, ctx, records = await crash_then_recover(tmp_path, "after-push", wait_for_arq=True)
    try:
        await assert_exactly_once(remote, ctx, records)
    finally:
        await ctx["redis"].aclose()
