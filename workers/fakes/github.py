"""A GitHub REST fake over a real socket, backed by real bare git repositories (tests and the demo share it).

Serves the calls PyGithub makes for pull requests, in GitHub's shapes (REST API 2022-11-28):

    GET   /repos/{o}/{r}                         GET /repos/{o}/{r}/git/ref/heads/{branch}
    GET   /repos/{o}/{r}/pulls                   state / head (`owner:branch`) / base filters, per_page + Link
    POST  /repos/{o}/{r}/pulls                   head and base read from the bare repository's refs
    GET   /repos/{o}/{r}/pulls/{n}               PATCH (title, body, state)
    GET   /repos/{o}/{r}/pulls/{n}/merge         204 merged / 404 not merged;  PUT merges
    GET   /repos/{o}/{r}/issues/{n}/labels       POST adds labels
    GET   /repos/{o}/{r}/issues/{n}/comments     POST adds a comment

Quirks kept from the real service (a kinder fake hides bugs):
* 401 `Bad credentials` without the token; 422 `Validation Failed` for a missing head/base, for a head with no
  commits ahead of base, and "A pull request already exists for owner:branch." for a second open PR.
* Listings omit `merged`, `mergeable` and friends (only `merged_at` tells); an open PR carries a *test-merge*
  `merge_commit_sha` that exists nowhere; `head` filters without `owner:` are ignored (all PRs are returned).
* An open PR's head follows its branch (pushes update `head.sha`).

`merge(owner_name, number)` really merges in the bare repository (`git merge-tree`, a `--no-ff` merge commit, the
base ref moved with compare-and-swap), `close(...)` closes unmerged; both deliver a signed `pull_request` webhook to
`webhook_url` when set. `requests` records every call for assertions; `fail_next` injects errors.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers.fakes.server import ServedApp


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    authorization: str | None


@dataclass
class FakePull:
    number: int
    repo: str
    head_ref: str
    base_ref: str
    title: str
    body: str
    head_sha: str
    base_sha: str
    user: str
    state: str = "open"
    merged: bool = False
    merged_at: str | None = None
    merge_commit_sha: str | None = None
    closed_at: str | None = None
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    labels: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


@dataclass
class _Failure:
    status: int
    times: int
    method: str | None
    path_contains: str | None
    message: str
    headers: dict[str, str]


class GitHubFake:
    def __init__(
        self,
        repos: dict[str, str | Path],
        *,
        token: str = "gh-fake-token",
        login: str = "gitops-bridge-bot",
        prefix: str = "",
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        delete_branch_on_merge: bool = False,
    ) -> None:
        self.repos = {name: Path(path) for name, path in repos.items()}
        self.token = token
        self.login = login
        self.prefix = prefix.rstrip("/")
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.delete_branch_on_merge = delete_branch_on_merge
        self.requests: list[RecordedRequest] = []
        self.deliveries: list[dict[str, Any]] = []
        self._pulls: dict[str, dict[int, FakePull]] = {name: {} for name in self.repos}
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()
        self._server: ServedApp | None = None
        self.url = ""
        p = self.prefix + "/repos/{owner}/{name}"
        self.app = Starlette(routes=[
            Route(p, self._get_repo, methods=["GET"]),
            Route(p + "/git/ref/heads/{branch:path}", self._get_ref, methods=["GET"]),
            Route(p + "/git/refs/heads/{branch:path}", self._get_ref, methods=["GET"]),
            Route(p + "/pulls", self._list_pulls, methods=["GET"]),
            Route(p + "/pulls", self._create_pull, methods=["POST"]),
            Route(p + "/pulls/{number:int}", self._get_pull, methods=["GET"]),
            Route(p + "/pulls/{number:int}", self._update_pull, methods=["PATCH"]),
            Route(p + "/pulls/{number:int}/merge", self._merged_state, methods=["GET"]),
            Route(p + "/pulls/{number:int}/merge", self._merge_endpoint, methods=["PUT"]),
            Route(p + "/issues/{number:int}/labels", self._list_labels, methods=["GET"]),
            Route(p + "/issues/{number:int}/labels", self._add_labels, methods=["POST"]),
            Route(p + "/issues/{number:int}/comments", self._list_comments, methods=["GET"]),
            Route(p + "/issues/{number:int}/comments", self._add_comment, methods=["POST"]),
        ])

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> GitHubFake:
        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            await self._middleware(scope, receive, send)

        self._server = ServedApp(asgi).start()
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> GitHubFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        """The base URL to give PyGithub (`settings.github.api_url`)."""
        return self.url + self.prefix

    # -- test helpers ----------------------------------------------------------------------------------------------

    def fail_next(
        self, status: int, *, times: int = 1, method: str | None = None, path_contains: str | None = None,
        message: str = "Server Error", headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` matching requests with `status` (e.g. 502, 429, 403 rate limit)."""
        with self._lock:
            self._failures.append(_Failure(status, times, method, path_contains, message, headers or {}))

    def pulls(self, repo: str) -> list[FakePull]:
        with self._lock:
            heads = _heads(self.repos[repo])
            return [self._refresh(p, heads) for p in self._pulls[repo].values()]

    def pull(self, repo: str, number: int) -> FakePull:
        with self._lock:
            return self._refresh(self._pulls[repo][number])

    def calls(self, method: str | None = None, path_contains: str = "") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method) and path_contains in r.path]

    def merge(self, repo: str, number: int, *, message: str | None = None) -> str:
        """Merge like GitHub's "Create a merge commit" button; returns the merge commit SHA."""
        with self._lock:
            pr = self._refresh(self._pulls[repo][number])
            if pr.state != "open":
                raise ValueError(f"pull request #{number} is not open")
            git = self.repos[repo]
            base = _rev(git, pr.base_ref)
            head = _rev(git, pr.head_ref) or pr.head_sha
            if base is None:
                raise ValueError(f"base branch {pr.base_ref} is gone")
            tree = _git(git, "merge-tree", "--write-tree", base, head, check=False)
            if tree.returncode != 0:
                raise ValueError(f"pull request #{number} has conflicts")
            text = message or f"Merge pull request #{number} from {repo.split('/')[0]}/{pr.head_ref}\n\n{pr.title}"
            sha = _git(git, "commit-tree", tree.stdout.split()[0], "-p", base, "-p", head, "-m", text,
                       env=_identity("GitHub", "noreply@github.com")).stdout.strip()
            _git(git, "update-ref", f"refs/heads/{pr.base_ref}", sha, base)
            if self.delete_branch_on_merge:
                _git(git, "update-ref", "-d", f"refs/heads/{pr.head_ref}")
            pr.head_sha = head
            pr.state, pr.merged, pr.merged_at, pr.closed_at = "closed", True, _now(), _now()
            pr.merge_commit_sha = sha
            pr.updated_at = _now()
        self._deliver(repo, pr, "closed")
        return sha

    def close(self, repo: str, number: int) -> None:
        """Close without merging (a reviewer's rejection)."""
        with self._lock:
            pr = self._refresh(self._pulls[repo][number])
            if pr.state == "open":
                pr.state, pr.closed_at, pr.updated_at = "closed", _now(), _now()
        self._deliver(repo, pr, "closed")

    def sign(self, body: bytes) -> str:
        assert self.webhook_secret is not None
        return "sha256=" + hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()

    def deliver(self, event: str, payload: dict[str, Any]) -> int:
        """POST a signed webhook like GitHub's Hookshot; returns the HTTP status (also kept in `deliveries`)."""
        assert self.webhook_url is not None
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/fake",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-GitHub-Hook-ID": "1",
        }
        if self.webhook_secret:
            headers["X-Hub-Signature-256"] = self.sign(body)
            headers["X-Hub-Signature"] = "sha1=" + hmac.new(self.webhook_secret.encode(), body, "sha1").hexdigest()
        response = httpx.post(self.webhook_url, content=body, headers=headers, timeout=10)
        self.deliveries.append({"event": event, "action": payload.get("action"), "status": response.status_code})
        return response.status_code

    def _deliver(self, repo: str, pr: FakePull, action: str) -> None:
        if self.webhook_url is None:
            return
        payload = {
            "action": action,
            "number": pr.number,
            "pull_request": self._pull_json(pr, full=True),
            "repository": self._repo_json(repo),
            "sender": self._user(self.login),
        }
        self.deliver("pull_request", payload)

    # -- plumbing --------------------------------------------------------------------------------------------------

    async def _middleware(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        auth = request.headers.get("authorization")
        with self._lock:
            self.requests.append(RecordedRequest(scope["method"], request.url.path, dict(request.query_params),
                                                 body, auth))
            failure = self._take_failure(scope["method"], request.url.path)
        if failure is not None:
            response: Response = JSONResponse({"message": failure.message}, failure.status, headers=failure.headers)
        elif auth not in (f"token {self.token}", f"Bearer {self.token}"):
            response = JSONResponse({"message": "Bad credentials",
                                     "documentation_url": "https://docs.github.com/rest"}, 401)
        else:
            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": raw, "more_body": False}

            await self.app(scope, replay, send)
            return
        await response(scope, receive, send)

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method not in (None, method) or (failure.path_contains or "") not in path:
                continue
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            return failure
        return None

    def _repo_or_404(self, request: Request) -> tuple[str, Path] | Response:
        name = f"{request.path_params['owner']}/{request.path_params['name']}"
        if name not in self.repos:
            return _not_found()
        return name, self.repos[name]

    def _refresh(self, pr: FakePull, heads: dict[str, str] | None = None) -> FakePull:
        if pr.state == "open":
            heads = heads if heads is not None else _heads(self.repos[pr.repo])
            pr.head_sha = heads.get(pr.head_ref, pr.head_sha)
            pr.base_sha = heads.get(pr.base_ref, pr.base_sha)
        return pr

    def _user(self, login: str) -> dict[str, Any]:
        return {"login": login, "id": 1, "type": "Bot" if login.endswith("bot") else "User",
                "url": f"{self.api_url}/users/{login}", "html_url": f"{self.url}/{login}"}

    def _repo_json(self, repo: str) -> dict[str, Any]:
        owner, name = repo.split("/", 1)
        return {
            "id": abs(hash(repo)) % 10**8, "node_id": "R_" + name, "name": name, "full_name": repo, "private": True,
            "owner": self._user(owner), "html_url": f"{self.url}/{repo}", "url": f"{self.api_url}/repos/{repo}",
            "default_branch": "main", "fork": False,
        }

    def _pull_json(self, pr: FakePull, *, full: bool) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{pr.repo}"
        owner = pr.repo.split("/")[0]
        data: dict[str, Any] = {
            "url": f"{api}/pulls/{pr.number}",
            "id": 1000 + pr.number,
            "node_id": f"PR_{pr.number}",
            "html_url": f"{self.url}/{pr.repo}/pull/{pr.number}",
            "issue_url": f"{api}/issues/{pr.number}",
            "comments_url": f"{api}/issues/{pr.number}/comments",
            "number": pr.number,
            "state": pr.state,
            "locked": False,
            "title": pr.title,
            "body": pr.body,
            "user": self._user(self.login),
            "labels": [{"id": i + 1, "name": n, "color": "ededed", "default": False, "url": f"{api}/labels/{n}"}
                       for i, n in enumerate(pr.labels)],
            "created_at": pr.created_at,
            "updated_at": pr.updated_at,
            "closed_at": pr.closed_at,
            "merged_at": pr.merged_at,
            # While open, GitHub reports the SHA of a test merge that is in no branch.
            "merge_commit_sha": pr.merge_commit_sha if pr.merged
            else hashlib.sha1(f"test-merge:{pr.head_sha}:{pr.base_sha}".encode()).hexdigest(),
            "draft": False,
            "head": {"label": f"{owner}:{pr.head_ref}", "ref": pr.head_ref, "sha": pr.head_sha,
                     "user": self._user(owner), "repo": self._repo_json(pr.repo)},
            "base": {"label": f"{owner}:{pr.base_ref}", "ref": pr.base_ref, "sha": pr.base_sha,
                     "user": self._user(owner), "repo": self._repo_json(pr.repo)},
            "_links": {"self": {"href": f"{api}/pulls/{pr.number}"},
                       "html": {"href": f"{self.url}/{pr.repo}/pull/{pr.number}"}},
            "author_association": "NONE",
        }
        if full:  # only the single-PR read has these
            data.update({
                "merged": pr.merged,
                "mergeable": None if pr.state == "closed" else True,
                "mergeable_state": "clean" if pr.state == "open" else "unknown",
                "merged_by": self._user("reviewer") if pr.merged else None,
                "comments": len(pr.comments),
                "commits": 1,
                "additions": 1,
                "deletions": 1,
                "changed_files": 1,
            })
        return data

    def _pull_or_404(self, request: Request) -> FakePull | Response:
        found = self._repo_or_404(request)
        if isinstance(found, Response):
            return found
        pr = self._pulls[found[0]].get(request.path_params["number"])
        return _not_found() if pr is None else self._refresh(pr)

    # -- endpoints -------------------------------------------------------------------------------------------------

    async def _get_repo(self, request: Request) -> Response:
        found = self._repo_or_404(request)
        if isinstance(found, Response):
            return found
        return JSONResponse(self._repo_json(found[0]))

    async def _get_ref(self, request: Request) -> Response:
        found = self._repo_or_404(request)
        if isinstance(found, Response):
            return found
        branch = request.path_params["branch"]
        sha = _rev(found[1], branch)
        if sha is None:
            return _not_found()
        api = f"{self.api_url}/repos/{found[0]}"
        return JSONResponse({"ref": f"refs/heads/{branch}", "url": f"{api}/git/refs/heads/{branch}",
                             "object": {"type": "commit", "sha": sha, "url": f"{api}/git/commits/{sha}"}})

    async def _list_pulls(self, request: Request) -> Response:
        found = self._repo_or_404(request)
        if isinstance(found, Response):
            return found
        repo = found[0]
        q = request.query_params
        state = q.get("state", "open")
        head = q.get("head")
        base = q.get("base")
        with self._lock:
            heads = _heads(found[1])
            items = [self._refresh(p, heads) for p in sorted(self._pulls[repo].values(), key=lambda p: -p.number)]
        if state in ("open", "closed"):
            items = [p for p in items if p.state == state]
        if head and ":" in head:  # GitHub ignores a head filter without the `owner:` part
            owner, _, ref = head.partition(":")
            items = [p for p in items if owner == repo.split("/")[0] and p.head_ref == ref]
        if base:
            items = [p for p in items if p.base_ref == base]
        per_page = min(100, max(1, int(q.get("per_page", "30"))))
        page = max(1, int(q.get("page", "1")))
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            params = dict(q)
            params.update({"page": str(page + 1), "per_page": str(per_page)})
            query = "&".join(f"{k}={v}" for k, v in params.items())
            headers["Link"] = f'<{self.url}{request.url.path}?{query}>; rel="next"'
        return JSONResponse([self._pull_json(p, full=False) for p in chunk], headers=headers)

    async def _create_pull(self, request: Request) -> Response:
        found = self._repo_or_404(request)
        if isinstance(found, Response):
            return found
        repo, git = found
        data = await request.json()
        head, base = str(data.get("head", "")), str(data.get("base", ""))
        if ":" in head:
            owner, _, head = head.partition(":")
            if owner != repo.split("/")[0]:
                return _invalid("head", "invalid")
        if not data.get("title"):
            return _invalid("title", "missing_field")
        with self._lock:
            head_sha, base_sha = _rev(git, head), _rev(git, base)
            if head_sha is None:
                return _invalid("head", "invalid")
            if base_sha is None:
                return _invalid("base", "invalid")
            for pr in self._pulls[repo].values():
                if pr.state == "open" and pr.head_ref == head and pr.base_ref == base:
                    owner = repo.split("/")[0]
                    return _validation(f"A pull request already exists for {owner}:{head}.")
            ahead = _git(git, "rev-list", "--count", f"{base_sha}..{head_sha}").stdout.strip()
            if ahead == "0":
                return _validation(f"No commits between {base} and {head}")
            number = max([n for p in self._pulls.values() for n in p] + [0]) + 1
            pr = FakePull(number, repo, head, base, str(data["title"]), str(data.get("body") or ""),
                          head_sha, base_sha, self.login)
            self._pulls[repo][number] = pr
            body = self._pull_json(pr, full=True)
        return JSONResponse(body, 201, headers={"Location": body["url"]})

    async def _get_pull(self, request: Request) -> Response:
        with self._lock:
            pr = self._pull_or_404(request)
            if isinstance(pr, Response):
                return pr
            return JSONResponse(self._pull_json(pr, full=True))

    async def _update_pull(self, request: Request) -> Response:
        data = await request.json()
        with self._lock:
            pr = self._pull_or_404(request)
            if isinstance(pr, Response):
                return pr
            if "title" in data:
                pr.title = str(data["title"])
            if "body" in data:
                pr.body = str(data["body"] or "")
            if data.get("state") == "closed" and pr.state == "open":
                pr.state, pr.closed_at = "closed", _now()
            elif data.get("state") == "open" and pr.state == "closed" and not pr.merged:
                pr.state, pr.closed_at = "open", None
            pr.updated_at = _now()
            return JSONResponse(self._pull_json(pr, full=True))

    async def _merged_state(self, request: Request) -> Response:
        with self._lock:
            pr = self._pull_or_404(request)
            if isinstance(pr, Response):
                return pr
            return Response(status_code=204) if pr.merged else _not_found()

    async def _merge_endpoint(self, request: Request) -> Response:
        pr = self._pull_or_404(request)
        if isinstance(pr, Response):
            return pr
        if pr.state != "open":
            return JSONResponse({"message": "Pull Request is not mergeable"}, 405)
        try:
            sha = self.merge(pr.repo, pr.number)
        except ValueError as exc:
            return JSONResponse({"message": str(exc)}, 405)
        return JSONResponse({"sha": sha, "merged": True, "message": "Pull Request successfully merged"})

    async def _list_labels(self, request: Request) -> Response:
        pr = self._pull_or_404(request)
        if isinstance(pr, Response):
            return pr
        return JSONResponse(self._pull_json(pr, full=False)["labels"])

    async def _add_labels(self, request: Request) -> Response:
        data = await request.json()
        names = data.get("labels", []) if isinstance(data, dict) else data
        with self._lock:
            pr = self._pull_or_404(request)
            if isinstance(pr, Response):
                return pr
            for name in names:
                if name not in pr.labels:
                    pr.labels.append(str(name))
            return JSONResponse(self._pull_json(pr, full=False)["labels"])

    async def _list_comments(self, request: Request) -> Response:
        pr = self._pull_or_404(request)
        if isinstance(pr, Response):
            return pr
        return JSONResponse([self._comment_json(pr, i) for i in range(len(pr.comments))])

    async def _add_comment(self, request: Request) -> Response:
        data = await request.json()
        with self._lock:
            pr = self._pull_or_404(request)
            if isinstance(pr, Response):
                return pr
            pr.comments.append(str(data.get("body", "")))
            return JSONResponse(self._comment_json(pr, len(pr.comments) - 1), 201)

    def _comment_json(self, pr: FakePull, index: int) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{pr.repo}"
        cid = pr.number * 1000 + index + 1
        return {"id": cid, "url": f"{api}/issues/comments/{cid}", "body": pr.comments[index],
                "user": self._user(self.login), "created_at": pr.updated_at, "updated_at": pr.updated_at,
                "issue_url": f"{api}/issues/{pr.number}",
                "html_url": f"{self.url}/{pr.repo}/pull/{pr.number}#issuecomment-{cid}"}


def _not_found() -> Response:
    return JSONResponse({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}, 404)


def _invalid(field_name: str, code: str) -> Response:
    return JSONResponse({"message": "Validation Failed",
                         "errors": [{"resource": "PullRequest", "field": field_name, "code": code}],
                         "documentation_url": "https://docs.github.com/rest"}, 422)


def _validation(message: str) -> Response:
    return JSONResponse({"message": "Validation Failed",
                         "errors": [{"resource": "PullRequest", "code": "custom", "message": message}],
                         "documentation_url": "https://docs.github.com/rest"}, 422)


def _identity(name: str, email: str) -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}


def _git(git_dir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True,
                          check=check, env=env, timeout=30)


def _rev(git_dir: Path, branch: str) -> str | None:
    result = _git(git_dir, "rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}", check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def _heads(git_dir: Path) -> dict[str, str]:
    out = _git(git_dir, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads").stdout
    return {ref.removeprefix("refs/heads/"): sha for sha, _, ref in (line.partition(" ") for line in out.splitlines())}
