"""Pull requests for gated environments: real bare repository, the GitHub fake over a socket, real Redis (db 3)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis_server import shared_redis_url

from bridge.queue import CHECK_PULL_REQUEST, REPORT_DEPLOYMENT, VERIFY_DEPLOYMENT, Keys
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.fakes.github import GitHubFake
from workers.github import GitHubClient
from workers.gitrepo import RepoCache
from workers.ordering import Setter
from workers.pullrequest import (
    branch_name,
    check_pull_request,
    deployment_from_body,
    open_pull_request,
    pull_body,
)

REDIS_URL = shared_redis_url(3)
QUEUE = "t3:queue"
GH_REPO = "acme/gitops"
FILE = "apps/api/values-prod.yaml"
VALUES = '# api in prod\nimage:\n  repository: registry.example/api\n  tag: "41"  # set by gitops-bridge\nreplicas: 2\n'


def git(*args: str, cwd: Path | None = None) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "HOME": "/tmp", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def show(bare: Path, ref: str) -> str:
    return subprocess.run(["git", "--git-dir", str(bare), "show", f"{ref}:{FILE}"], check=True, capture_output=True,
                          text=True).stdout


def branches(bare: Path) -> list[str]:
    return git("--git-dir", str(bare), "for-each-ref", "--format=%(refname:short)", "refs/heads").split()


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    remote = tmp_path / "gitops.git"
    git("init", "-q", "--bare", "-b", "main", str(remote))
    work = tmp_path / "seed"
    git("clone", "-q", str(remote), str(work))
    (work / FILE).parent.mkdir(parents=True)
    (work / FILE).write_text(VALUES)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "seed", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return remote


@pytest.fixture
def fake(bare: Path) -> Iterator[GitHubFake]:
    with GitHubFake({GH_REPO: bare}, token="gh-token", prefix="/api/v3") as served:
        yield served


def routing_for(bare: Path, ordering: str = "build-id") -> Any:
    return parse_routing({
        "repositories": {"gitops": {"url": str(bare), "branch": "main", "github": GH_REPO}},
        "routes": [{
            "name": "api",
            "ordering": ordering,
            "match": {"project": "p", "definition": "d"},
            "environments": [{"name": "prod", "repository": "gitops", "file": FILE, "promotion": "pull-request"}],
        }],
    })


@pytest.fixture
async def ctx(tmp_path: Path, bare: Path, fake: GitHubFake) -> AsyncIterator[dict[str, Any]]:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    await redis.flushdb()
    keys = Keys(prefix="t3")
    settings = Settings(
        queue_name=QUEUE, key_prefix="t3",
        git={"work_dir": tmp_path / "clones", "lock_wait_seconds": 5},
        github={"token": "gh-token", "api_url": fake.api_url, "labels": ["gitops-bridge", "env:prod"],
                "pr_poll_seconds": 30, "pr_max_age_seconds": 3600},
    )
    routing = routing_for(bare)
    client = GitHubClient.from_settings(settings, seconds_between_writes=None)
    yield {
        "settings": settings, "routing": routing, "keys": keys, "redis": redis, "job_try": 1,
        "store": DeploymentStore(redis, keys, queue_name=settings.queue_name), "github": client,
        "repos": RepoCache(settings.git, routing.repositories),
    }
    await redis.flushdb()
    await redis.aclose()


async def make_record(ctx: dict[str, Any], build_id: int, **extra: Any) -> DeploymentRecord:
    record = DeploymentRecord(
        id=f"{build_id}-api-prod-abc123", build_key=f"org:proj:{build_id}", build_id=build_id,
        build_number=f"2026.{build_id}", build_url=f"https://dev.azure.com/org/proj/_build/results?buildId={build_id}",
        source_commit=f"{build_id:040x}", source_branch="refs/heads/main", route="api", environment="prod",
        repository="gitops", file=FILE, keys=["image.tag"], promotion="pull-request", tag=str(build_id),
        state="writing", **extra,
    )
    assert await ctx["store"].create(record)
    return record


async def queued(ctx: dict[str, Any]) -> list[tuple[str, tuple[Any, ...], str]]:
    jobs = await ctx["redis"].queued_jobs(queue_name=QUEUE)
    return sorted((j.function, tuple(j.args), j.job_id or "") for j in jobs)


async def functions(ctx: dict[str, Any], name: str) -> list[tuple[Any, ...]]:
    return [args for fn, args, _ in await queued(ctx) if fn == name]


# -- pure helpers -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("tag", "branch"), [
    ("42", "gitops-bridge/prod/api-42"),
    ("1.2..3", "gitops-bridge/prod/api-1.2.3"),
    ("v1.lock", "gitops-bridge/prod/api-v1"),
    ("2026.1_abc-def", "gitops-bridge/prod/api-2026.1_abc-def"),
])
def test_branch_name_is_a_valid_ref(tag: str, branch: str) -> None:
    name = branch_name("prod", "api", tag)
    assert name == branch
    subprocess.run(["git", "check-ref-format", f"refs/heads/{name}"], check=True)


def test_body_names_build_commit_tags_and_deployment() -> None:
    record = DeploymentRecord(id="7-api-prod-x", build_key="o:p:7", build_id=7, build_number="2026.7",
                              build_url="https://ado/build/7", source_commit="c0ffee", route="api",
                              environment="prod", repository="gitops", file=FILE, keys=["image.tag"], tag="7")
    body = pull_body(record, {"image.tag": "6"})
    for needle in ("[2026.7](https://ado/build/7)", "`c0ffee`", "`6` → `7`", "`7-api-prod-x`"):
        assert needle in body
    assert deployment_from_body(body) == "7-api-prod-x"


# -- opening ----------------------------------------------------------------------------------------------------------

async def test_opens_one_pull_request_with_the_exact_edit_on_a_branch(
    ctx: dict[str, Any], fake: GitHubFake, bare: Path
) -> None:
    record = await make_record(ctx, 42)
    main_before = git("--git-dir", str(bare), "rev-parse", "main")
    result = await open_pull_request(ctx, record.id)
    assert result["status"] == "opened"

    branch = "gitops-bridge/prod/api-42"
    assert show(bare, branch) == VALUES.replace('"41"', '"42"')
    assert git("--git-dir", str(bare), "rev-parse", "main") == main_before  # the target branch is untouched
    message = git("--git-dir", str(bare), "log", "-1", "--format=%B", branch)
    assert f"Deployment-Id: {record.id}" in message
    pr = fake.pull(GH_REPO, 1)
    assert (pr.head_ref, pr.base_ref, pr.labels) == (branch, "main", ["gitops-bridge", "env:prod"])
    assert pr.title == "Deploy api 42 to prod"
    for needle in (record.build_url, record.source_commit, "`41` → `42`", record.id):
        assert needle in pr.body

    stored = await ctx["store"].get(record.id)
    assert stored.state == "awaiting-merge" and stored.pr_number == 1 and stored.old_tags == {"image.tag": "41"}
    assert stored.pr_url == f"{fake.url}/{GH_REPO}/pull/1" and "pr_opened" in stored.timeline
    assert stored.commit_sha is None
    assert await functions(ctx, CHECK_PULL_REQUEST) == [(record.id,)]
    assert await ctx["redis"].get("t3:pr:acme/gitops#1") == record.id.encode()

    # arq may run the job twice, and a re-run after a crash must not open a second pull request.
    await ctx["redis"].set(ctx["keys"].deployment(record.id), stored.model_copy(update={"state": "writing"})
                           .model_dump_json(), keepttl=True)  # as if the worker died before recording the PR
    again = await open_pull_request(ctx, record.id)
    assert again == {"status": "exists", "pull_request": 1, "url": stored.pr_url}
    assert len(fake.pulls(GH_REPO)) == 1 and len(fake.calls("POST", "/pulls")) == 1
    assert git("--git-dir", str(bare), "rev-list", "--count", f"main..{branch}") == "1"


async def test_merge_moves_the_deployment_to_verification_with_the_merge_commit(
    ctx: dict[str, Any], fake: GitHubFake, bare: Path
) -> None:
    record = await make_record(ctx, 42)
    await open_pull_request(ctx, record.id)
    assert (await check_pull_request(ctx, record.id))["status"] == "open"

    merge_sha = fake.merge(GH_REPO, 1)
    assert (await check_pull_request(ctx, record.id)) == {"status": "merged", "commit": merge_sha}
    stored = await ctx["store"].get(record.id)
    assert stored.commit_sha == merge_sha == git("--git-dir", str(bare), "rev-parse", "main")
    assert stored.state == "verifying" and stored.verdict is None and "merged" in stored.timeline
    assert show(bare, "main") == VALUES.replace('"41"', '"42"')
    assert (VERIFY_DEPLOYMENT, (record.id,), f"verify:{record.id}") in await queued(ctx)
    setter = Setter.from_json(await ctx["redis"].get(Keys("t3").last_setter("gitops", FILE, "image.tag")))
    assert setter is not None and setter.deployment_id == record.id and setter.commit == merge_sha
    # The poll that was already queued finds nothing more to do.
    assert (await check_pull_request(ctx, record.id))["status"] == "skipped"


async def test_closed_without_merge_is_rejected(ctx: dict[str, Any], fake: GitHubFake) -> None:
    record = await make_record(ctx, 42)
    await open_pull_request(ctx, record.id)
    fake.close(GH_REPO, 1)
    assert (await check_pull_request(ctx, record.id))["status"] == "rejected"
    stored = await ctx["store"].get(record.id)
    assert stored.verdict == "rejected" and "closed without merging" in (stored.reason or "")
    assert (REPORT_DEPLOYMENT, (record.id, "final"), f"report:{record.id}:final") in await queued(ctx)


async def test_too_old_pull_request_times_out_and_is_closed(ctx: dict[str, Any], fake: GitHubFake) -> None:
    record = await make_record(ctx, 42)
    await open_pull_request(ctx, record.id)
    stored = await ctx["store"].get(record.id)
    await ctx["store"].update(record.id, details={**stored.details, "pr_opened_at": time.time() - 7200})
    assert (await check_pull_request(ctx, record.id))["status"] == "timed-out"
    assert (await ctx["store"].get(record.id)).verdict == "timed-out"
    pr = fake.pull(GH_REPO, 1)
    assert pr.state == "closed" and not pr.merged and "stopped waiting" in pr.comments[0]


async def test_newer_build_closes_the_older_pull_request_as_superseded(
    ctx: dict[str, Any], fake: GitHubFake, bare: Path
) -> None:
    older = await make_record(ctx, 42)
    newer = await make_record(ctx, 43)
    await open_pull_request(ctx, older.id)
    assert (await open_pull_request(ctx, newer.id))["pull_request"] == 2

    first, second = fake.pull(GH_REPO, 1), fake.pull(GH_REPO, 2)
    assert first.state == "closed" and not first.merged and first.comments[0].startswith("Superseded by #2")
    assert second.state == "open" and second.head_ref == "gitops-bridge/prod/api-43"
    assert "`41` → `43`" in second.body  # the old tag is the target branch's, not the older PR's
    assert (await ctx["store"].get(older.id)).verdict == "superseded"
    assert (await ctx["store"].get(newer.id)).state == "awaiting-merge"
    assert {"gitops-bridge/prod/api-42", "gitops-bridge/prod/api-43"} <= set(branches(bare))
    # The closed PR's late check (from the poll or the webhook) changes nothing.
    assert (await check_pull_request(ctx, older.id))["status"] == "skipped"


async def test_older_build_never_replaces_a_newer_pull_request(
    ctx: dict[str, Any], fake: GitHubFake, bare: Path
) -> None:
    newer = await make_record(ctx, 43)
    older = await make_record(ctx, 42)
    await open_pull_request(ctx, newer.id)
    assert (await open_pull_request(ctx, older.id))["status"] == "superseded"
    stored = await ctx["store"].get(older.id)
    assert stored.verdict == "superseded" and "43" in (stored.reason or "")
    assert len(fake.pulls(GH_REPO)) == 1 and fake.pull(GH_REPO, 1).state == "open"
    assert "gitops-bridge/prod/api-42" not in branches(bare)


async def test_older_build_after_a_newer_merge_is_superseded(ctx: dict[str, Any], fake: GitHubFake) -> None:
    newer = await make_record(ctx, 43)
    await open_pull_request(ctx, newer.id)
    fake.merge(GH_REPO, 1)
    await check_pull_request(ctx, newer.id)
    await ctx["redis"].delete(Keys("t3").pull_latest("api", "prod"))  # only the last setter is left to tell
    older = await make_record(ctx, 42)
    assert (await open_pull_request(ctx, older.id))["status"] == "superseded"
    assert len(fake.pulls(GH_REPO)) == 1


async def test_tag_already_on_the_target_branch_needs_no_pull_request(
    ctx: dict[str, Any], fake: GitHubFake, bare: Path
) -> None:
    record = await make_record(ctx, 41)
    result = await open_pull_request(ctx, record.id)
    head = git("--git-dir", str(bare), "rev-parse", "main")
    assert result == {"status": "already-deployed", "commit": head}
    stored = await ctx["store"].get(record.id)
    assert stored.state == "verifying" and stored.commit_sha == head
    assert fake.calls("POST", "/pulls") == [] and branches(bare) == ["main"]
    assert await functions(ctx, VERIFY_DEPLOYMENT) == [(record.id,)]


async def test_github_outage_retries_without_a_second_pull_request(
    ctx: dict[str, Any], fake: GitHubFake, bare: Path
) -> None:
    record = await make_record(ctx, 42)
    fake.fail_next(502, method="POST", path_contains="/pulls", message="Bad Gateway")
    with pytest.raises(Retry):
        await open_pull_request(ctx, record.id)
    assert (await ctx["store"].get(record.id)).verdict is None
    ctx["job_try"] = 2
    assert (await open_pull_request(ctx, record.id))["status"] == "opened"
    assert len(fake.pulls(GH_REPO)) == 1
    assert git("--git-dir", str(bare), "rev-list", "--count", "main..gitops-bridge/prod/api-42") == "1"


async def test_check_during_an_outage_keeps_waiting(ctx: dict[str, Any], fake: GitHubFake) -> None:
    record = await make_record(ctx, 42)
    await open_pull_request(ctx, record.id)
    fake.fail_next(503, method="GET", path_contains="/pulls/1")
    assert (await check_pull_request(ctx, record.id))["status"] == "unavailable"
    assert (await ctx["store"].get(record.id)).verdict is None


async def test_permanent_failures_finish_the_deployment(ctx: dict[str, Any], fake: GitHubFake) -> None:
    record = await make_record(ctx, 42)
    fake.fail_next(401, message="Bad credentials", method="POST")
    await open_pull_request(ctx, record.id)
    stored = await ctx["store"].get(record.id)
    assert stored.verdict == "failed" and "gh-token" not in (stored.reason or "")

    without = await make_record(ctx, 44)
    ctx["github"] = None
    await open_pull_request(ctx, without.id)
    assert "BRIDGE_GITHUB__TOKEN" in ((await ctx["store"].get(without.id)).reason or "")


async def test_held_environment_opens_nothing(ctx: dict[str, Any], fake: GitHubFake) -> None:
    record = await make_record(ctx, 42)
    await ctx["store"].set_hold("api", "prod", "freeze")
    assert (await open_pull_request(ctx, record.id))["status"] == "held"
    assert (await ctx["store"].get(record.id)).verdict == "held" and fake.requests == []


async def test_rerun_after_a_failed_close_still_closes_the_superseded_pull_request(
    ctx: dict[str, Any], fake: GitHubFake
) -> None:
    older = await make_record(ctx, 42)
    newer = await make_record(ctx, 43)
    await open_pull_request(ctx, older.id)
    fake.fail_next(502, method="PATCH", path_contains="/pulls/1")
    with pytest.raises(Retry):
        await open_pull_request(ctx, newer.id)
    assert (await ctx["store"].get(older.id)).verdict == "superseded" and fake.pull(GH_REPO, 1).state == "open"
    ctx["job_try"] = 2
    assert (await open_pull_request(ctx, newer.id))["status"] == "exists"
    assert fake.pull(GH_REPO, 1).state == "closed" and len(fake.pulls(GH_REPO)) == 2
    assert await ctx["redis"].get(Keys("t3").pull_latest("api", "prod")) == newer.id.encode()
