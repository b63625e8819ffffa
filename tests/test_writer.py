from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from writer_worker import (
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
)

from bridge.records import DeploymentRecord
from workers.lock import LockOutcome, RedisLock
from workers.ordering import Candidate, Setter, decide, is_older
from workers.writer import Bump, apply_bumps, commit_message, flush_repository, submit_bump

APPS = ["api", "web", "worker", "cron", "auth"]


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    files = {f"apps/{app}/prod/values.yaml": values_file(app) for app in APPS}
    files["apps/auth/prod/values.yaml"] = "image:\n  repository: auth\n"  # no tag key
    return make_remote(tmp_path, files)


@pytest.fixture
async def make(tmp_path: Path, remote: Path, redis_url: Callable[[int], str]) -> AsyncIterator[Any]:
    redis_url(2)  # flushes db 2
    made: list[dict[str, Any]] = []

    async def factory(ordering: str = "build-id", **env: Any) -> dict[str, Any]:
        settings = make_settings(tmp_path / "cache", f"t{uuid.uuid4().hex[:6]}", f"q{uuid.uuid4().hex[:6]}",
                                 author_name="Bridge Bot", author_email="bot@example.com")
        ctx = await make_ctx(settings, routing_raw(f"file://{remote}", APPS, ordering=ordering, extra_env=env))
        made.append(ctx)
        return ctx

    yield factory
    for ctx in made:
        await ctx["redis"].aclose()


async def submit(ctx: dict[str, Any], *records: DeploymentRecord) -> None:
    for r in records:
        assert await ctx["store"].create(r)
        await submit_bump(ctx, r)


async def tag_of(remote: Path, app: str) -> str:
    for line in remote_file(remote, f"apps/{app}/prod/values.yaml").splitlines():
        if line.strip().startswith("tag:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise AssertionError("no tag")


def head(remote: Path) -> str:
    return git("rev-parse", "main", cwd=remote).strip()


async def test_one_bump_one_commit_with_trailers_and_record(make: Any, remote: Path) -> None:
    ctx = await make()
    await submit(ctx, record("api", 101))
    await flush_repository(ctx, "gitops")
    assert await tag_of(remote, "api") == "1.0.101"
    sha, message = remote_log(remote)[0]
    assert message.splitlines()[0] == "ci: update api image tag to 1.0.101 (prod)"
    for line in ("Build-Id: 101", "Deployment-Id: 101-api-prod", "Environment: prod",
                 f"Source-Commit: {101:040x}", "Build-Url: https://dev.azure.com/org/p/_build/results?buildId=101"):
        assert line in message.splitlines()
    assert git("log", "-1", "--format=%an <%ae>", "main", cwd=remote).strip() == "Bridge Bot <bot@example.com>"
    diff = git("show", "--format=", "--unified=0", "main", cwd=remote)
    assert [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))] == \
        ['-  tag: "1.0.0"', '+  tag: "1.0.101"']
    rec = await ctx["store"].get("101-api-prod")
    assert rec.commit_sha == sha and rec.state == "verifying" and rec.old_tags == {"image.tag": "1.0.0"}
    assert "committed" in rec.timeline and "pushed" in rec.timeline
    assert await ctx["redis"].exists("arq:job:verify:101-api-prod")
    # the verify step starts before the backlog (the queue's priority set), at the score it was queued with
    queue = ctx["settings"].queue_name
    assert await ctx["redis"].zscore(queue + ":priority", "verify:101-api-prod") == \
        await ctx["redis"].zscore(queue, "verify:101-api-prod")
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 0
    setter = Setter.from_json(await ctx["redis"].get(ctx["keys"].last_setter("gitops", rec.file, "image.tag")))
    assert setter == Setter(101, None, "101-api-prod", "1.0.101", sha)


async def test_pending_bumps_coalesce_into_one_commit(make: Any, remote: Path) -> None:
    ctx = await make()
    before = head(remote)
    await submit(ctx, *(record(app, 200 + i) for i, app in enumerate(APPS[:4])))
    await flush_repository(ctx, "gitops")
    commits = git("rev-list", f"{before}..main", cwd=remote).split()
    assert len(commits) == 1
    message = remote_log(remote)[0][1]
    assert message.splitlines()[0] == "ci: update image tags (4 apps)"
    assert message.count("Deployment-Id:") == 4 and "- ci: update web image tag to 1.0.201 (prod)" in message
    for i, app in enumerate(APPS[:4]):
        assert await tag_of(remote, app) == f"1.0.{200 + i}"
        assert (await ctx["store"].get(f"{200 + i}-{app}-prod")).commit_sha == commits[0]


