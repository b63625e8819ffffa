"""The git client: one bare cache per GitOps repository, written with plumbing so a flush costs the same in any repo.

Each repository named in the routing file gets a bare repository under `settings.git.work_dir/<name>` (no work
tree: nothing is checked out, cleaned or added). A write is

    sync         fetch the branch into refs/remotes/origin/<branch>; its commit is the parent
    read_files   the values files (and the trees of the directories along their paths) at that commit, in one
                 `git cat-file --batch`
    write_commit the changed blobs, the trees along their paths and the commit (same message, trailers, author and
                 committer as `git commit` would write) are written as loose objects by the bridge itself (the
                 trees are the parent's with only the changed entries' ids replaced), then `git diff-tree` against
                 the parent must show exactly the intended files with exactly the intended blobs (UnsafeWrite
                 otherwise): git's own reading of what was written is the check
    push         `<sha>:refs/heads/<branch>`, never forced; PushRejected when the remote moved

so its cost depends on the edited paths (and the width of the directories on them, as for any `git commit`), not on
how many files or commits the repository has (bench/writer.py, docs/benchmarks.md). The check that a bump is not
pushed already (`find_trailers`, a walk of the last 500 commits) knows the commits this process wrote on top of its
last walk, so after the bridge's own push it runs no git at all. Automatic maintenance
is off (`gc.auto=0`, `maintenance.auto=false`): objects fetched only for ancestry checks must stay, and no flush pays
for a repack. A cache git cannot use any more (or one of the older work-tree layout) is deleted and made again. Every
writer holds the repository's Redis lock (`workers.lock`), which also guards the cache shared by the worker processes
of one host.

Credentials never touch disk: an HTTPS token goes to git as an `http.<origin>.extraHeader` through the
`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n` environment variables, an SSH key through `GIT_SSH_COMMAND`. Remote URLs are
stored as configured, and error messages are scrubbed of the secret anyway. Git runs in a thread (`asyncio.to_thread`)
through GitPython's command runner (`git.cmd.Git`), in its own process group, killed with its children after
`timeout_seconds`; git errors become our exceptions
(`bridge.errors`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from git.cmd import Git

from bridge.errors import (
    AuthError,
    BridgeError,
    NotFound,
    PermanentError,
    PushRejected,
    UnsafeWrite,
    UpstreamUnavailable,
)
from bridge.routing import Repository, RoutingConfig
from bridge.settings import GitSettings, Settings
from workers.gitobjects import (
    REGULAR_MODES,
    Blob,
    batch_objects,
    check_path,
    clean_message,
    commit_object,
    diff_changes,
    git_time,
    loose_object,
    object_id,
    replaced_trees,
    trailer_values,
    tree_dirs,
    tree_modes,
)

_AUTH_HINTS = (
    "authentication failed", "could not read username", "could not read password", "terminal prompts disabled",
    "invalid username or password", "permission denied", "the requested url returned error: 401",
    "the requested url returned error: 403", "access denied", "host key verification failed",
)
_NETWORK_HINTS = (
    "could not resolve", "unable to access", "connection", "timed out", "timeout", "could not read from remote",
    "does not appear to be a git repository", "the remote end hung up", "early eof", "returned error: 5",
    "no such file or directory", "repository not found", "couldn't find remote ref",
)
_RETRYABLE_REMOTE = ("cannot lock ref", "failed to update ref", "failed to lock", "incorrect old value")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_CONFIG = (("gc.auto", "0"), ("maintenance.auto", "false"), ("core.logAllRefUpdates", "false"))


@dataclass(frozen=True)
class SyncResult:
    head: str       # the commit the next write starts from (the remote branch, or the base branch for a new one)
    branch: str     # the branch it was synced to
    exists: bool    # False: the branch is not on the remote yet and `head` is the base branch's head


class _GitFailed(Exception):
    def __init__(self, args: Sequence[str], status: int, stdout: str, stderr: str) -> None:
        self.command = next((a for a in args[1:] if not a.startswith("-")), "git")
        self.status, self.stdout, self.stderr = status, stdout, stderr
        super().__init__(f"git {self.command} exited {status}")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


class RepoCache:
    """Bare caches of the repositories in `repositories` (the routing file's `repositories:`)."""

    def __init__(self, git: GitSettings, repositories: Mapping[str, Repository], work_dir: Path | None = None) -> None:
        self.git = git
        self.repositories = dict(repositories)
        self.work_dir = Path(work_dir or git.work_dir).absolute()
        self._token = git.token.get_secret_value() if git.token else None
        self._secrets = [s for s in (self._token, self._basic()) if s]
        self._known: set[str] = set()
        self._ancestry: dict[tuple[str, str, str], bool] = {}
        self._local_locks: dict[str, asyncio.Lock] = {}
        self._trees: dict[str, tuple[str, dict[str, tuple[str, bytes]]]] = {}  # name → (commit, its path trees)
        self._commits: dict[str, tuple[str, str]] = {}  # id → (parent, message) of the commits written here
        self._scans: dict[tuple[str, str, int], tuple[str, list[tuple[str, tuple[str, ...]]]]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, routing: RoutingConfig) -> RepoCache:
        return cls(settings.git, routing.repositories)

    # -- environment and errors ------------------------------------------------------------------------------

    def _basic(self) -> str | None:
        if not self._token:
            return None
        return base64.b64encode(f"{self.git.username}:{self._token}".encode()).decode()

    def _env(self, url: str | None) -> dict[str, str]:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "", "LC_ALL": "C",
               "LANGUAGE": "C"}
        for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_NAMESPACE"):
            env.pop(key, None)
        if url is None:
            return env
        parts = urlsplit(url)
        if self._token and parts.scheme in ("http", "https"):
            origin = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + "/"
            env.update({
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": f"http.{origin}.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {self._basic()}",
            })
        if self.git.ssh_key_file is not None:
            ssh = ["ssh", "-i", str(self.git.ssh_key_file), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
            if self.git.ssh_known_hosts_file is not None:
                ssh += ["-o", f"UserKnownHostsFile={self.git.ssh_known_hosts_file}", "-o", "StrictHostKeyChecking=yes"]
            else:
                ssh += ["-o", "StrictHostKeyChecking=accept-new"]
            env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        return env

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)  # userinfo someone put into a URL

    def _error(self, name: str, what: str, failed: _GitFailed) -> BridgeError:
        detail = self.scrub((failed.stderr or failed.stdout).strip())
        low = detail.lower()
        last = detail.splitlines()[-1] if detail else f"exit status {failed.status}"
        if failed.status < 0 or "timeout:" in low:
            return UpstreamUnavailable("git", f"{name}: {what} timed out after {self.git.timeout_seconds:g}s")
        if any(h in low for h in _AUTH_HINTS):
            return AuthError("git", f"{name}: {what}: {last}")
        if "repository not found" in low or ("does not exist" in low and "repository" in low):
            return NotFound("git", f"repository {name}")
        return UpstreamUnavailable("git", f"{name}: {what}: {last}")

    def _exec(self, path: Path, *args: str, url: str | None = None, check: bool = True,
              stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
        """Run `git --git-dir=<path> args` in its own process group; the whole group is killed on timeout."""
        command = [Git.GIT_PYTHON_GIT_EXECUTABLE or "git", f"--git-dir={path}", *args]
        # GitPython's runner (the git executable it resolves, C locale for the messages we parse), in a process group
        # of its own that a timeout kills whole.
        started = Git(str(path if path.is_dir() else self.work_dir)).execute(
            command, istream=subprocess.PIPE if stdin is not None else None, as_process=True, env=self._env(url),
            start_new_session=True)
        assert isinstance(started, Git.AutoInterrupt) and started.proc is not None
        proc = started.proc
        try:
            out, err = proc.communicate(stdin, timeout=self.git.timeout_seconds)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            status, err = -9, err + b"\ntimeout: killed"
        if check and status != 0:
            raise _GitFailed(command[1:], status, out.decode(errors="replace"), err.decode(errors="replace"))
        return status, out, err

    def _run(self, path: Path, *args: str, url: str | None = None, check: bool = True) -> tuple[int, str, str]:
        status, out, err = self._exec(path, *args, url=url, check=check)
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    # -- the cache -------------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.work_dir / _safe_name(name)

    def config(self, name: str) -> Repository:
        try:
            return self.repositories[name]
        except KeyError:
            raise NotFound("git", f"repository {name!r} in the routing file") from None

    def _ensure(self, name: str) -> Path:
        path = self.path(name)
        url = self.config(name).url
        if not ((path / "HEAD").is_file() and (path / "objects").is_dir()):
            if path.exists():  # half made, broken, or a work-tree clone of an older version
                self._discard(path)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.work_dir / f".tmp-{_safe_name(name)}-{uuid.uuid4().hex[:8]}"
            self._exec(tmp, "init", "-q", "--bare", str(tmp))
            for key, value in _CONFIG:
                self._exec(tmp, "config", key, value)
            self._exec(tmp, "remote", "add", "origin", url)
            try:
                os.rename(tmp, path)
            except OSError:  # another process made it first
                shutil.rmtree(tmp, ignore_errors=True)
            self._known.add(name)
        if name not in self._known:  # once per process: one read, and writes only for what differs
            _, listed, _ = self._run(path, "config", "--local", "--list", "-z", check=False)
            current = dict(entry.partition("\n")[::2] for entry in listed.split("\0") if entry)
            if current.get("remote.origin.url") != url:
                self._run(path, "remote", "set-url", "origin", url)
            for key, value in _CONFIG:
                if current.get(key.lower()) != value:
                    self._run(path, "config", key, value)
            self._known.add(name)
        return path

    def _discard(self, path: Path) -> None:
        trash = self.work_dir / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale_locks(self, path: Path) -> None:
        for name in ("HEAD.lock", "packed-refs.lock", "shallow.lock", "config.lock"):
            (path / name).unlink(missing_ok=True)
        for root, _, files in os.walk(path / "refs"):
            for f in files:
                if f.endswith(".lock"):
                    Path(root, f).unlink(missing_ok=True)

    def _rebuild(self, name: str) -> Path:
        path = self.path(name)
        if path.exists():
            self._discard(path)
        self._known.discard(name)
        return self._ensure(name)

    def _fetch(self, name: str, path: Path, branch: str, *, required: bool) -> bool:
        url = self.config(name).url
        spec = f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
        try:
            self._run(path, "fetch", "--quiet", "--no-tags", "--prune", "--no-auto-maintenance", "origin", spec,
                      url=url)
            return True
        except _GitFailed as failed:
            if not required and "couldn't find remote ref" in failed.stderr.lower():
                self._run(path, "update-ref", "-d", f"refs/remotes/origin/{branch}", check=False)
                return False
            raise

    def _sync_once(self, name: str, branch: str | None) -> SyncResult:
        cfg = self.config(name)
        target = branch or cfg.branch
        path = self._ensure(name)
        self._remove_stale_locks(path)
        self._fetch(name, path, cfg.branch, required=True)
        exists = True if target == cfg.branch else self._fetch(name, path, target, required=False)
        head = self._resolve(path, f"refs/remotes/origin/{target if exists else cfg.branch}")
        return SyncResult(head, target, exists)

    def _resolve(self, path: Path, ref: str) -> str:
        """The commit a ref points to: the loose ref file fetch just wrote (no process), else `git rev-parse`."""
        try:
            value = (path / ref).read_text(encoding="ascii").strip()
            if _COMMIT_ID.fullmatch(value):
                return value
        except (OSError, UnicodeDecodeError):
            pass
        _, head, _ = self._run(path, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
        return head.strip()

    def _sync(self, name: str, branch: str | None) -> SyncResult:
        try:
            return self._sync_once(name, branch)
        except _GitFailed as failed:
            low = failed.stderr.lower()
            if failed.command in ("fetch", "ls-remote") and any(h in low for h in _AUTH_HINTS + _NETWORK_HINTS):
                raise self._error(name, "fetch", failed) from None
            if failed.status < 0:
                raise self._error(name, failed.command, failed) from None
        # Anything else means the cache itself is broken (half-written objects, stray locks, a bad HEAD...).
        try:
            self._rebuild(name)
            return self._sync_once(name, branch)
        except _GitFailed as failed:
            raise self._error(name, failed.command, failed) from None
        except OSError as exc:
            raise UpstreamUnavailable("git", f"{name}: cannot prepare the cache: {exc.strerror or exc}") from None

    async def sync(self, name: str, branch: str | None = None) -> SyncResult:
        """Fetch `branch` (default: the repository's branch); its head is the parent of the next write.

        A branch that is not on the remote yet (a new pull-request branch) gives the base branch's head with
        `exists=False`. Nothing is checked out.
        """
        return await asyncio.to_thread(self._sync, name, branch)

    # -- reading and writing ---------------------------------------------------------------------------------

    def _read(self, name: str, rev: str, files: Sequence[str]) -> dict[str, Blob | str]:
        found: dict[str, Blob | str] = {}
        asked: list[str] = []
        for file in files:
            try:
                check_path(file)
                asked.append(file)
            except PermanentError as exc:
                found[file] = str(exc)
        if not asked:
            return found
        # The tree of every directory along the files (their modes: a symlink or submodule is not a values file; and
        # kept for the write that follows), then the files, in one cat-file.
        dirs = tree_dirs(asked)
        query = "".join(f"{rev}:{d}\n" for d in dirs) + "".join(f"{rev}:{f}\n" for f in asked)
        try:
            _, out, _ = self._exec(self.path(name), "cat-file", "--batch", stdin=query.encode())
        except _GitFailed as failed:
            raise self._error(name, "cat-file", failed) from None
        objects = batch_objects(out, len(dirs) + len(asked))
        trees = {d: (obj[0], obj[2]) for d, obj in zip(dirs, objects, strict=False) if obj and obj[1] == "tree"}
        if _COMMIT_ID.fullmatch(rev):  # what a commit id names never changes
            self._trees[name] = (rev, trees)
        for file, blob in zip(asked, objects[len(dirs):], strict=True):
            folder, _, base = file.rpartition("/")
            tree = trees.get(folder)
            if tree is None or blob is None:
                found[file] = f"{file}: no such file at {rev[:12]}"
                continue
            mode = tree_modes(tree[1], len(tree[0]) // 2).get(base, "")
            if blob[1] != "blob" or mode not in REGULAR_MODES:
                found[file] = f"{file}: not a regular file at {rev[:12]}"
                continue
            found[file] = Blob(file, blob[2], mode)
        return found

    async def read_files(self, name: str, rev: str, files: Iterable[str]) -> dict[str, Blob | str]:
        """The regular files `files` at commit `rev`: path → Blob, or path → why it cannot be edited."""
        return await asyncio.to_thread(self._read, name, rev, list(dict.fromkeys(files)))

    def _path_trees(self, name: str, rev: str, files: Sequence[str]) -> dict[str, tuple[str, bytes]]:
        """directory → (id, raw tree) at `rev` for every directory along `files` (what `_read` kept, else cat-file)."""
        dirs = tree_dirs(files)
        kept_rev, kept = self._trees.get(name, ("", {}))
        if kept_rev == rev and all(d in kept for d in dirs):
            return kept
        _, out, _ = self._exec(self.path(name), "cat-file", "--batch",
                               stdin="".join(f"{rev}:{d}\n" for d in dirs).encode())
        trees = {}
        for folder, obj in zip(dirs, batch_objects(out, len(dirs)), strict=True):
            if obj is None or obj[1] != "tree":
                raise PermanentError(f"git: {name}: {folder}: no such directory at {rev[:12]}")
            trees[folder] = (obj[0], obj[2])
        return trees

    def _store(self, path: Path, kind: str, data: bytes, like: str) -> str:
        """Write one loose object (as `git hash-object -w` does: a temporary file renamed into place)."""
        oid = object_id(kind, data, like)
        target = path / "objects" / oid[:2] / oid[2:]
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            tmp = target.parent / f"tmp_obj_{uuid.uuid4().hex[:12]}"
            tmp.write_bytes(loose_object(kind, data))
            tmp.chmod(0o444)
            os.replace(tmp, target)
        return oid

    def _write(self, name: str, parent: str, blobs: Sequence[Blob], message: str) -> str:
        path = self.path(name)
        author = (self.git.author_name, self.git.author_email)
        committer = (self.git.committer_name or author[0], self.git.committer_email or author[1])
        files = [check_path(b.path) for b in blobs]
        try:
            if not _COMMIT_ID.fullmatch(parent):  # a commit object names its parent by id
                parent = self._resolve(path, parent)
            root, trees = replaced_trees(self._path_trees(name, parent, files), blobs)
            for blob in blobs:
                self._store(path, "blob", blob.data, parent)
            for raw in trees.values():
                self._store(path, "tree", raw, parent)
            commit = commit_object(root, parent, message, author, committer, git_time(time.time()))
            sha = self._store(path, "commit", commit, parent)
            _, diff, _ = self._exec(path, "diff-tree", "-r", "-z", "--no-renames", "--raw", parent, sha)
        except _GitFailed as failed:
            raise self._error(name, "commit", failed) from None
        except ValueError as exc:  # a file that is not in the parent commit: the writer only replaces files
            raise PermanentError(f"git: {name}: {exc}") from None
        except OSError as exc:
            raise UpstreamUnavailable("git", f"{name}: commit failed: {exc}") from None
        # Git's own reading of the new commit must show exactly the intended files, content and modes.
        if diff_changes(diff) != {b.path: (b.mode, object_id("blob", b.data, sha)) for b in blobs}:
            raise UnsafeWrite(f"{name}: the new commit does not change exactly {sorted(b.path for b in blobs)}; "
                              "nothing was pushed")
        if len(self._commits) >= 1000:
            self._commits.clear()
        self._commits[sha] = (parent, clean_message(message))
        return sha

    async def write_commit(self, name: str, parent: str, blobs: Sequence[Blob], message: str) -> str:
        """One commit on top of `parent` that replaces the given files; returns its id. Nothing is pushed.

        Only the new blobs, the trees along their paths and the commit are written. Author and committer come from
        the settings, the message is cleaned like `git commit` does. UnsafeWrite when the result differs from the
        intended edit in any way.
        """
        return await asyncio.to_thread(self._write, name, parent, blobs, message)

    def _push(self, name: str, sha: str, branch: str) -> None:
        url = self.config(name).url
        try:
            self._run(self.path(name), "push", "--porcelain", "--no-verify", "origin", f"{sha}:refs/heads/{branch}",
                      url=url)
        except _GitFailed as failed:
            text = (failed.stdout + "\n" + failed.stderr).lower()
            if "[rejected]" in text or "non-fast-forward" in text or "fetch first" in text or "stale info" in text:
                raise PushRejected(f"{name}: push to {branch} rejected: the remote branch moved") from None
            if "[remote rejected]" in text and any(h in text for h in _RETRYABLE_REMOTE):
                raise PushRejected(f"{name}: push to {branch} lost a race on the remote ref") from None
            if "[remote rejected]" in text or "protected branch" in text or "declined" in text:
                line = next((ln for ln in self.scrub(failed.stdout + failed.stderr).splitlines()
                             if "rejected" in ln.lower()), "remote rejected the push")
                raise PermanentError(f"git: {name}: push to {branch} declined: {line.strip()}") from None
            raise self._error(name, "push", failed) from None

    async def push(self, name: str, sha: str, branch: str) -> None:
        """Push commit `sha` to `branch` (never forced). PushRejected when the remote moved under us."""
        await asyncio.to_thread(self._push, name, sha, branch)

    def _trailers(self, name: str, ref: str, key: str, wanted: set[str], depth: int) -> dict[str, str]:
        found: dict[str, str] = {}
        for sha, values in self._history(name, ref, key, depth):
            for value in values:
                if value in wanted and value not in found:
                    found[value] = sha
        return found

    def _history(self, name: str, ref: str, key: str, depth: int) -> list[tuple[str, tuple[str, ...]]]:
        """(commit, its `key:` trailer values) for the last `depth` commits of `ref`, newest first, as `git log`
        walks them. The commits this process wrote on top of the last walk are known without running git (their
        ids are their content); the last walk is kept per commit id."""
        scan = (name, key, depth)
        last = self._scans.get(scan)
        own: list[tuple[str, tuple[str, ...]]] = []
        at = ref
        while last is not None and at != last[0] and len(own) < depth and at in self._commits:
            parent, message = self._commits[at]
            own.append((at, trailer_values(message, key)))
            at = parent
        if last is not None and at == last[0]:
            history = (own + last[1])[:depth]
        else:
            fmt = f"%H%x1f%(trailers:key={key},valueonly,separator=%x1e)%x1d"
            status, out, _ = self._run(self.path(name), "log", f"-n{depth}", f"--format={fmt}", ref, "--",
                                       check=False)
            if status != 0:
                return []
            history = []
            for entry in out.split("\x1d"):
                sha, _, values = entry.strip().partition("\x1f")
                if sha:
                    history.append((sha, tuple(v.strip() for v in values.split("\x1e") if v.strip())))
        if _COMMIT_ID.fullmatch(ref):  # a commit id: the same history for good
            self._scans[scan] = (ref, history)
        return history

    async def find_trailers(
        self, name: str, values: Iterable[str], *, key: str = "Deployment-Id", ref: str | None = None,
        depth: int = 500,
    ) -> dict[str, str]:
        """Which of `values` appear as `key:` trailers in the last `depth` commits of `ref` (default: the fetched
        repository branch): value → newest SHA."""
        wanted = set(values)
        if not wanted:
            return {}
        rev = ref or f"refs/remotes/origin/{self.config(name).branch}"
        return await asyncio.to_thread(self._trailers, name, rev, key, wanted, depth)

    # -- ancestry (for the Argo CD verifier) -----------------------------------------------------------------

    def _is_ancestor(self, name: str, sha: str, descendant: str) -> bool:
        path = self._ensure(name)
        status, _, _ = self._run(path, "merge-base", "--is-ancestor", sha, descendant, check=False)
        if status in (0, 1):
            return status == 0
        # Unknown objects: fetch the branch's objects without touching refs the writer uses, then ask again.
        cfg = self.config(name)
        try:
            self._run(path, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-maintenance",
                      "origin", f"refs/heads/{cfg.branch}", url=cfg.url)
        except _GitFailed as failed:
            raise self._error(name, "fetch", failed) from None
        status, _, _ = self._run(path, "merge-base", "--is-ancestor", sha, descendant, check=False)
        return status == 0

    async def is_ancestor(self, name: str, sha: str, descendant: str) -> bool:
        """True when commit `sha` is `descendant` or one of its ancestors (fetching when either is unknown).

        Safe to call without the writer lock; answers are cached (ancestry never changes).
        """
        if sha == descendant:
            return True
        cached = self._ancestry.get((name, sha, descendant))
        if cached is not None:
            return cached
        lock = self._local_locks.setdefault(name, asyncio.Lock())
        async with lock:
            answer = await asyncio.to_thread(self._is_ancestor, name, sha, descendant)
        if len(self._ancestry) < 10_000:
            self._ancestry[(name, sha, descendant)] = answer
        return answer
