"""The GitHub client: find-or-create, read and close pull requests through PyGithub (GitHub or GitHub Enterprise).

PyGithub blocks, so every call runs in a thread. Its exceptions are translated at this boundary:

    401, 403 (not a rate limit)          → AuthError
    404                                   → NotFound
    429, 403 rate limit, 5xx, timeouts    → UpstreamUnavailable (transient, retried by the job)
    other 4xx (422 validation, ...)       → GitHubRejected (permanent)

PyGithub's own retry is off (`retry=None`) so a failing call returns promptly and the job's bounded backoff decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from github import Auth, Github, GithubException, RateLimitExceededException
from github.PullRequest import PullRequest

from bridge import metrics
from bridge.errors import AuthError, NotFound, PermanentError, UpstreamUnavailable
from bridge.settings import Settings

T = TypeVar("T")
SYSTEM = "github"
MAX_LISTED = 500  # pull requests read by one listing; the bridge never has more open ones per repository


class GitHubRejected(PermanentError):
    """GitHub refused the request (422 validation failed and other 4xx)."""


@dataclass(frozen=True)
class PullInfo:
    number: int
    url: str
    state: str  # "open" | "closed"
    merged: bool
    merge_commit_sha: str | None
    head_sha: str
    head_ref: str = ""
    base_ref: str = ""
    title: str = ""
    body: str = ""
    created: bool = False  # find_or_create_pull: True when this call opened it


def _info(pr: PullRequest, *, merged: bool | None = None, created: bool = False) -> PullInfo:
    is_merged = merged if merged is not None else pr.merged_at is not None
    return PullInfo(
        number=pr.number,
        url=pr.html_url,
        state=pr.state,
        merged=is_merged,
        # GitHub fills merge_commit_sha with a test-merge commit while the PR is open: only a merge makes it real.
        merge_commit_sha=pr.merge_commit_sha if is_merged else None,
        head_sha=pr.head.sha,
        head_ref=pr.head.ref,
        base_ref=pr.base.ref,
        title=pr.title or "",
        body=pr.body or "",
        created=created,
    )


def _message(exc: GithubException) -> str:
    data = exc.data if isinstance(exc.data, dict) else {}
    text = str(data.get("message") or exc.message or "error")
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        details = [e.get("message") or f"{e.get('field')} {e.get('code')}" for e in errors if isinstance(e, dict)]
        text += " (" + "; ".join(str(d) for d in details) + ")"
    return text


def translate(exc: Exception, what: str) -> Exception:
    """Our exception for a PyGithub or requests failure while doing `what`."""
    if isinstance(exc, RateLimitExceededException) or (
        isinstance(exc, GithubException) and (exc.status == 429 or exc.status >= 500)
    ):
        headers = exc.headers or {}
        retry_after: float | None = None
        raw = headers.get("retry-after") or headers.get("Retry-After")
        if raw is not None:
            try:
                retry_after = float(raw)
            except ValueError:
                retry_after = None
        return UpstreamUnavailable(SYSTEM, f"{what}: HTTP {exc.status}", status=exc.status, retry_after=retry_after)
    if isinstance(exc, GithubException):
        if exc.status in (401, 403):
            return AuthError(SYSTEM, f"{what}: HTTP {exc.status} {_message(exc)}")
        if exc.status == 404:
            return NotFound(SYSTEM, what)
        return GitHubRejected(f"{SYSTEM}: {what}: HTTP {exc.status} {_message(exc)}")
    if isinstance(exc, requests.exceptions.RequestException | TimeoutError | ConnectionError | OSError):
        return UpstreamUnavailable(SYSTEM, f"{what}: {type(exc).__name__}")
    return exc


class GitHubClient:
    """One PyGithub connection per client; methods are coroutines that run PyGithub in a worker thread."""

    def __init__(
        self,
        token: str,
        api_url: str = "https://api.github.com",
        *,
        timeout: float = 15.0,
        seconds_between_requests: float | None = None,
        seconds_between_writes: float | None = 1.0,
    ) -> None:
        # GitHub asks integrations to space out writes (secondary rate limits); tests turn that off.
        self._gh = Github(
            base_url=api_url.rstrip("/"),
            auth=Auth.Token(token),
            timeout=max(1, int(round(timeout))),
            retry=None,
            lazy=True,
            seconds_between_requests=seconds_between_requests,
            seconds_between_writes=seconds_between_writes,
        )
        self.api_url = api_url.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> GitHubClient | None:
        """None without a token: environments with `promotion: pull-request` then fail with a clear reason."""
        gh = settings.github
        if gh.token is None or not gh.token.get_secret_value():
            return None
        options: dict[str, Any] = {"timeout": gh.timeout_seconds, **overrides}
        return cls(gh.token.get_secret_value(), gh.api_url, **options)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._gh.close)

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            result = await asyncio.to_thread(fn)
        except Exception as exc:
            ours = translate(exc, what)
            outcome = {UpstreamUnavailable: "unavailable", AuthError: "auth", NotFound: "not_found"}.get(
                type(ours), "error"
            )
            metrics.GITHUB_REQUESTS.labels(outcome=outcome).inc()
            if ours is exc:
                raise
            raise ours from exc
        metrics.GITHUB_REQUESTS.labels(outcome="ok").inc()
        return result

    # -- pull requests ---------------------------------------------------------------------------------------------

    async def find_or_create_pull(
        self, repo: str, head_branch: str, base: str, title: str, body: str, labels: list[str] | tuple[str, ...] = ()
    ) -> PullInfo:
        """The open pull request from `head_branch` into `base`, created (and labelled) when there is none."""

        def work() -> PullInfo:
            repository = self._gh.get_repo(repo)
            owner = repo.split("/", 1)[0]
            existing = self._find_open(repository, owner, head_branch, base)
            if existing is not None:
                return _info(existing)
            try:
                pr = repository.create_pull(base=base, head=head_branch, title=title, body=body)
            except GithubException as exc:
                # Lost a race with another run of this job: GitHub refuses a second PR for the same head and base.
                if exc.status == 422 and "already exists" in _message(exc):
                    again = self._find_open(repository, owner, head_branch, base)
                    if again is not None:
                        return _info(again)
                raise
            if labels:
                pr.add_to_labels(*labels)
            return _info(pr, created=True)

        return await self._run(f"pull request {repo} {head_branch}→{base}", work)

    @staticmethod
    def _find_open(repository: Any, owner: str, head_branch: str, base: str) -> PullRequest | None:
        for index, pr in enumerate(repository.get_pulls(state="open", head=f"{owner}:{head_branch}", base=base)):
            if pr.head.ref == head_branch and pr.base.ref == base:
                return pr  # type: ignore[no-any-return]
            if index >= MAX_LISTED:
                break
        return None

    async def get_pull(self, repo: str, number: int) -> PullInfo:
        def work() -> PullInfo:
            pr = self._gh.get_repo(repo).get_pull(number)
            return _info(pr, merged=bool(pr.merged))

        return await self._run(f"pull request {repo}#{number}", work)

    async def close_pull(self, repo: str, number: int, comment: str | None = None) -> PullInfo:
        """Comment and close an open pull request; a closed or merged one is returned unchanged."""

        def work() -> PullInfo:
            pr = self._gh.get_repo(repo).get_pull(number)
            if pr.state != "open":
                return _info(pr, merged=bool(pr.merged))
            if comment:
                pr.create_issue_comment(comment)
            pr.edit(state="closed")
            return _info(pr, merged=False)

        return await self._run(f"close pull request {repo}#{number}", work)

    async def list_open_pulls(self, repo: str, head_prefix: str = "") -> list[PullInfo]:
        """Open pull requests whose head branch starts with `head_prefix` (at most MAX_LISTED are read)."""

        def work() -> list[PullInfo]:
            found: list[PullInfo] = []
            for index, pr in enumerate(self._gh.get_repo(repo).get_pulls(state="open")):
                if index >= MAX_LISTED:
                    break
                if pr.head.ref.startswith(head_prefix):
                    found.append(_info(pr))
            return found

        return await self._run(f"list pull requests {repo}", work)
