from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from writer_worker import git, human_commit, make_remote, remote_file, remote_log, values_file

from bridge.errors import AuthError, PermanentError, PushRejected, UnsafeWrite, UpstreamUnavailable
from bridge.routing import Repository
from bridge.settings import GitSettings
from workers.gitobjects import Blob
from workers.gitrepo import RepoCache

TOKEN = "s3cr3t-t0ken-value"


def cache_for(tmp_path: Path, url: str, **git_cfg: object) -> RepoCache:
    settings = GitSettings(work_dir=tmp_path / "cache", **git_cfg)  # type: ignore[arg-type]
    return RepoCache(settings, {"gitops": Repository(url=url, branch="main")})


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path, {"apps/a/values.yaml": values_file("a"), "README.md": "gitops\n"})


async def edit_commit_push(cache: RepoCache, text: str, message: str = "bump\n", branch: str = "main") -> str:
    synced = await cache.sync("gitops", branch)
    sha = await cache.write_commit("gitops", synced.head, [Blob("apps/a/values.yaml", text.encode())], message)
    await cache.push("gitops", sha, branch)
    return sha


def changed_files(remote: Path, sha: str) -> list[str]:
    return git("diff-tree", "-r", "--no-commit-id", "--name-only", f"{sha}^", sha, cwd=remote).split()


async def test_sync_follows_the_remote_and_forgets_unpushed_writes(tmp_path: Path, remote: Path) -> None:
    cache = cache_for(tmp_path, f"file://{remote}")
    first = await cache.sync("gitops")
    assert first.exists and first.head == git("rev-parse", "main", cwd=remote).strip()
    unpushed = await cache.write_commit("gitops", first.head, [Blob("README.md", b"never pushed\n")], "local\n")
    human = human_commit(remote, tmp_path, "README.md", "changed by a human\n")
    second = await cache.sync("gitops")
    assert second.head == human != unpushed
    files = await cache.read_files("gitops", second.head, ["README.md", "apps/a/values.yaml"])
    assert files["README.md"] == Blob("README.md", b"changed by a human\n")
    assert isinstance(files["apps/a/values.yaml"], Blob) and b'tag: "1.0.0"' in files["apps/a/values.yaml"].data


async def test_the_cache_is_bare_and_never_maintains_itself(tmp_path: Path, remote: Path) -> None:
    cache = cache_for(tmp_path, f"file://{remote}")
    await edit_commit_push(cache, values_file("a", "2.0.0"))
    path = cache.path("gitops")
    assert git("rev-parse", "--is-bare-repository", cwd=path).strip() == "true"
    assert not (path / "apps").exists() and not (path / "index").exists()
    assert git("config", "gc.auto", cwd=path).strip() == "0"
    assert git("config", "maintenance.auto", cwd=path).strip() == "false"


async def test_a_commit_changes_exactly_the_intended_files(tmp_path: Path, remote: Path) -> None:
    cache = cache_for(tmp_path, f"file://{remote}")
    sha = await edit_commit_push(cache, values_file("a", "2.0.0"))
    assert git("rev-parse", "main", cwd=remote).strip() == sha
    assert changed_files(remote, sha) == ["apps/a/values.yaml"]
    assert remote_file(remote, "apps/a/values.yaml") == values_file("a", "2.0.0")
    assert remote_file(remote, "README.md") == "gitops\n"
    # A "change" that changes nothing is refused before anything is pushed.
    head = (await cache.sync("gitops")).head
    with pytest.raises(UnsafeWrite):
        await cache.write_commit("gitops", head, [Blob("apps/a/values.yaml", values_file("a", "2.0.0").encode())],
                                 "no-op\n")
    assert git("rev-parse", "main", cwd=remote).strip() == sha