async def test_older_build_is_superseded_and_never_written(make: Any, remote: Path) -> None:
    ctx = await make()
    await submit(ctx, record("api", 300))
    await flush_repository(ctx, "gitops")
    before = head(remote)
    await submit(ctx, record("api", 299))
    await flush_repository(ctx, "gitops")
    assert head(remote) == before and await tag_of(remote, "api") == "1.0.300"
    old = await ctx["store"].get("299-api-prod")
    assert old.verdict == "superseded" and "300" in (old.reason or "")
    assert await ctx["redis"].exists("arq:job:report:299-api-prod:final")  # queued with the verdict


async def test_same_batch_keeps_only_the_newest_per_target(make: Any, remote: Path) -> None:
    ctx = await make()
    await submit(ctx, record("web", 12), record("web", 14), record("web", 13), record("cron", 5))
    await flush_repository(ctx, "gitops")
    assert await tag_of(remote, "web") == "1.0.14" and await tag_of(remote, "cron") == "1.0.5"
    assert remote_log(remote)[0][1].count("Deployment-Id:") == 2
    assert {(await ctx["store"].get(i)).verdict for i in ("12-web-prod", "13-web-prod")} == {"superseded"}
    assert (await ctx["store"].get("14-web-prod")).state == "verifying"


async def test_ordering_by_finish_time_and_none(make: Any, remote: Path) -> None:
    ctx = await make(ordering="finish-time")
    await submit(ctx, record("api", 50, build_finished="2024-05-01T10:00:00Z"))
    await flush_repository(ctx, "gitops")
    await submit(ctx, record("api", 51, build_finished="2024-05-01T09:00:00Z"))  # higher id, finished earlier
    await flush_repository(ctx, "gitops")
    assert (await ctx["store"].get("51-api-prod")).verdict == "superseded"
    ctx2 = await make(ordering="none")
    await submit(ctx2, record("web", 70))
    await flush_repository(ctx2, "gitops")
    await submit(ctx2, record("web", 60))
    await flush_repository(ctx2, "gitops")
    assert await tag_of(remote, "web") == "1.0.60"


async def test_hold_is_rechecked_under_the_lock(make: Any, remote: Path) -> None:
    ctx = await make()
    before = head(remote)
    await submit(ctx, record("api", 400), record("web", 400))
    await ctx["store"].set_hold("api", "prod", "freeze for release", by="alice")
    await flush_repository(ctx, "gitops")
    held = await ctx["store"].get("400-api-prod")
    assert held.verdict == "held" and "freeze for release" in (held.reason or "")
    assert await tag_of(remote, "api") == "1.0.0" and await tag_of(remote, "web") == "1.0.400"
    assert len(git("rev-list", f"{before}..main", cwd=remote).split()) == 1


async def test_value_already_equal_means_no_commit(make: Any, remote: Path) -> None:
    ctx = await make()
    before = head(remote)
    await submit(ctx, record("api", 1, tag="1.0.0"))
    await flush_repository(ctx, "gitops")
    assert head(remote) == before
    rec = await ctx["store"].get("1-api-prod")
    assert rec.commit_sha == before and rec.state == "verifying" and rec.details.get("unchanged") is True
    assert await ctx["redis"].exists("arq:job:verify:1-api-prod")


async def test_a_failing_edit_is_dropped_and_the_others_commit(make: Any, remote: Path) -> None:
    ctx = await make()
    await submit(ctx, record("auth", 7), record("worker", 7),
                 record("cron", 7, keys=["image"]))  # a mapping: unsafe
    await flush_repository(ctx, "gitops")
    auth = await ctx["store"].get("7-auth-prod")
    assert auth.verdict == "failed" and "image.tag" in (auth.reason or "") and "not found" in (auth.reason or "")
    cron = await ctx["store"].get("7-cron-prod")
    assert cron.verdict == "failed"
    assert await tag_of(remote, "worker") == "1.0.7"
    message = remote_log(remote)[0][1]
    assert "Deployment-Id: 7-worker-prod" in message and "7-auth-prod" not in message
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 0


