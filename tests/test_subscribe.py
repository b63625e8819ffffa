"""`gitops-bridge subscribe` logic against the fake Azure DevOps: create, idempotent re-runs, dry run, check."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.fakes.azure_devops import FakeAzureDevOps
from workers.subscribe import masked, subscribe, webhook_url

API_PROJECT = "11bb11bb-cc22-dd33-ee44-55ff55ff55ff"
PUBLIC = "https://bridge.example.com"
HOOK = PUBLIC + "/webhooks/azure-devops"
ROUTING = parse_routing({
    "repositories": {"platform": {"url": "/nonexistent.git"}},
    "routes": [
        {"name": "chat", "match": {"project": "Chat", "definition": "chat-ci"},
         "environments": [{"name": "prod", "repository": "platform", "file": "chat/values.yaml"}]},
        {"name": "chat-staging", "match": {"project": "chat", "definition": "chat-ci"},
         "environments": [{"name": "staging", "repository": "platform", "file": "chat/values-staging.yaml"}]},
        {"name": "api", "match": {"project": API_PROJECT, "definition": "12"},
         "environments": [{"name": "dev", "repository": "platform", "file": "api/values.yaml"}]},
    ],
})


@pytest.fixture
def fake() -> Iterator[FakeAzureDevOps]:
    with FakeAzureDevOps(pat="pat") as served:
        served.add_project("org", "Chat")
        served.add_project("org", "Api", API_PROJECT)
        served.add_definition("org", "Api", 12, "api ci")
        yield served


def settings_for(fake: FakeAzureDevOps, **webhook: Any) -> Settings:
    return Settings(azure_devops={"token": "pat", "organization_url": fake.org_url("org").rstrip("/")},
                    webhook=webhook or {"tokens": ["header-secret-1"], "basic": ["ado:basic-secret-1"]})


async def run(settings: Settings, **kwargs: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = await subscribe(settings, ROUTING, public_url=kwargs.pop("public_url", PUBLIC), out=out, **kwargs)
    return code, out.getvalue()


def test_webhook_url_and_masking() -> None:
    assert webhook_url("https://b.example/") == "https://b.example/webhooks/azure-devops"
    assert webhook_url(HOOK) == HOOK
    body = {"consumerInputs": {"basicAuthPassword": "p", "httpHeaders": "X-A:1\nX-B:2"}}
    assert masked(body)["consumerInputs"] == {"basicAuthPassword": "********",
                                              "httpHeaders": "X-A:********\nX-B:********"}


async def test_dry_run_prints_masked_bodies_and_writes_nothing(fake: FakeAzureDevOps) -> None:
    code, text = await run(settings_for(fake), dry_run=True)
    assert code == 0
    assert "header-secret-1" not in text and "basic-secret-1" not in text
    assert text.count("would create") == 2  # Chat/chat-ci once, though two routes name it
    assert '"resourceVersion": "2.0"' in text and '"definitionName": "api ci"' in text
    assert "X-Bridge-Token:********" in text
    assert not fake.requests_to("POST", "/_apis/hooks/subscriptions")


async def test_creates_then_reruns_without_duplicates(fake: FakeAzureDevOps) -> None:
    settings = settings_for(fake)
    code, text = await run(settings)
    assert code == 0 and text.count("created:") == 2
    subs = fake.subscriptions("org")
    assert len(subs) == 2
    chat = next(s for s in subs if s["publisherInputs"]["definitionName"] == "chat-ci")
    assert chat["publisherInputs"]["projectId"] == fake.add_project("org", "Chat")["id"]
    assert chat["consumerInputs"]["url"] == HOOK
    assert chat["consumerInputs"]["basicAuthPassword"] == "basic-secret-1"
    assert chat["consumerInputs"]["httpHeaders"] == "X-Bridge-Token:header-secret-1"
    assert chat["consumerInputs"]["messagesToSend"] == "none"
    assert (chat["eventType"], chat["resourceVersion"], chat["consumerId"], chat["consumerActionId"]) == (
        "build.complete", "2.0", "webHooks", "httpRequest")

    rotated = settings_for(fake, tokens=["header-secret-2"], basic=["ado:basic-secret-2"])
    code, text = await run(rotated)
    assert code == 0 and text.count("updated:") == 2 and "secret-2" not in text
    assert len(fake.subscriptions("org")) == 2
    assert {s["consumerInputs"]["basicAuthPassword"] for s in fake.subscriptions("org")} == {"basic-secret-2"}


async def test_without_secrets_a_rerun_changes_nothing(fake: FakeAzureDevOps) -> None:
    plain = Settings(azure_devops={"token": "pat", "organization_url": fake.org_url("org")})
    assert (await run(plain))[0] == 0
    code, text = await run(plain)
    assert code == 0 and text.count("unchanged:") == 2
    assert not fake.requests_to("PUT", "/_apis/hooks/subscriptions/")


async def test_check_reports_probation_and_disabled_and_subscribe_repairs(fake: FakeAzureDevOps) -> None:
    settings = settings_for(fake)
    code, text = await run(settings, check=True)
    assert code == 1 and text.count("missing:") == 2
    await run(settings)
    assert (await run(settings, check=True))[0] == 0

    api, chat = sorted(fake.subscriptions("org"), key=lambda s: s["publisherInputs"]["definitionName"])
    fake.set_subscription_status(api["id"], "onProbation", probation_retries=2,
                                 last_probation_retry_date="2025-01-01T10:00:00Z")
    fake.set_subscription_status(chat["id"], "disabledBySystem", probation_retries=7)
    code, text = await run(settings, check=True)
    assert code == 1
    assert "onProbation" in text and "lastProbationRetryDate=2025-01-01T10:00:00Z" in text
    assert "disabledBySystem" in text and "not enabled: Chat/chat-ci" in text
    assert "basic-secret-1" not in text

    code, text = await run(settings)
    assert code == 0 and "recreated: Chat/chat-ci" in text and "updated: " in text
    subs = fake.subscriptions("org")
    assert len(subs) == 2 and {s["status"] for s in subs} == {"enabled"}
    assert chat["id"] not in {s["id"] for s in subs}  # replaced by a fresh one
    assert (await run(settings, check=True))[0] == 0


async def test_configuration_and_api_errors(fake: FakeAzureDevOps) -> None:
    assert (await run(Settings(azure_devops={"token": "pat"})))[0] == 2
    assert (await run(settings_for(fake), public_url=None))[0] == 2
    assert (await run(Settings(azure_devops={"organization_url": fake.org_url("org")})))[0] == 2
    code, text = await run(settings_for(fake), public_url="http://bridge.example.com")
    assert code == 1 and "HTTPS" in text and "basic-secret-1" not in text
    bad = Settings(azure_devops={"token": "wrong", "organization_url": fake.org_url("org")})
    code, text = await run(bad)
    assert code == 1 and "sign-in page" in text
    assert json.dumps(fake.subscriptions("org")) == "[]"


async def test_every_organization_with_its_own_token_and_routes() -> None:
    with FakeAzureDevOps(pat="unused", org_pats={"one": "pat-one", "two": "pat-two"}) as fake:
        for org in ("one", "two"):
            fake.add_project(org, "Chat")
            fake.add_project(org, "Api", API_PROJECT)
            fake.add_definition(org, "Api", 12, "api ci")
        routing = parse_routing({
            "repositories": {"platform": {"url": "/nonexistent.git"}},
            "routes": [
                {"name": "chat", "match": {"project": "Chat", "definition": "chat-ci"},
                 "environments": [{"name": "prod", "repository": "platform", "file": "chat/values.yaml"}]},
                {"name": "api", "match": {"project": API_PROJECT, "definition": "12", "organization": "two"},
                 "environments": [{"name": "dev", "repository": "platform", "file": "api/values.yaml"}]},
            ],
        })
        settings = Settings(
            azure_devops={"organizations": [{"name": "one", "url": fake.org_url("one")},
                                            {"name": "two", "url": fake.org_url("two")}],
                          "tokens": {"one": "pat-one", "two": "pat-two"}},
            webhook={"tokens": ["header-secret-1"]})
        out = io.StringIO()
        assert await subscribe(settings, routing, public_url=PUBLIC, out=out) == 0, out.getvalue()
        text = out.getvalue()
        for org in ("one", "two"):
            assert f"organization {org} ({fake.org_url(org)}):" in text
        one = {s["publisherInputs"]["definitionName"] for s in fake.subscriptions("one")}
        two = {s["publisherInputs"]["definitionName"] for s in fake.subscriptions("two")}
        assert (one, two) == ({"chat-ci"}, {"chat-ci", "api ci"})  # the api route names organization two only

        missing = Settings(azure_devops={"organizations": [{"name": "one", "url": fake.org_url("one")}]},
                           webhook={"tokens": ["header-secret-1"]})
        out = io.StringIO()
        assert await subscribe(missing, routing, public_url=PUBLIC, out=out) == 2
        assert "no token for one" in out.getvalue()
