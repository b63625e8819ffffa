"""The Azure DevOps client against the fake served over a real socket: auth quirks, error translation, paging."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bridge.errors import AuthError, InvalidBuild, NotFound, PermanentError, UpstreamUnavailable
from bridge.events import BuildEvent, parse_event
from bridge.organizations import Organization, assign
from bridge.settings import Settings
from workers.azure_devops import AzureDevOpsClient, build_event_from_api, lookup_build
from workers.fakes.azure_devops import FakeAzureDevOps

SHA = "6e12f614bd0c5a9e3b84d6f7bcb5d0a1c2e3f405"
REPO = "11111111-2222-3333-4444-555555555555"
EVENTS = Path(__file__).resolve().parent / "data" / "azure-devops-events"  # copies of the reference samples


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAzureDevOps]:
    with FakeAzureDevOps(pat="secret-pat", bearer_tokens=("bearer-token",)) as served:
        served.add_build("org", "Chat", {
            "id": 101, "sourceVersion": SHA, "definition": {"id": 7, "name": "chat-ci"},
            "repository": {"id": REPO, "type": "TfsGit", "name": "chat"},
            "finishTime": "2024-12-02T12:21:08.5209040Z",
        })
        yield served


def org(url: str, token: str | None = "secret-pat", name: str = "org") -> Organization:
    """A configured organization (equality ignores the token: `org(url)` names the client's own)."""
    return Organization(name=name, url=url, token=SecretStr(token) if token else None)


@pytest.fixture
async def client(fake: FakeAzureDevOps) -> AsyncIterator[AzureDevOpsClient]:
    c = AzureDevOpsClient([org(fake.org_url("org"))])
    yield c
    await c.aclose()


async def test_get_build_with_pat_sends_basic_colon_pat(fake: FakeAzureDevOps, client: AzureDevOpsClient) -> None:
    build = await client.get_build(org(fake.org_url("org")), "Chat", 101)
    assert build["sourceVersion"] == SHA
    assert build["project"]["name"] == "Chat"
    last = fake.requests_to("GET", "/builds/101")[-1]
    assert last["auth"] == "basic" and last["query"]["api-version"] == "7.1"


async def test_bearer_auth(fake: FakeAzureDevOps) -> None:
    settings = Settings(azure_devops={"token": "bearer-token", "auth": "bearer", "organization_url": fake.url + "/org"})
    c = AzureDevOpsClient.from_settings(settings)
    try:
        assert c.organizations == [org(fake.org_url("org"))]
        # the project name is case-insensitive
        assert (await c.get_build(org(fake.org_url("org")), "chat", 101))["id"] == 101
    finally:
        await c.aclose()


async def test_bad_pat_is_203_sign_in_page_and_becomes_auth_error(fake: FakeAzureDevOps) -> None:
    c = AzureDevOpsClient([org(fake.org_url("org"), "wrong")])
    try:
        with pytest.raises(AuthError, match="sign-in page") as info:
            await c.get_build(org(fake.org_url("org")), "Chat", 101)
        assert "wrong" not in str(info.value)
    finally:
        await c.aclose()


async def test_401_and_disabled_client_are_auth_errors(fake: FakeAzureDevOps) -> None:
    strict = FakeAzureDevOps(pat="p", bad_auth_status=401).start()
    c = AzureDevOpsClient([org(strict.org_url("org"), "nope")])
    disabled = AzureDevOpsClient([org(fake.org_url("org"), None)])
    try:
        with pytest.raises(AuthError):
            await c.get_build(org(strict.org_url("org")), "x", 1)
        assert not disabled.enabled
        with pytest.raises(AuthError, match="not configured with a token"):
            await disabled.get_build(org(fake.org_url("org")), "Chat", 101)
    finally:
        await c.aclose()
        await disabled.aclose()
        strict.stop()


async def test_not_found_for_unknown_build_and_project(fake: FakeAzureDevOps, client: AzureDevOpsClient) -> None:
    with pytest.raises(NotFound, match="build 999"):
        await client.get_build(org(fake.org_url("org")), "Chat", 999)
    with pytest.raises(NotFound):
        await client.get_build(org(fake.org_url("org")), "Nope", 101)


async def test_429_carries_retry_after_and_5xx_is_transient(fake: FakeAzureDevOps, client: AzureDevOpsClient) -> None:
    fake.fail(429, path="/builds/101", retry_after=7)
    with pytest.raises(UpstreamUnavailable) as info:
        await client.get_build(org(fake.org_url("org")), "Chat", 101)
    assert info.value.status == 429 and info.value.retry_after == 7
    fake.fail(503, path="/builds/101")
    with pytest.raises(UpstreamUnavailable):
        await client.get_build(org(fake.org_url("org")), "Chat", 101)
    assert (await client.get_build(org(fake.org_url("org")), "Chat", 101))["id"] == 101


async def test_connection_refused_and_timeout_are_transient() -> None:
    c = AzureDevOpsClient([org("http://127.0.0.1:9/org/")], timeout=0.5)
    try:
        with pytest.raises(UpstreamUnavailable):
            await c.get_build(org("http://127.0.0.1:9/org/"), "p", 1)
    finally:
        await c.aclose()

    async def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    t = AzureDevOpsClient([org("https://dev.azure.com/org/")], transport=httpx.MockTransport(slow))
    try:
        with pytest.raises(UpstreamUnavailable, match="timed out"):
            await t.get_build(org("https://dev.azure.com/org/"), "p", 1)
    finally:
        await t.aclose()


async def test_missing_api_version_is_rejected_by_the_fake(fake: FakeAzureDevOps) -> None:
    async with httpx.AsyncClient(auth=("", "secret-pat")) as raw:
        response = await raw.get(fake.org_url("org") + "Chat/_apis/build/builds/101")
    assert response.status_code == 400 and "api-version" in response.json()["message"]
    c = AzureDevOpsClient([org(fake.org_url("org"))], api_version="7.2")
    try:
        with pytest.raises(PermanentError, match="preview"):
            await c.get_build(org(fake.org_url("org")), "Chat", 101)
    finally:
        await c.aclose()


async def test_tags_with_special_characters(fake: FakeAzureDevOps, client: AzureDevOpsClient) -> None:
    o = org(fake.org_url("org"))
    tags = await client.add_build_tags(o, "Chat", 101, ["deploying-prod", "a/b c&d"])
    assert {"deploying-prod", "a/b c&d"} <= set(tags)
    tags = await client.update_build_tags(o, "Chat", 101, add=["deployed-prod"], remove=["deploying-prod"])
    assert "deployed-prod" in tags and "deploying-prod" not in tags
    assert set(fake.tags(101)) == set(tags) == set(await client.get_build_tags(o, "Chat", 101))


async def test_properties_use_json_patch_media_type(fake: FakeAzureDevOps, client: AzureDevOpsClient) -> None:
    o = org(fake.org_url("org"))
    props = await client.update_build_properties(o, "Chat", 101, [
        {"op": "add", "path": "/gitops-bridge.prod.status", "value": "succeeded"},
    ])
    assert props["gitops-bridge.prod.status"] == "succeeded"
    assert fake.properties(101)["gitops-bridge.prod.status"] == "succeeded"
    assert fake.requests_to("PATCH", "/properties")[-1]["content_type"] == "application/json-patch+json"
    async with httpx.AsyncClient(auth=("", "secret-pat")) as raw:
        response = await raw.patch(fake.org_url("org") + "Chat/_apis/build/builds/101/properties?api-version=7.1",
                                   json=[])
    assert response.status_code == 415  # what ADO answers to application/json


async def test_commit_status_created_and_listed_latest_only(fake: FakeAzureDevOps, client: AzureDevOpsClient) -> None:
    o = org(fake.org_url("org"))
    for state in ("pending", "succeeded"):
        created = await client.create_commit_status(
            o, "Chat", REPO, SHA, state=state, description=f"prod: {state}", target_url="https://argocd/app",
            context_name="deploy/prod", context_genre="gitops-bridge",
        )
        assert created["state"] == state
    latest = await client.list_commit_statuses(o, "Chat", REPO, SHA)
    assert [s["state"] for s in latest if s["context"]["name"] == "deploy/prod"] == ["succeeded"]
    assert len(fake.statuses(REPO, SHA)) >= 2
    with pytest.raises(NotFound):  # only Azure Repos repositories have commit statuses
        await client.list_commit_statuses(o, "Chat", "99999999-2222-3333-4444-555555555555", SHA)
    with pytest.raises(PermanentError):
        await client.create_commit_status(o, "Chat", REPO, SHA, state="bogus", description="", target_url=None,
                                          context_name="x")


async def test_list_builds_follows_continuation_tokens() -> None:
    fake = FakeAzureDevOps(pat="secret-pat").start()
    o2 = org(fake.org_url("o2"), name="o2")
    client = AzureDevOpsClient([o2])
    try:
        for i in range(1, 8):
            fake.add_build("o2", "P", {"id": i, "finishTime": f"2024-01-0{i}T00:00:00Z",
                                        "definition": {"id": 1 + i % 2, "name": f"d{1 + i % 2}"}})
        fake.add_build("o2", "P", {"id": 50, "status": "inProgress", "finishTime": "2024-01-09T00:00:00Z"})
        fake.page_size = 2
        builds = await client.list_builds(o2, "P", min_time="2024-01-02T00:00:00Z")
        assert [b["id"] for b in builds] == [2, 3, 4, 5, 6, 7]
        assert len(fake.requests_to("GET", "/_apis/build/builds")) == 3
        only = await client.list_builds(o2, "P", definitions=[2])
        assert [b["id"] for b in only] == [1, 3, 5, 7]
    finally:
        await client.aclose()
        fake.stop()


def test_build_event_from_api_has_the_webhook_build_key() -> None:
    body = json.loads((EVENTS / "build.complete.2-full.json").read_text())
    body["resource"]["sourceVersion"] = SHA
    fabrikam = org("https://fabrikamfiber.visualstudio.com", name="fabrikamfiber")  # spelled unlike the payload
    parsed = parse_event(body)
    assert isinstance(parsed, BuildEvent)
    hook = assign([fabrikam], parsed)
    api = dict(body["resource"])
    event = build_event_from_api(fabrikam, api)
    assert hook is not None and event.organization == hook.organization == "fabrikamfiber"
    assert event.build_key == hook.build_key == "fabrikamfiber:33dd33dd-ee44-ff55-aa66-77bb77bb77bb:2727068"
    assert event.source_version == SHA and event.definition_name == "MainRepo (1)"
    assert event.extra == {"source": "reconciler"}
    assert event.queue_time == "2024-12-02T12:18:45.7367977Z"


async def test_lookup_build_fills_a_run_state_changed_event(fake: FakeAzureDevOps, client: AzureDevOpsClient) -> None:
    minimal = build_event_from_api(org(fake.org_url("org")), {"id": 101, "result": "succeeded",
                                                         "project": {"id": fake.add_project("org", "Chat")["id"]}})
    assert minimal.needs_lookup
    full = await lookup_build(client, minimal)
    assert not full.needs_lookup
    assert full.source_version == SHA and full.definition_id == 7 and full.repository is not None
    assert full.build_key == minimal.build_key
    assert minimal.queue_time is None and full.queue_time is not None  # the look-up's queueTime
    no_project = build_event_from_api(org(fake.org_url("org")), {"id": 101, "result": "succeeded"})
    with pytest.raises(InvalidBuild):
        await lookup_build(client, no_project)


async def test_each_organization_gets_its_own_token_and_only_its_url() -> None:
    fake = FakeAzureDevOps(pat="unused", org_pats={"one": "pat-one", "two": "pat-two"}).start()
    elsewhere = FakeAzureDevOps(pat="pat-one").start()  # would accept the token: must never see it
    one, two = org(fake.org_url("one"), "pat-one", "one"), org(fake.org_url("two"), "pat-two", "two")
    fake.add_build("one", "P", {"id": 1})
    fake.add_build("two", "P", {"id": 2})
    client = AzureDevOpsClient([one, two])
    try:
        assert (await client.get_build(one, "P", 1))["id"] == 1
        assert (await client.get_build(two, "P", 2))["id"] == 2  # a wrong token would be the 203 sign-in page
        # An organization that is not the configured one (same name, another URL) gets no request at all
        for forged in (org(elsewhere.org_url("one"), "pat-one", "one"), org(fake.org_url("three"), name="three")):
            with pytest.raises(AuthError, match="not configured"):
                await client.get_build(forged, "P", 1)
        assert elsewhere.requests == []
        assert client.resolve("ONE") == one and client.resolve("three") is None
        assert client.resolve(None, fake.org_url("TWO")) == two  # records from before: by their stored URL
        assert client.resolve(None, elsewhere.org_url("one")) is None
    finally:
        await client.aclose()
        fake.stop()
        elsewhere.stop()