async def test_create_missing_keys(make: Any, remote: Path) -> None:
    ctx = await make(create_missing_keys=True)
    await submit(ctx, record("auth", 8))
    await flush_repository(ctx, "gitops")
    assert remote_file(remote, "apps/auth/prod/values.yaml") == "image:\n  repository: auth\n  tag: 1.0.8\n"


async def test_rejected_push_reapplies_on_the_new_head(make: Any, remote: Path, tmp_path: Path) -> None:
    ctx = await make()
    calls: list[str] = []

    async def human_pushes_first() -> None:
        if not calls:
            calls.append(human_commit(remote, tmp_path, "apps/web/prod/values.yaml",
                                      values_file("web").replace("replicaCount: 2", "replicaCount: 5")))

    bumps = [Bump("b-1", "web", "prod", "apps/web/prod/values.yaml", ("image.tag",), "9.9.9", build_id=9)]
    result = await apply_bumps(ctx["repos"], "gitops", bumps, before_push=human_pushes_first)
    assert result.push_retries == 1 and result.commit_sha == head(remote)
    text = remote_file(remote, "apps/web/prod/values.yaml")
    assert "replicaCount: 5" in text and 'tag: "9.9.9"' in text
    assert git("merge-base", "--is-ancestor", calls[0], "main", cwd=remote) == ""


async def test_pushed_but_unrecorded_bump_is_recorded_not_rewritten(make: Any, remote: Path) -> None:
    ctx = await make()
    rec = record("api", 500)
    await ctx["store"].create(rec)
    first = await apply_bumps(ctx["repos"], "gitops", [Bump.from_record(rec)])  # a run that died after pushing
    await submit_bump(ctx, rec)
    await flush_repository(ctx, "gitops")
    assert head(remote) == first.commit_sha
    stored = await ctx["store"].get(rec.id)
    assert stored.commit_sha == first.commit_sha and stored.state == "verifying"


async def test_pull_request_branch_reuses_the_edit(make: Any, remote: Path) -> None:
    ctx = await make()
    bumps = [Bump("pr-1", "api", "prod", "apps/api/prod/values.yaml", ("image.tag",), "2.0.0", build_id=2)]
    branch = "gitops-bridge/prod/api-2.0.0"
    first = await apply_bumps(ctx["repos"], "gitops", bumps, branch=branch)
    again = await apply_bumps(ctx["repos"], "gitops", bumps, branch=branch)  # idempotent re-run
    assert first.commit_sha and again.commit_sha is None and again.head == first.commit_sha
    assert again.results[0].status == "already-pushed"
    assert 'tag: "2.0.0"' in remote_file(remote, "apps/api/prod/values.yaml", branch)
    assert await tag_of(remote, "api") == "1.0.0"


async def test_busy_lock_leaves_the_bump_pending_and_schedules_a_retry(make: Any, remote: Path) -> None:
    ctx = await make()
    other = RedisLock(ctx["redis"], ctx["keys"].lock("gitops"), lease_seconds=5)
    assert await other.acquire(0) is LockOutcome.ACQUIRED
    await submit(ctx, record("api", 600))
    await flush_repository(ctx, "gitops")
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 1
    queued = [k for k in await ctx["redis"].keys("arq:job:flush-later:gitops:*")]
    assert len(queued) == 1
    await other.release()
    await flush_repository(ctx, "gitops")
    assert await tag_of(remote, "api") == "1.0.600"


async def test_an_inline_writer_leaves_a_busy_lock_to_its_holder_and_the_outbox_job_is_one_deferred_net(
        make: Any, remote: Path) -> None:
    """A build's own job writes at once unless another holds the lock: then it neither waits nor queues anything
    (the holder drains the pending set before letting go). The flush job written with each bump is a safety net one
    interval later, one per repository and interval however many bumps ask."""
    import time

    from workers.deploy import OUTBOX_SECONDS, hand_over

    ctx = await make()
    other = RedisLock(ctx["redis"], ctx["keys"].lock("gitops"), lease_seconds=5)
    assert await other.acquire(0) is LockOutcome.ACQUIRED
    env = ctx["routing"].route("api").environment("prod")
    before = time.time()
    for build in (600, 601, 602):
        r = record("api", build)
        assert await ctx["store"].create(r, then=hand_over(ctx, r, env))
    await flush_repository(ctx, "gitops", inline=True)
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 3
    assert await ctx["redis"].keys("arq:job:flush-later:*") == []  # nothing queued for later by the inline writer
    nets = await ctx["redis"].zrange(ctx["settings"].queue_name, 0, -1, withscores=True)
    assert 1 <= len(nets) <= 2  # two only when the bumps straddle an interval boundary
    assert all(job.decode().startswith("flush:gitops:") for job, _ in nets)
    assert all(score / 1000 >= before + OUTBOX_SECONDS - 0.01 for _, score in nets)
    await other.release()
    await flush_repository(ctx, "gitops")  # what the net job does when it comes due
    assert await tag_of(remote, "api") == "1.0.602"
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 0