async def test_an_executable_file_keeps_its_mode(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, {"apps/x/values.yaml": values_file("x")})
    work = tmp_path / "chmod"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    git("update-index", "--chmod=+x", "apps/x/values.yaml", cwd=work)
    git("commit", "-qm", "executable", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    cache = cache_for(tmp_path, str(remote))
    head = (await cache.sync("gitops")).head
    blob = (await cache.read_files("gitops", head, ["apps/x/values.yaml"]))["apps/x/values.yaml"]
    assert isinstance(blob, Blob) and blob.mode == "100755"
    sha = await cache.write_commit("gitops", head, [Blob(blob.path, b"image:\n  tag: '2'\n", blob.mode)], "x\n")
    await cache.push("gitops", sha, "main")
    assert git("ls-tree", "main", "apps/x/values.yaml", cwd=remote).split()[0] == "100755"


async def test_only_regular_files_inside_the_repository_are_read(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, {"apps/a/values.yaml": values_file("a"), "top.yaml": "a: 1\n"})
    work = tmp_path / "links"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    os.symlink("/etc", work / "escape")
    os.symlink("a/values.yaml", work / "apps" / "link.yaml")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "links", cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    cache = cache_for(tmp_path, str(remote))
    head = (await cache.sync("gitops")).head
    asked = ["escape/passwd", "apps/link.yaml", "apps/a", "apps/missing.yaml", "../outside.yaml", ".git/config",
             "/etc/passwd", "top.yaml", "apps/a/values.yaml"]
    files = await cache.read_files("gitops", head, asked)
    assert set(files) == set(asked)
    assert {f for f, got in files.items() if isinstance(got, Blob)} == {"top.yaml", "apps/a/values.yaml"}
    with pytest.raises(PermanentError):
        await cache.write_commit("gitops", head, [Blob("../outside.yaml", b"x\n")], "escape\n")


@pytest.mark.parametrize("damage", ["missing", "no-head", "garbage-config", "stale-locks", "wrong-url", "old-layout"])
async def test_broken_cache_is_repaired(tmp_path: Path, remote: Path, damage: str) -> None:
    cache = cache_for(tmp_path, f"file://{remote}")
    await cache.sync("gitops")
    path = cache.path("gitops")
    if damage == "missing":
        subprocess.run(["rm", "-rf", str(path)], check=True)
    elif damage == "no-head":
        (path / "HEAD").unlink()
    elif damage == "garbage-config":
        (path / "config").write_bytes(b"[not a config\n")
    elif damage == "stale-locks":
        (path / "packed-refs.lock").write_text("")
        (path / "refs" / "remotes" / "origin" / "main.lock").write_text("")
    elif damage == "wrong-url":
        git("remote", "set-url", "origin", "file:///nowhere", cwd=path)
        cache = cache_for(tmp_path, f"file://{remote}")  # a fresh process reads the configured URL again
    elif damage == "old-layout":  # a work-tree clone made by an older version
        subprocess.run(["rm", "-rf", str(path)], check=True)
        git("clone", "-q", str(remote), str(path), cwd=tmp_path)
        cache = cache_for(tmp_path, f"file://{remote}")
    sha = await edit_commit_push(cache, values_file("a", "2.0.0"))
    assert git("rev-parse", "main", cwd=remote).strip() == sha
    assert 'tag: "2.0.0"' in remote_file(remote, "apps/a/values.yaml")


async def test_commit_uses_configured_identity_and_message(tmp_path: Path, remote: Path) -> None:
    cache = cache_for(tmp_path, str(remote), author_name="Bridge Bot", author_email="bot@example.com",
                      committer_name="Committer", committer_email="c@example.com")
    await edit_commit_push(cache, values_file("a", "3.0.0"), "ci: bump  \n\n\n\nDeployment-Id: d-1\n\n")
    who = git("log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", "main", cwd=remote).strip()
    assert who == "Bridge Bot <bot@example.com>|Committer <c@example.com>|ci: bump"
    assert git("log", "-1", "--format=%B", "main", cwd=remote) == "ci: bump\n\nDeployment-Id: d-1\n\n"
    sha = git("rev-parse", "main", cwd=remote).strip()
    assert await cache.find_trailers("gitops", ["d-1", "d-2"]) == {"d-1": sha}
    assert await cache.find_trailers("gitops", ["d-1"], ref=f"{sha}^") == {}


async def test_push_rejected_when_the_remote_moved_and_nothing_is_forced(tmp_path: Path, remote: Path) -> None:
    cache = cache_for(tmp_path, f"file://{remote}")
    head = (await cache.sync("gitops")).head
    mine = await cache.write_commit("gitops", head, [Blob("apps/a/values.yaml", values_file("a", "4.0.0").encode())],
                                    "mine\n")
    human = human_commit(remote, tmp_path, "README.md", "human\n")
    with pytest.raises(PushRejected):
        await cache.push("gitops", mine, "main")
    assert git("rev-parse", "main", cwd=remote).strip() == human
    # After a sync the same edit goes on top of the human commit.
    sha = await edit_commit_push(cache, values_file("a", "4.0.0"))
    assert [m.strip() for _, m in remote_log(remote)][:2] == ["bump", "human edit"]
    assert await cache.is_ancestor("gitops", human, sha)
    assert remote_file(remote, "README.md") == "human\n"


async def test_new_branch_starts_from_the_base_branch(tmp_path: Path, remote: Path) -> None:
    cache = cache_for(tmp_path, f"file://{remote}")
    synced = await cache.sync("gitops", "gitops-bridge/prod/a-1")
    assert not synced.exists and synced.head == git("rev-parse", "main", cwd=remote).strip()
    await edit_commit_push(cache, values_file("a", "5.0.0"), "pr\n", branch="gitops-bridge/prod/a-1")
    again = await cache.sync("gitops", "gitops-bridge/prod/a-1")
    assert again.exists
    assert 'tag: "5.0.0"' in remote_file(remote, "apps/a/values.yaml", "gitops-bridge/prod/a-1")
    assert 'tag: "1.0.0"' in remote_file(remote, "apps/a/values.yaml", "main")


async def test_is_ancestor_fetches_unknown_commits(tmp_path: Path, remote: Path) -> None:
    cache = cache_for(tmp_path, f"file://{remote}")
    base = (await cache.sync("gitops")).head
    later = human_commit(remote, tmp_path, "README.md", "later\n")  # not fetched by the cache yet
    assert await cache.is_ancestor("gitops", base, later)
    assert not await cache.is_ancestor("gitops", later, base)
    assert not await cache.is_ancestor("gitops", "f" * 40, later)


async def test_unreachable_remote_is_transient(tmp_path: Path) -> None:
    cache = cache_for(tmp_path, f"file://{tmp_path}/does-not-exist.git")
    with pytest.raises(UpstreamUnavailable):
        await cache.sync("gitops")


# -- credentials over real smart HTTP (git http-backend behind Basic auth) ------------------------------------------

class _GitHttp(BaseHTTPRequestHandler):
    root: Path
    expected: str
    seen: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        if auth != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": "user",
            "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)), "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        done = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


@pytest.fixture
def http_remote(tmp_path: Path, remote: Path) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    handler = type("Handler", (_GitHttp,), {"root": remote.parent, "expected": expected, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{remote.name}", seen
    server.shutdown()
    server.server_close()


async def test_token_is_sent_but_never_stored(tmp_path: Path, remote: Path, http_remote: tuple[str, list[str]]) -> None:
    url, seen = http_remote
    cache = cache_for(tmp_path, url, token=TOKEN)
    sha = await edit_commit_push(cache, values_file("a", "6.0.0"))
    assert git("rev-parse", "main", cwd=remote).strip() == sha
    assert any(h.startswith("Basic ") for h in seen)
    encoded = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    for path in cache.path("gitops").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data and encoded.encode() not in data, path
    assert git("remote", "get-url", "origin", cwd=cache.path("gitops")).strip() == url


async def test_bad_token_is_an_auth_error_without_the_secret(
    tmp_path: Path, http_remote: tuple[str, list[str]]
) -> None:
    url, _ = http_remote
    wrong = "wrong-token-1234"
    cache = cache_for(tmp_path, url, token=wrong)
    with pytest.raises(AuthError) as caught:
        await cache.sync("gitops")
    assert wrong not in str(caught.value)
    assert base64.b64encode(f"x-access-token:{wrong}".encode()).decode() not in str(caught.value)
    no_token = cache_for(tmp_path / "other", url)
    with pytest.raises(AuthError):
        await no_token.sync("gitops")


async def test_trailers_of_its_own_commits_match_what_git_reads(tmp_path: Path, remote: Path) -> None:
    """The trailer scan knows the commits this cache wrote on top of its last scan without running git; the answer
    is the one a fresh cache gets from `git log`, also across a human commit and beyond the scan's depth."""
    cache = cache_for(tmp_path, f"file://{remote}")
    ids: list[str] = []
    for i in range(4):
        if i == 2:
            human_commit(remote, tmp_path, "README.md", "a human was here\n")
        head = (await cache.sync("gitops")).head
        await cache.find_trailers("gitops", ["x"], ref=head, depth=3)  # the scan the next one builds on
        ids.append(f"d-{i}")
        message = f"bump {i}\n\napps/a/values.yaml: image.tag → {i}\n\nBuild-Id: {i}\nDeployment-Id: {ids[-1]}\n"
        sha = await cache.write_commit("gitops", head, [Blob("apps/a/values.yaml", values_file("a", f"{i}.0.0")
                                                             .encode())], message)
        await cache.push("gitops", sha, "main")
        head = (await cache.sync("gitops")).head
        fresh = cache_for(tmp_path / f"fresh-{i}", f"file://{remote}")
        await fresh.sync("gitops")
        for depth in (1, 3, 500):
            assert (await cache.find_trailers("gitops", ids, ref=head, depth=depth)
                    == await fresh.find_trailers("gitops", ids, ref=head, depth=depth))
    assert set(await cache.find_trailers("gitops", ids, ref=head)) == set(ids)
