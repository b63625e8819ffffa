"""ArgoCDClient against the Argo CD fake over a real socket, and the fake's documented behaviour."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gitops_remote import Repo, git

from bridge.errors import AuthError, NotFound, UpstreamUnavailable
from bridge.settings import Settings
from workers.argocd import ArgoCDClient, ArgoCDRejected, SyncBusy, SyncStarted, app_url, from_settings
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path)
    r.commit({"web/values.yaml": "image:\n  tag: '1'\n", "api/values.yaml": "image:\n  tag: '1'\n"}, "initial")
    return r


@pytest.fixture
def fake(repo: Repo) -> Iterator[ArgoCDFake]:
    f = ArgoCDFake(repo.bare)
    f.add_app("web", "web/values.yaml", project="team-a")
    f.add_app("api", "api/values.yaml", project="team-a", auto_sync=False)
    with f.serve():
        yield f


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def with_client(fake: ArgoCDFake, fn: Any, token: str = FAKE_TOKEN, **kw: Any) -> Any:
    client = ArgoCDClient(fake.url, token, request_timeout=5, refresh_timeout=kw.pop("refresh_timeout", 5), **kw)
    try:
        return await fn(client)
    finally:
        await client.aclose()


def test_get_sends_bearer_and_project(fake: ArgoCDFake, repo: Repo) -> None:
    app = run(with_client(fake, lambda c: c.get_application("web", "team-a")))
    assert app["metadata"]["name"] == "web"
    assert app["status"]["sync"]["revision"] == git(repo.work, "rev-parse", "HEAD")
    last = fake.requests[-1]
    assert last.headers["authorization"] == f"Bearer {FAKE_TOKEN}"
    assert last.query == {"project": "team-a"}


def test_missing_app_without_project_is_403_and_with_project_404(fake: ArgoCDFake) -> None:
    with pytest.raises(AuthError, match="does not exist"):
        run(with_client(fake, lambda c: c.get_application("nope")))
    with pytest.raises(NotFound, match="application nope in project team-a"):
        run(with_client(fake, lambda c: c.get_application("nope", "team-a")))
    with pytest.raises(NotFound):  # exists, but in another project
        run(with_client(fake, lambda c: c.get_application("web", "other")))
    fake.script("web", forbidden=True)
    with pytest.raises(AuthError, match="permission denied"):
        run(with_client(fake, lambda c: c.get_application("web", "team-a")))


def test_bad_tokens_are_auth_errors_without_leaking_them(fake: ArgoCDFake) -> None:
    with pytest.raises(AuthError) as info:
        run(with_client(fake, lambda c: c.get_application("web", "team-a"), token="not-a-jwt-secret"))
    assert "not-a-jwt-secret" not in str(info.value)
    with pytest.raises(AuthError, match="unauthenticated"):
        run(with_client(fake, lambda c: c.get_application("web", "team-a"), token="a.b.wrongsig"))


def test_5xx_and_429_are_upstream_unavailable(fake: ArgoCDFake) -> None:
    fake.script("web", fail_5xx=2)
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable) as info:
            run(with_client(fake, lambda c: c.get_application("web", "team-a")))
        assert info.value.status == 503
    fake.script("web", fail_429=1, retry_after=7)
    with pytest.raises(UpstreamUnavailable) as info:
        run(with_client(fake, lambda c: c.get_application("web", "team-a")))
    assert (info.value.status, info.value.retry_after) == (429, 7.0)
    assert run(with_client(fake, lambda c: c.get_application("web", "team-a")))["metadata"]["name"] == "web"


def test_unreachable_is_upstream_unavailable() -> None:
    client = ArgoCDClient("http://127.0.0.1:9", FAKE_TOKEN, request_timeout=2)

    async def go() -> None:
        try:
            await client.get_application("web", "team-a")
        finally:
            await client.aclose()

    with pytest.raises(UpstreamUnavailable):
        run(go())


def test_a_read_on_a_keep_alive_connection_the_server_dropped_is_sent_again_once() -> None:
    """A server that closes an idle keep-alive connection races the next request on it (uvicorn after 5 s, a proxy
    after its idle timeout): the request dies with no answer. A read goes again on a new connection; a write does
    not (it may have been applied)."""
    app = {"metadata": {"name": "web"}, "status": {}}
    body = json.dumps(app).encode()
    answered: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            if served == 1:  # the second request on this connection: closed unanswered
                writer.close()
                return
            served += 1
            answered.append(1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()

    async def go() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ArgoCDClient(f"http://127.0.0.1:{port}", FAKE_TOKEN, request_timeout=5)
        try:
            for _ in range(3):
                assert (await client.get_application("web", "team-a"))["metadata"]["name"] == "web"
            with pytest.raises(UpstreamUnavailable, match="RemoteProtocolError"):
                await client.sync("web", "team-a")
        finally:
            await client.aclose()
            server.close()

    run(go())
    assert len(answered) == 3  # every read answered (two of them on their second try); the sync never was


def test_refresh_waits_for_the_reconcile_and_sees_the_new_commit(fake: ArgoCDFake, repo: Repo) -> None:
    before = fake.application("web")["status"]["sync"]["revision"]
    sha = repo.commit({"web/values.yaml": "image:\n  tag: '2'\n"})
    assert run(with_client(fake, lambda c: c.get_application("web", "team-a")))["status"]["sync"]["revision"] == before
    result = run(with_client(fake, lambda c: c.refresh("web", "team-a")))
    assert result.refreshed
    assert result.application["status"]["sync"] == {**result.application["status"]["sync"], "status": "OutOfSync",
                                                    "revision": sha}
    assert fake.requests[-1].query == {"project": "team-a", "refresh": "normal"}


def test_hanging_refresh_falls_back_to_plain_get(fake: ArgoCDFake) -> None:
    fake.script("web", hang_refresh=True)
    result = run(with_client(fake, lambda c: c.refresh("web", "team-a", timeout=0.3)))
    assert not result.refreshed
    assert result.application["metadata"]["name"] == "web"
    assert [("refresh" in r.query) for r in fake.requests[-2:]] == [True, False]


def test_sync_uses_exact_content_type_and_infos(fake: ArgoCDFake, repo: Repo) -> None:
    sha = repo.commit({"api/values.yaml": "image:\n  tag: '2'\n"})
    infos = [{"name": "gitops-bridge.deployment", "value": "7-api-prod"}]
    outcome = run(with_client(fake, lambda c: c.sync("api", "team-a", infos=infos)))
    assert isinstance(outcome, SyncStarted)
    assert outcome.application["operation"]["info"] == infos
    assert outcome.application["operation"]["sync"]["revision"] == sha  # resolved to a SHA
    assert "operationState" not in outcome.application["status"]  # cleared by SetAppOperation
    post = [r for r in fake.requests if r.method == "POST"][-1]
    assert post.headers["content-type"] == "application/json"
    second = run(with_client(fake, lambda c: c.sync("api", "team-a", infos={"gitops-bridge.deployment": "8"})))
    assert isinstance(second, SyncBusy) and "another operation is already in progress" in second.message


def test_revision_on_auto_sync_app_is_rejected(fake: ArgoCDFake) -> None:
    with pytest.raises(ArgoCDRejected, match="auto-sync currently set to main"):
        run(with_client(fake, lambda c: c.sync("web", "team-a", revision="a" * 40)))


def test_fake_rejects_charset_content_type(fake: ArgoCDFake) -> None:
    response = httpx.post(f"{fake.url}/api/v1/applications/api/sync", content=b"{}",
                          headers={"Content-Type": "application/json; charset=utf-8",
                                   "Authorization": f"Bearer {FAKE_TOKEN}"})
    assert (response.status_code, response.text) == (415, "Invalid content type")


def test_from_settings_and_links() -> None:
    assert from_settings(Settings()) is None
    client = from_settings(Settings(argocd={"url": "https://argocd.example.com/", "token": FAKE_TOKEN}))
    assert client is not None
    assert client.app_url("web", "team-ns") == "https://argocd.example.com/applications/team-ns/web"
    assert app_url("https://argocd.example.com", "web") == "https://argocd.example.com/applications/web"
    run(client.aclose())


# -- the fake follows git ------------------------------------------------------------------------------------------


def test_fake_no_op_commit_is_synced_without_operation(fake: ArgoCDFake, repo: Repo) -> None:
    sha = repo.commit({"api/values.yaml": "image:\n  tag: '9'\n"})  # does not touch web's file
    fake.reconcile_now("web")
    app = fake.application("web")
    assert app["status"]["sync"]["status"] == "Synced" and app["status"]["sync"]["revision"] == sha
    assert "operation" not in app
    assert app["status"]["operationState"]["syncResult"]["revision"] != sha


def test_fake_auto_sync_operation_lifecycle(fake: ArgoCDFake, repo: Repo) -> None:
    fake.script("web", sync_retries=1, sync_fails=True)
    sha = repo.commit({"web/values.yaml": "image:\n  tag: '2'\n"})
    fake.reconcile_now("web")  # refresh: OutOfSync, auto-sync requests an operation
    app = fake.application("web")
    assert app["status"]["sync"] == {**app["status"]["sync"], "status": "OutOfSync", "revision": sha}
    assert app["operation"]["sync"]["revision"] == sha and app["operation"]["initiatedBy"] == {"automated": True}
    fake.reconcile_now("web")  # operation starts
    assert fake.application("web")["status"]["operationState"]["phase"] == "Running"
    fake.reconcile_now("web")  # fails once: retry pending
    state = fake.application("web")["status"]["operationState"]
    assert state["phase"] == "Running" and state["finishedAt"] and state["retryCount"] == 1
    assert "operation" in fake.application("web")
    fake.reconcile_now("web")
    fake.reconcile_now("web")  # retries exhausted: Failed, operation cleared in the same update
    app = fake.application("web")
    assert app["status"]["operationState"]["phase"] == "Failed" and "operation" not in app
    fake.reconcile_now("web")  # next refresh: SyncError, never retried for that SHA
    app = fake.application("web")
    assert [c["type"] for c in app["status"]["conditions"]] == ["SyncError"] and "operation" not in app


def test_fake_reconciled_at_lags_the_operation(fake: ArgoCDFake, repo: Repo) -> None:
    fake.script("web", degrade=True)
    repo.commit({"web/values.yaml": "image:\n  tag: '2'\n"})
    for _ in range(3):  # refresh → start → Succeeded
        fake.reconcile_now("web")
    status = fake.application("web")["status"]
    assert status["operationState"]["phase"] == "Succeeded"
    assert status["reconciledAt"] < status["operationState"]["finishedAt"]
    assert status["health"]["status"] == "Healthy"  # stale
    fake.reconcile_now("web")
    status = fake.application("web")["status"]
    assert status["reconciledAt"] >= status["operationState"]["finishedAt"]
    assert (status["sync"]["status"], status["health"]["status"]) == ("Synced", "Progressing")
    fake.reconcile_now("web")
    assert fake.application("web")["status"]["health"]["status"] == "Degraded"


def test_fake_comparison_error_has_no_operation(fake: ArgoCDFake, repo: Repo) -> None:
    repo.commit({"web/values.yaml": "image: [broken\n"})
    fake.script("web", comparison_error="helm template: yaml: line 1: did not find expected ',' or ']'")
    fake.reconcile_now("web")
    app = fake.application("web")
    assert app["status"]["sync"] == {**app["status"]["sync"], "status": "Unknown", "revision": "main"}
    assert app["status"]["conditions"][0]["type"] == "ComparisonError" and "operation" not in app


# -- estates: list by selector, live manifests, sync windows (issue 14) -----------------------------------------------


def test_list_by_selector_and_project(fake: ArgoCDFake) -> None:
    fake.script("web")
    fake.apps["web"].labels = {"tier": "front", "env": "dev"}
    fake.apps["api"].labels = {"tier": "back", "env": "dev"}
    names = run(with_client(fake, lambda c: c.list_applications("env=dev,tier in (front,back)", "team-a")))
    assert sorted(a["metadata"]["name"] for a in names) == ["api", "web"]
    assert fake.requests[-1].query == {"selector": "env=dev,tier in (front,back)", "projects": "team-a"}
    assert [a["metadata"]["name"] for a in run(with_client(fake, lambda c: c.list_applications("tier!=back")))] \
        == ["web"]
    assert run(with_client(fake, lambda c: c.list_applications("env=dev", "other"))) == []  # items: null
    assert run(with_client(fake, lambda c: c.list_applications("!env", "team-a"))) == []
    with pytest.raises(ArgoCDRejected, match="unable to parse requirement"):
        run(with_client(fake, lambda c: c.list_applications("env in dev", "team-a")))


def test_rollout_live_manifest_tells_the_canary_step(fake: ArgoCDFake) -> None:
    from workers.verdict import rollout_pause

    fake.script("web", rollout="paused", canary_step=3)
    fake.apps["web"].health = "Suspended"

    async def read(c: ArgoCDClient) -> dict[str, Any]:
        return await c.live_manifest("web", "team-a", None, kind="Rollout", group="argoproj.io",
                                     resource_name="web", resource_namespace="web", version="v1alpha1")

    manifest = run(with_client(fake, read))
    assert rollout_pause(manifest) == "paused at step 4 of 5 of the canary (CanaryPauseStep)"
    assert fake.requests[-1].query == {"project": "team-a", "kind": "Rollout", "group": "argoproj.io",
                                       "resourceName": "web", "version": "v1alpha1", "namespace": "web"}
    assert rollout_pause({}) == ""


def test_sync_window_refusal_is_sync_blocked_and_rbac_stays_an_error(fake: ArgoCDFake) -> None:
    from workers.argocd import SyncBlocked

    fake.script("api", sync_window=True)
    outcome = run(with_client(fake, lambda c: c.sync("api", "team-a")))
    assert outcome == SyncBlocked("cannot sync: blocked by sync window")
    windows = run(with_client(fake, lambda c: c.sync_windows("api", "team-a")))
    assert windows["canSync"] is False and windows["activeWindows"][0]["kind"] == "deny"
    fake.script("api", sync_window=False, sync_denied=True)
    with pytest.raises(AuthError, match="permission denied: applications, sync, team-a/api"):
        run(with_client(fake, lambda c: c.sync("api", "team-a")))