async def test_unreachable_remote_retries_until_the_deadline(make: Any, remote: Path) -> None:
    from arq import Retry

    ctx = await make()
    await submit(ctx, record("api", 700))
    ctx["repos"].repositories["gitops"] = dataclasses.replace(ctx["repos"].repositories["gitops"],
                                                              url="file:///nowhere.git")
    with pytest.raises(Retry):
        await flush_repository(ctx, "gitops")
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 1
    ctx["job_try"] = 40  # a transient failure is never a failure for good, however often it is retried
    with pytest.raises(Retry):
        await flush_repository(ctx, "gitops")
    assert (await ctx["store"].get("700-api-prod")).state == "writing"
    await ctx["store"].update("700-api-prod", timeline={"started": "2020-01-01T00:00:00.000Z"})  # deadline passed
    with pytest.raises(Retry):
        await flush_repository(ctx, "gitops")
    ended = await ctx["store"].get("700-api-prod")
    assert ended.verdict == "timed-out" and "git" in (ended.reason or "") and ended.state == "reporting"
    assert await ctx["redis"].zcard(ctx["keys"].pending("gitops")) == 0


# -- pure parts -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("candidate", "current", "policy", "older"),
    [
        (Setter(5, None, "a"), Setter(6, None, "b"), "build-id", True),
        (Setter(6, None, "a"), Setter(6, None, "b"), "build-id", False),
        (Setter(7, None, "a"), Setter(6, None, "b"), "build-id", False),
        (Setter(9, "2024-01-01T00:00:00Z", "a"), Setter(2, "2024-01-02T00:00:00Z", "b"), "finish-time", True),
        (Setter(1, "2024-01-03T00:00:00Z", "a"), Setter(2, "2024-01-02T00:00:00Z", "b"), "finish-time", False),
        (Setter(1, None, "a"), Setter(2, "2024-01-02T00:00:00Z", "b"), "finish-time", True),
        (Setter(1, None, "a"), Setter(2, None, "b"), "none", False),
    ],
)
def test_is_older(candidate: Setter, current: Setter, policy: Any, older: bool) -> None:
    assert is_older(candidate, current, policy) is older


def cand(dep: str, build: int, *, group: str = "api", policy: Any = "build-id", seq: float = 0.0,
         force: bool = False) -> Candidate:
    return Candidate(dep, (group, "prod"), (("f.yaml", f"{group}.tag"),), Setter(build, None, dep), policy, seq, force)


def test_decide() -> None:
    last = {("f.yaml", "api.tag"): Setter(10, None, "old")}
    d = decide([cand("a9", 9), cand("w1", 1, group="web"), cand("w3", 3, group="web")], last)
    assert [c.deployment_id for c in d.apply] == ["w3"]
    assert {c.deployment_id for c, _ in d.superseded} == {"a9", "w1"}
    assert [c.deployment_id for c in decide([cand("f", 9, force=True)], last).apply] == ["f"]
    assert [c.deployment_id for c in decide([cand("n1", 1, policy="none", seq=2), cand("n2", 5, policy="none", seq=1)],
                                            last).apply] == ["n1"]
    assert [c.deployment_id for c in decide([cand("a10", 10)], {("f.yaml", "api.tag"): Setter(10, None, "a10")}
                                            ).apply] == ["a10"]


def test_commit_message_template_and_trailers() -> None:
    b = Bump("d1", "api", "prod", "v.yaml", ("image.tag",), "1.2.3", build_id=42, build_url="https://x/42\nevil: 1")
    message = commit_message("deploy {app}:{tag} to {env} [{unknown}]", [b])
    lines = message.splitlines()
    assert lines[0] == "deploy api:1.2.3 to prod [{unknown}]"
    assert "Build-Url: https://x/42 evil: 1" in lines and lines[-1] == "Deployment-Id: d1"
    assert commit_message("{", [b]).startswith("ci: update api image tag to 1.2.3 (prod)")
