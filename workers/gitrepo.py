"""The git client: one persistent cached clone per GitOps repository, synced to the remote before every write.

Each repository named in the routing file gets a clone under `settings.git.work_dir/<name>`. Before a write the clone
is fetched and hard-reset (detached) onto the remote branch, so whatever a crashed writer left behind is discarded;
a clone that git cannot use any more is deleted and made again. Every writer holds the repository's Redis lock
(`workers.lock`), which also guards the clone directory shared by the worker processes of one host.

Credentials never touch disk: an HTTPS token goes to git as an `http.<origin>.extraHeader` through the
`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n` environment variables, an SSH key through `GIT_SSH_COMMAND`. Remote URLs are
stored as configured, and error messages are scrubbed of the secret anyway. All GitPython calls run in a thread
(`asyncio.to_thread`) with `kill_after_timeout`, and git errors become our exceptions (`bridge.errors`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shlex
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from git.cmd import Git

from bridge.errors import AuthError, BridgeError, NotFound, PermanentError, PushRejected, UpstreamUnavailable
from bridge.routing import Repository, RoutingConfig
from bridge.settings import GitSettings, Settings

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


@dataclass(frozen=True)
class SyncResult:
    head: str       # the commit the clone now sits on (detached)
    branch: str     # the branch it was synced to
    exists: bool    # False: the branch is not on the remote yet and the clone sits on the base branch


class _GitFailed(Exception):
    def __init__(self, args: Sequence[str], status: int, stdout: str, stderr: str) -> None:
        self.command = args[1] if len(args) > 1 else "git"
        self.status, self.stdout, self.stderr = status, stdout, stderr
        super().__init__(f"git {self.command} exited {status}")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


class RepoCache:
    """Cached clones of the repositories in `repositories` (the routing file's `repositories:`)."""

    def __init__(self, git: GitSettings, repositories: Mapping[str, Repository], work_dir: Path | None = None) -> None:
        self.git = git
        self.repositories = dict(repositories)
        self.work_dir = Path(work_dir or git.work_dir).absolute()
        self._token = git.token.get_secret_value() if git.token else None
        self._secrets = [s for s in (self._token, self._basic()) if s]
        self._known: set[str] = set()
        self._ancestry: dict[tuple[str, str, str], bool] = {}
        self._local_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Settings, routing: RoutingConfig) -> RepoCache:
        return cls(settings.git, routing.repositories)

    # -- environment and errors ------------------------------------------------------------------------------

    def _basic(self) -> str | None:
        if not self._token:
            return None
        return base64.b64encode(f"{self.git.username}:{self._token}".encode()).decode()

    def _env(self, url: str) -> dict[str, str]:
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "", "LC_ALL": "C", "LANGUAGE": "C"}
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

    def _run(self, path: Path, *args: str, url: str | None = None, check: bool = True) -> tuple[int, str, str]:
        command = ["git", *args]
        status, out, err = Git(str(path)).execute(
            command,
            env=self._env(url) if url else {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
            kill_after_timeout=self.git.timeout_seconds,
            with_extended_output=True,
            with_exceptions=False,
            strip_newline_in_stdout=False,
        )
        status = int(status if status is not None else -1)
        if check and status != 0:
            raise _GitFailed(command, status, str(out), str(err))
        return status, str(out), str(err)

    # -- the clone -------------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.work_dir / _safe_name(name)

    def config(self, name: str) -> Repository:
        try:
            return self.repositories[name]
        except KeyError:
            raise NotFound("git", f"repository {name!r} in the routing file") from None

    def file_path(self, name: str, file: str) -> Path:
        """The working-tree path of `file`, refusing anything that resolves outside the clone (symlinks too)."""
        root = self.path(name).resolve()
        target = (root / file).resolve()
        if root not in target.parents:
            raise PermanentError(f"{file}: resolves outside repository {name}")
        return target

    def _ensure(self, name: str) -> Path:
        path = self.path(name)
        url = self.config(name).url
        if not (path / ".git").is_dir():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.work_dir / f".tmp-{_safe_name(name)}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            self._run(tmp, "init", "-q")
            self._run(tmp, "config", "gc.auto", "0")  # objects fetched only for ancestry checks must stay
            self._run(tmp, "remote", "add", "origin", url)
            try:
                os.rename(tmp, path)
            except OSError:  # another process made it first
                shutil.rmtree(tmp, ignore_errors=True)
            self._known.add(name)
        if name not in self._known:
            _, current, _ = self._run(path, "config", "--get", "remote.origin.url", check=False)
            if current.strip() != url:
                self._run(path, "remote", "set-url", "origin", url)
            self._known.add(name)
        return path

    def _remove_stale_locks(self, path: Path) -> None:
        git_dir = path / ".git"
        for name in ("index.lock", "HEAD.lock", "packed-refs.lock", "shallow.lock", "config.lock"):
            (git_dir / name).unlink(missing_ok=True)
        for root, _, files in os.walk(git_dir / "refs"):
            for f in files:
                if f.endswith(".lock"):
                    Path(root, f).unlink(missing_ok=True)

    def _rebuild(self, name: str) -> Path:
        path = self.path(name)
        trash = self.work_dir / f".trash-{_safe_name(name)}-{uuid.uuid4().hex[:8]}"
        if path.exists():
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        self._known.discard(name)
        return self._ensure(name)

    def _fetch(self, name: str, path: Path, branch: str, *, required: bool) -> bool:
        url = self.config(name).url
        spec = f"+refs/heads/{branch}:refs/remotes/origin/{branch}"
        try:
            self._run(path, "fetch", "--quiet", "--no-tags", "--prune", "origin", spec, url=url)
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
        start = f"refs/remotes/origin/{target if exists else cfg.branch}"
        self._run(path, "checkout", "--quiet", "--force", "--detach", start)
        self._run(path, "clean", "-ffdxq")
        _, head, _ = self._run(path, "rev-parse", "HEAD")
        return SyncResult(head.strip(), target, exists)

    def _sync(self, name: str, branch: str | None) -> SyncResult:
        try:
            return self._sync_once(name, branch)
        except _GitFailed as failed:
            low = failed.stderr.lower()
            if failed.command in ("fetch", "ls-remote") and any(h in low for h in _AUTH_HINTS + _NETWORK_HINTS):
                raise self._error(name, "fetch", failed) from None
            if failed.status < 0:
                raise self._error(name, failed.command, failed) from None
        # Anything else means the clone itself is broken (half-written objects, stray locks, a bad index...).
        self._rebuild(name)
        try:
            return self._sync_once(name, branch)
        except _GitFailed as failed:
            raise self._error(name, failed.command, failed) from None
        except OSError as exc:
            raise UpstreamUnavailable("git", f"{name}: cannot prepare the clone: {exc.strerror or exc}") from None

    async def sync(self, name: str, branch: str | None = None) -> SyncResult:
        """Fetch and hard-reset the clone onto `origin/<branch>` (default: the repository's branch).

        A branch that is not on the remote yet (a new pull-request branch) leaves the clone on the base branch
        with `exists=False`.
        """
        return await asyncio.to_thread(self._sync, name, branch)

    # -- reading and writing ---------------------------------------------------------------------------------

    async def head(self, name: str) -> str:
        _, out, _ = await asyncio.to_thread(self._run, self.path(name), "rev-parse", "HEAD")
        return out.strip()

    def _commit(self, name: str, message: str, files: Sequence[str]) -> str:
        path = self.path(name)
        msg = path / ".git" / "BRIDGE_COMMIT_MSG"
        msg.write_text(message, encoding="utf-8")
        author = (self.git.author_name, self.git.author_email)
        committer = (self.git.committer_name or author[0], self.git.committer_email or author[1])
        try:
            self._run(path, "add", "--", *files)
            Git(str(path)).execute(
                ["git", "-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "commit", "--quiet",
                 "--no-verify", "-F", str(msg)],
                env={"GIT_AUTHOR_NAME": author[0], "GIT_AUTHOR_EMAIL": author[1],
                     "GIT_COMMITTER_NAME": committer[0], "GIT_COMMITTER_EMAIL": committer[1]},
                kill_after_timeout=self.git.timeout_seconds,
            )
            _, out, _ = self._run(path, "rev-parse", "HEAD")
        except _GitFailed as failed:
            raise self._error(name, "commit", failed) from None
        except Exception as exc:  # GitCommandError from the commit itself
            raise UpstreamUnavailable("git", f"{name}: commit failed: {self.scrub(str(exc))[-300:]}") from None
        return out.strip()

    async def commit(self, name: str, message: str, files: Sequence[str]) -> str:
        """Commit the given working-tree files on the detached head; returns the new SHA. Hooks are not run."""
        return await asyncio.to_thread(self._commit, name, message, files)

    def _push(self, name: str, branch: str) -> None:
        url = self.config(name).url
        try:
            self._run(self.path(name), "push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}", url=url)
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

    async def push(self, name: str, branch: str) -> None:
        """Push HEAD to `branch` (never forced). PushRejected when the remote moved under us."""
        await asyncio.to_thread(self._push, name, branch)

    def _trailers(self, name: str, ref: str, key: str, wanted: set[str], depth: int) -> dict[str, str]:
        fmt = f"%H%x1f%(trailers:key={key},valueonly,separator=%x1e)%x1d"
        status, out, _ = self._run(self.path(name), "log", f"-n{depth}", f"--format={fmt}", ref, check=False)
        found: dict[str, str] = {}
        if status != 0:
            return found
        for entry in out.split("\x1d"):
            sha, _, values = entry.strip().partition("\x1f")
            for value in values.split("\x1e"):
                value = value.strip()
                if value in wanted and value not in found:
                    found[value] = sha
        return found

    async def find_trailers(
        self, name: str, values: Iterable[str], *, key: str = "Deployment-Id", ref: str = "HEAD", depth: int = 500
    ) -> dict[str, str]:
        """Which of `values` appear as `key:` trailers in the last `depth` commits of `ref`: value → newest SHA."""
        wanted = set(values)
        if not wanted:
            return {}
        return await asyncio.to_thread(self._trailers, name, ref, key, wanted, depth)

    # -- ancestry (for the Argo CD verifier) -----------------------------------------------------------------

    def _is_ancestor(self, name: str, sha: str, descendant: str) -> bool:
        path = self._ensure(name)
        status, _, _ = self._run(path, "merge-base", "--is-ancestor", sha, descendant, check=False)
        if status in (0, 1):
            return status == 0
        # Unknown objects: fetch the branch's objects without touching refs the writer uses, then ask again.
        cfg = self.config(name)
        try:
            self._run(path, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "origin",
                      f"refs/heads/{cfg.branch}", url=cfg.url)
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
