"""The writer notices a person's change to a managed key (on_manual_change), and never mistakes its own push for one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from writer_worker import (
    human_commit,
    make_ctx,
    make_remote,
    make_settings,
    record,
    remote_file,
    routing_raw,
    values_file,
)

from workers.writer import Bump, _remember_written, apply_bumps, flush_repository, submit_bump

FILE = "apps/api/prod/values.yaml"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path, {FILE: values_file("api")})


@pytest.fixture
async def make(tmp_path: Path, remote: Path, redis_url: Callable[[int], str]) -> AsyncIterator[Any]:
    redis_url(2)  # the db writer_worker's contexts use, flushed
    made: list[dict[str, Any]] = []

    async def factory(**env: Any) -> dict[str, Any]:
        settings = make_settings(tmp_path / "cache", f"t{uuid.uuid4().hex[:6]}", f"q{uuid.uuid4().hex[:6]}")
        ctx = await make_ctx(settings, routing_raw(f"file://{remote}", ["api"], extra_env=env))
        made.append(ctx)
        return ctx

    yield factory
    for ctx in made:
        await ctx["redis"].aclose()


async def deploy(ctx: dict[str, Any], build_id: int) -> Any:
    rec = record("api", build_id)
    assert await ctx["store"].create(rec)
    await submit_bump(ctx, rec)
    await flush_repository(ctx, "gitops")
    return await ctx["store"].get(rec.id)


async def test_a_persons_value_is_kept_and_the_environment_held(make: Any, remote: Path, tmp_path: Path) -> None:
    ctx = await make()
    assert (await deploy(ctx, 500)).state == "verifying"
    human_commit(remote, tmp_path, FILE, values_file("api", tag="0.9.9"), "revert api: broken")

    held = await deploy(ctx, 501)

    assert (held.verdict, held.state) == ("held", "reporting")
    assert "is '0.9.9' in Git, not '1.0.500'" in held.reason and "a person changed it" in held.reason
    assert held.details["manual_change"]["found"] == {"image.tag": "0.9.9"}
    assert 'tag: "0.9.9"' in remote_file(remote, FILE)
    hold = await ctx["store"].get_hold("api", "prod")
    assert hold is not None and (hold["cause"], hold["by"]) == ("manual-change", "gitops-bridge")
    # released: the person's value is now what the bridge expects there, so the next build deploys
    await ctx["store"].release_hold("api", "prod")
    assert (await deploy(ctx, 502)).state == "verifying"
    assert 'tag: "1.0.502"' in remote_file(remote, FILE)


async def test_follow_writes_over_a_persons_value(make: Any, remote: Path, tmp_path: Path) -> None:
    ctx = await make(on_manual_change="follow")
    await deploy(ctx, 500)
    human_commit(remote, tmp_path, FILE, values_file("api", tag="0.9.9"))
    assert (await deploy(ctx, 501)).state == "verifying"
    assert 'tag: "1.0.501"' in remote_file(remote, FILE)


async def test_its_own_push_that_was_never_recorded_is_not_a_persons_change(make: Any, remote: Path) -> None:
    ctx = await make()
    await deploy(ctx, 500)
    # build 501 was pushed by a run that died (or lost Redis) before recording it, then ended without a setter
    lost = record("api", 501)
    assert await ctx["store"].create(lost)
    await _remember_written(ctx, "gitops", [Bump.from_record(lost)])
    await apply_bumps(ctx["repos"], "gitops", [Bump.from_record(lost)])
    await ctx["store"].finish(lost.id, "superseded", "superseded in a later batch")

    assert (await deploy(ctx, 502)).state == "verifying"
    assert 'tag: "1.0.502"' in remote_file(remote, FILE)
