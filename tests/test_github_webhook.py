"""`POST /webhooks/github`: signature, events, and the check it queues (real app over a socket, real Redis db 3)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis_server import shared_redis_url

from bridge.app import create_app
from bridge.github_webhook import routes, signature_valid
from bridge.queue import CHECK_PULL_REQUEST, Keys
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.fakes.github import GitHubFake
from workers.github import GitHubClient

REDIS_URL = shared_redis_url(3)
QUEUE = "t3h:queue"
SECRET = "hook-secret-123"
GH_REPO = "acme/gitops"
DEP = "42-api-prod-abc123"
ROUTING = {
    "repositories": {"gitops": {"url": "/nonexistent.git", "github": GH_REPO}},
    "routes": [{"name": "api", "match": {"project": "p", "definition": "d"},
                "environments": [{"name": "prod", "repository": "gitops", "file": "v.yaml",
                                  "promotion": "pull-request"}]}],
}


def settings(secret: str | None = SECRET) -> Settings:
    return Settings(redis_url=REDIS_URL, queue_name=QUEUE, key_prefix="t3h", webhook={"tokens": ["t0k3n-intake"]},
                    github={"webhook_secret": secret} if secret else {})


@pytest.fixture
async def redis() -> AsyncIterator[ArqRedis]:
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    await pool.flushdb()
    store = DeploymentStore(pool, Keys("t3h"))
    await store.create(DeploymentRecord(id=DEP, build_key="o:p:42", build_id=42, route="api", environment="prod",
                                        repository="gitops", file="v.yaml", keys=["image.tag"],
                                        promotion="pull-request", tag="42", state="awaiting-merge", pr_number=1))
    yield pool
    await pool.flushdb()
    await pool.aclose()


@pytest.fixture
def url(serve: Callable[[Any], Any]) -> str:
    app = create_app(settings(), parse_routing(ROUTING), extra_routes=routes)
    return f"{serve(app).url}/webhooks/github"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def closed_event(number: int = 1, ref: str = "gitops-bridge/prod/api-42", body: str = "", merged: bool = True
                 ) -> dict[str, Any]:
    return {"action": "closed", "number": number,
            "pull_request": {"number": number, "merged": merged, "body": body, "head": {"ref": ref},
                             "base": {"ref": "main"}},
            "repository": {"full_name": GH_REPO}}


async def post(url: str, event: str, payload: Any, *, signature: str | None = "auto") -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"X-GitHub-Event": event, "Content-Type": "application/json"}
    if signature == "auto":
        headers["X-Hub-Signature-256"] = sign(body)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, content=body, headers=headers)


async def checks(redis: ArqRedis) -> list[tuple[Any, ...]]:
    return [tuple(j.args) for j in await redis.queued_jobs(queue_name=QUEUE) if j.function == CHECK_PULL_REQUEST]


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    assert signature_valid(SECRET, body, sign(body))
    assert not signature_valid(SECRET, body + b" ", sign(body))
    assert not signature_valid(SECRET, body, sign(body, "other"))
    assert not signature_valid(SECRET, body, sign(body).replace("sha256=", "sha1="))
    assert not signature_valid(SECRET, body, None)


async def test_closed_bridge_pull_request_queues_a_check(redis: ArqRedis, url: str) -> None:
    await redis.set(Keys("t3h").pull_request(GH_REPO, 1), DEP)
    response = await post(url, "pull_request", closed_event())
    assert response.status_code == 202 and response.json() == {"status": "queued", "deployment": DEP}
    again = await post(url, "pull_request", closed_event(merged=False))
    assert again.status_code == 202
    assert await checks(redis) == [(DEP,), (DEP,)]  # unique job ids: a redelivery is checked again


async def test_deployment_found_by_the_body_marker(redis: ArqRedis, url: str) -> None:
    body = f"text\n<!-- gitops-bridge:deployment={DEP} -->"
    response = await post(url, "pull_request", closed_event(number=7, body=body))
    assert response.json()["status"] == "queued" and await checks(redis) == [(DEP,)]


@pytest.mark.parametrize(("signature", "status"), [(None, 401), ("sha256=" + "0" * 64, 401), ("garbage", 401)])
async def test_bad_signatures_are_refused(redis: ArqRedis, url: str, signature: str | None, status: int) -> None:
    await redis.set(Keys("t3h").pull_request(GH_REPO, 1), DEP)
    response = await post(url, "pull_request", closed_event(), signature=signature)
    assert response.status_code == status and SECRET not in response.text
    assert await checks(redis) == []


@pytest.mark.parametrize(("event", "payload", "status", "outcome"), [
    ("ping", {"zen": "Design for failure.", "hook_id": 1}, 200, "pong"),
    ("push", {"ref": "refs/heads/main"}, 202, "ignored"),
    ("pull_request", {**closed_event(), "action": "opened"}, 202, "ignored"),
    ("pull_request", closed_event(ref="feature/x"), 202, "ignored"),
    ("pull_request", closed_event(number=99), 202, "ignored"),  # not a pull request of ours
    ("pull_request", b"not json", 400, "invalid"),
])
async def test_other_events(redis: ArqRedis, url: str, event: str, payload: Any, status: int, outcome: str) -> None:
    await redis.set(Keys("t3h").pull_request(GH_REPO, 1), DEP)
    response = await post(url, event, payload)
    assert (response.status_code, response.json()["status"]) == (status, outcome)
    assert await checks(redis) == []


async def test_without_a_secret_the_endpoint_is_off(redis: ArqRedis, serve: Callable[[Any], Any]) -> None:
    app = create_app(settings(None), parse_routing(ROUTING), extra_routes=routes)
    response = await post(f"{serve(app).url}/webhooks/github", "pull_request", closed_event())
    assert response.status_code == 404 and await checks(redis) == []


async def test_oversized_body_is_refused(redis: ArqRedis, url: str) -> None:
    """Refused on the declared length, before a byte of the body is read (so over a raw socket: an HTTP client
    still sending the body may see the closed connection before the answer)."""
    parts = httpx.URL(url)
    with socket.create_connection((parts.host, parts.port), timeout=10) as sock:
        sock.sendall(f"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: pull_request\r\n"
                     f"Content-Length: {2 * 1024 * 1024 + 1}\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert b"connection: close" in answer.lower()
    assert await checks(redis) == []


async def test_fake_github_delivers_signed_merge_and_close_events(
    redis: ArqRedis, url: str, tmp_path: Path
) -> None:
    bare = tmp_path / "gitops.git"
    work = tmp_path / "work"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/bin"}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True, capture_output=True)

    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("clone", "-q", str(bare), str(work))
    for branch, tag in (("main", "1"), ("gitops-bridge/prod/api-42", "42"), ("gitops-bridge/prod/api-43", "43")):
        if branch != "main":
            git("-C", str(work), "checkout", "-q", "-B", branch, "origin/main")
        (work / "v.yaml").write_text(f"image:\n  tag: \"{tag}\"\n")
        git("-C", str(work), "add", ".")
        git("-C", str(work), "commit", "-q", "-m", tag)
        git("-C", str(work), "push", "-q", "origin", f"HEAD:refs/heads/{branch}")

    with GitHubFake({GH_REPO: bare}, webhook_url=url, webhook_secret=SECRET) as fake:
        client = GitHubClient(fake.token, fake.api_url, seconds_between_writes=None)
        first = await client.find_or_create_pull(GH_REPO, "gitops-bridge/prod/api-42", "main", "t", "b", [])
        second = await client.find_or_create_pull(GH_REPO, "gitops-bridge/prod/api-43", "main", "t", "b", [])
        await redis.set(Keys("t3h").pull_request(GH_REPO, first.number), DEP)
        await redis.set(Keys("t3h").pull_request(GH_REPO, second.number), DEP)
        fake.merge(GH_REPO, first.number)
        fake.close(GH_REPO, second.number)
        await client.aclose()
    assert [(d["event"], d["action"], d["status"]) for d in fake.deliveries] == [
        ("pull_request", "closed", 202), ("pull_request", "closed", 202)]
    assert await checks(redis) == [(DEP,), (DEP,)]


def test_the_web_side_loads_neither_workers_nor_pygithub() -> None:
    code = ("import sys, bridge.github_webhook; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('workers', 'github', 'git')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
