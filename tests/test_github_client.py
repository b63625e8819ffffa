"""GitHubClient (PyGithub) against the GitHub fake over a real socket, backed by real bare repositories."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.errors import AuthError, NotFound, UpstreamUnavailable, is_transient
from bridge.settings import Settings
from workers.fakes.github import GitHubFake
from workers.github import GitHubClient, GitHubRejected

REPO = "acme/gitops"


def git(*args: str, cwd: Path | None = None) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "HOME": str(cwd or "/tmp"), "PATH": "/usr/bin:/bin:/usr/local/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def make_remote(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository with `main` holding values.yaml, and a work clone to make branches in."""
    bare = tmp_path / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "work"
    git("clone", "-q", str(bare), str(work))
    (work / "values.yaml").write_text("image:\n  tag: \"1\"\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "init", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return bare, work


def push_branch(work: Path, branch: str, tag: str) -> str:
    git("checkout", "-q", "-B", branch, "origin/main", cwd=work)
    (work / "values.yaml").write_text(f"image:\n  tag: \"{tag}\"\n")
    git("commit", "-q", "-am", f"bump {tag}", cwd=work)
    git("push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    return make_remote(tmp_path)


@pytest.fixture
def fake(remote: tuple[Path, Path]) -> Iterator[GitHubFake]:
    with GitHubFake({REPO: remote[0]}, token="s3cret-token", prefix="/api/v3") as served:
        yield served


def client_for(fake: GitHubFake, token: str = "s3cret-token") -> GitHubClient:
    return GitHubClient(token, fake.api_url, timeout=5, seconds_between_writes=None)


def test_from_settings_needs_a_token() -> None:
    assert GitHubClient.from_settings(Settings()) is None
    client = GitHubClient.from_settings(Settings(github={"token": "t", "api_url": "https://ghe.example/api/v3"}))
    assert client is not None and client.api_url == "https://ghe.example/api/v3"


def test_find_or_create_opens_one_pull_request_per_branch(fake: GitHubFake, remote: tuple[Path, Path]) -> None:
    bare, work = remote
    sha = push_branch(work, "gitops-bridge/prod/api-42", "42")
    client = client_for(fake)

    async def scenario() -> None:
        first = await client.find_or_create_pull(REPO, "gitops-bridge/prod/api-42", "main", "Deploy 42", "body",
                                                 ["gitops-bridge", "prod"])
        again = await client.find_or_create_pull(REPO, "gitops-bridge/prod/api-42", "main", "Deploy 42", "body",
                                                 ["gitops-bridge", "prod"])
        assert first.created and not again.created
        assert first.number == again.number
        assert first.state == "open" and not first.merged and first.merge_commit_sha is None
        assert first.head_sha == sha
        assert first.url.endswith(f"/{REPO}/pull/{first.number}")

    asyncio.run(scenario())
    assert len(fake.pulls(REPO)) == 1
    assert fake.pull(REPO, 1).labels == ["gitops-bridge", "prod"]
    creates = fake.calls("POST", "/pulls")
    assert len(creates) == 1 and creates[0].path == f"/api/v3/repos/{REPO}/pulls"
    assert creates[0].body == {"base": "main", "head": "gitops-bridge/prod/api-42", "title": "Deploy 42",
                               "body": "body"}
    listing = fake.calls("GET", f"/repos/{REPO}/pulls")[0]
    assert listing.query == {"state": "open", "head": "acme:gitops-bridge/prod/api-42", "base": "main"}
    assert all(r.authorization == "token s3cret-token" for r in fake.requests)


def test_merge_is_real_and_read_back(fake: GitHubFake, remote: tuple[Path, Path]) -> None:
    bare, work = remote
    head = push_branch(work, "gitops-bridge/prod/api-43", "43")
    client = client_for(fake)

    async def scenario() -> None:
        pr = await client.find_or_create_pull(REPO, "gitops-bridge/prod/api-43", "main", "t", "b", [])
        assert not fake.calls("POST", "/labels")
        merge_sha = fake.merge(REPO, pr.number)
        info = await client.get_pull(REPO, pr.number)
        assert info.merged and info.state == "closed" and info.merge_commit_sha == merge_sha
        assert git("--git-dir", str(bare), "rev-parse", "refs/heads/main") == merge_sha
        parents = git("--git-dir", str(bare), "rev-list", "--parents", "-n1", merge_sha).split()[1:]
        assert parents[1] == head
        assert git("--git-dir", str(bare), "show", f"{merge_sha}:values.yaml") == 'image:\n  tag: "43"'
        # Closing a merged pull request changes nothing.
        again = await client.close_pull(REPO, pr.number, "too late")
        assert again.merged and fake.pull(REPO, pr.number).comments == []

    asyncio.run(scenario())


def test_close_comments_then_closes(fake: GitHubFake, remote: tuple[Path, Path]) -> None:
    push_branch(remote[1], "gitops-bridge/prod/api-44", "44")
    client = client_for(fake)

    async def scenario() -> None:
        pr = await client.find_or_create_pull(REPO, "gitops-bridge/prod/api-44", "main", "t", "b", [])
        closed = await client.close_pull(REPO, pr.number, "superseded by #9")
        assert closed.state == "closed" and not closed.merged
        assert await client.list_open_pulls(REPO, "gitops-bridge/") == []

    asyncio.run(scenario())
    assert fake.pull(REPO, 1).comments == ["superseded by #9"]
    assert [c.method for c in fake.calls(path_contains="/1")][-2:] == ["POST", "PATCH"]
    assert fake.calls("PATCH")[0].body == {"state": "closed"}


def test_list_open_pulls_filters_by_prefix_across_pages(fake: GitHubFake, remote: tuple[Path, Path]) -> None:
    work = remote[1]
    push_branch(work, "feature/other", "x")
    git("push", "-q", "origin", *[f"HEAD:refs/heads/gitops-bridge/dev/api-{i}" for i in range(35)], cwd=work)
    client = client_for(fake)

    async def scenario() -> list[int]:
        for i in range(35):
            await client.find_or_create_pull(REPO, f"gitops-bridge/dev/api-{i}", "main", f"t{i}", "b", [])
        await client.find_or_create_pull(REPO, "feature/other", "main", "other", "b", [])
        return [p.number for p in await client.list_open_pulls(REPO, "gitops-bridge/dev/")]

    numbers = asyncio.run(scenario())
    assert sorted(numbers) == list(range(1, 36))
    assert any(r.query.get("page") == "2" for r in fake.calls("GET", f"/repos/{REPO}/pulls"))


def test_errors_are_translated(fake: GitHubFake, remote: tuple[Path, Path]) -> None:
    push_branch(remote[1], "gitops-bridge/prod/api-45", "45")

    async def scenario() -> None:
        with pytest.raises(AuthError) as auth:
            await client_for(fake, "wrong").get_pull(REPO, 1)
        assert "wrong" not in str(auth.value)
        client = client_for(fake)
        with pytest.raises(NotFound):
            await client.get_pull(REPO, 99)
        with pytest.raises(NotFound):
            await client.get_pull("acme/missing", 1)
        fake.fail_next(502, message="Bad Gateway")
        with pytest.raises(UpstreamUnavailable) as bad_gateway:
            await client.get_pull(REPO, 1)
        assert bad_gateway.value.status == 502 and is_transient(bad_gateway.value)
        fake.fail_next(429, headers={"Retry-After": "7"}, message="Too Many Requests")
        with pytest.raises(UpstreamUnavailable) as limited:
            await client.list_open_pulls(REPO)
        assert limited.value.retry_after == 7.0
        fake.fail_next(403, message="API rate limit exceeded for installation ID 1.")
        with pytest.raises(UpstreamUnavailable):
            await client.list_open_pulls(REPO)
        fake.fail_next(403, message="Resource not accessible by integration")
        with pytest.raises(AuthError):
            await client.list_open_pulls(REPO)
        with pytest.raises(GitHubRejected, match="head invalid"):
            await client.find_or_create_pull(REPO, "no-such-branch", "main", "t", "b", [])
        git("push", "-q", "origin", "origin/main:refs/heads/gitops-bridge/prod/same", cwd=remote[1])  # nothing ahead
        with pytest.raises(GitHubRejected, match="No commits between"):
            await client.find_or_create_pull(REPO, "gitops-bridge/prod/same", "main", "t", "b", [])

    asyncio.run(scenario())


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = GitHubClient("t", f"http://127.0.0.1:{port}", timeout=2, seconds_between_writes=None)
    with pytest.raises(UpstreamUnavailable):
        asyncio.run(client.get_pull(REPO, 1))
