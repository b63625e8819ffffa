"""POST /webhooks/azure-devops against a real uvicorn server and a real Redis (db 1, or a private server)."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import metrics, webhook
from bridge.app import create_app
from bridge.events import BuildEvent
from bridge.logs import configure_logging
from bridge.queue import PROCESS_BUILD, build_job_id, deployment_id
from bridge.routing import RoutingConfig, parse_routing
from bridge.settings import Settings

DB = 1
EVENTS = Path(__file__).resolve().parent / "data" / "azure-devops-events"  # copies of the reference samples
QUEUE = "gitops-bridge:queue"
TOKEN, TOKEN_ROTATED = "tok-3f9a1c2e7d5b", "tok-rotated-b81d44"
BASIC_USER, BASIC_PASSWORD = "ado-bridge", "pw-5c1e99af0d"
URL = "/webhooks/azure-devops"

ROUTING: dict[str, Any] = {
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git", "github": "acme/gitops"}},
    "routes": [
        {   # the full build.complete sample
            "name": "chat",
            "match": {"project": "FabrikamFiberChat", "definition": "MainRepo (1)", "branches": ["refs/heads/main"]},
            "environments": [
                {"name": "dev", "repository": "gitops", "file": "chat/dev.yaml"},
                {"name": "staging", "repository": "gitops", "file": "chat/staging.yaml", "promotion": "pull-request"},
                {"name": "prod", "repository": "gitops", "file": "chat/prod.yaml", "after": "staging"},
            ],
        },
        {   # the minimal build.complete sample (by ids)
            "name": "fiber",
            "match": {"project": "11bb11bb-cc22-dd33-ee44-55ff55ff55ff", "definition": "1"},
            "environments": [{"name": "dev", "repository": "gitops", "file": "fiber/dev.yaml"}],
        },
        {   # the run-state-changed sample (the project name is not in that event)
            "name": "pipeline",
            "match": {"project": "Fabrikam", "definition": "Pipeline-Name"},
            "environments": [{"name": "dev", "repository": "gitops", "file": "pipeline/dev.yaml"}],
        },
    ],
}


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def full_build(build_id: int = 2727068, **resource: Any) -> dict[str, Any]:
    """The full build.complete sample as real deliveries look (publisher tfs, vstfs URIs, a commit SHA)."""
    body = sample("build.complete.2-full.json")
    body["publisherId"] = "tfs"
    body["resource"]["uri"] = f"vstfs:///Build/Build/{build_id}"
    body["resource"]["sourceVersion"] = "6e12f614c0b5e4b33d4a8f0a9c3b2d1e0f9a8b7c"
    body["resource"]["id"] = build_id
    body["resource"].update(resource)
    return body


def run_state(build_id: int, base: str = "https://dev.azure.com/FabrikamFiber/",
              project: str = "33dd33dd-ee44-ff55-aa66-77bb77bb77bb", pipeline: str = "MainRepo (1)") -> dict[str, Any]:
    body = sample("ms.vss-pipelines.run-state-changed-event.json")
    run = body["resource"]["run"]
    run["_links"]["self"]["href"] = f"{base}{project}/_apis/Pipelines/4658/runs/{build_id}"
    run["_links"]["web"]["href"] = f"{base}{project}/_build/results?buildId={build_id}"
    run["url"] = run["_links"]["self"]["href"]
    run["pipeline"] = {"id": 4658, "name": pipeline}
    return body


def token_headers(token: str = TOKEN) -> dict[str, str]:
    return {"X-Bridge-Token": token, "Content-Type": "application/json; charset=utf-8"}


def basic_headers(user: str = BASIC_USER, password: str = BASIC_PASSWORD) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}", "Content-Type": "application/json; charset=utf-8"}


def make_settings(redis_url: str, **webhook: Any) -> Settings:
    hook: dict[str, Any] = {"tokens": [TOKEN, TOKEN_ROTATED], "basic": [f"{BASIC_USER}:{BASIC_PASSWORD}"]}
    hook.update(webhook)
    return Settings(redis_url=redis_url, queue_name=QUEUE, webhook=hook)


def routing() -> RoutingConfig:
    return parse_routing(ROUTING)


def queued_jobs(url: str) -> dict[str, Any]:
    """job id → arq JobDef, read straight from arq's queue in Redis."""
    with redis.Redis.from_url(url) as r:
        jobs = {}
        for job_id in r.zrange(QUEUE, 0, -1):
            raw = r.get(job_key_prefix + job_id.decode())
            assert raw is not None
            jobs[job_id.decode()] = deserialize_job(raw)
        return jobs


@pytest.fixture
def db_url(redis_url: Callable[[int], str]) -> str:
    return redis_url(DB)


@pytest.fixture
def client(db_url: str, serve: Callable[[Any], Any]) -> Iterator[httpx.Client]:
    server = serve(create_app(make_settings(db_url), routing()))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


# -- the samples -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "status", "route_envs"),
    [
        ("build.complete.2-full.json", "queued", [("chat", "dev"), ("chat", "staging")]),
        ("build.complete.1-minimal.json", "queued", [("fiber", "dev")]),
        # pipeline id 1 in project 11bb… is also the "fiber" route's definition 1
        ("ms.vss-pipelines.run-state-changed-event.json", "queued", [("fiber", "dev"), ("pipeline", "dev")]),
        ("ms.vss-pipelines.stage-state-changed-event.json", "ignored", []),
        ("git.push.json", "ignored", []),
    ],
)
def test_every_published_sample(client: httpx.Client, db_url: str, name: str, status: str,
                                route_envs: list[tuple[str, str]]) -> None:
    body = sample(name)  # verbatim, doc defects included (publisherId azure-devops, GUID sourceVersion)
    response = client.post(URL, content=json.dumps(body), headers=token_headers())
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == status
    assert [(d["route"], d["environment"]) for d in answer["deployments"]] == route_envs
    jobs = queued_jobs(db_url)
    if status != "queued":
        assert jobs == {}
        assert "not handled" in answer["reason"]
        return
    [(job_id, job)] = jobs.items()
    assert job.function == PROCESS_BUILD
    [payload] = job.args
    event = BuildEvent.from_json(payload["event"])
    assert job_id == build_job_id(event.build_key)
    assert payload["received"].endswith("Z")
    assert [d["id"] for d in answer["deployments"]] == [deployment_id(event.build_key, r, e) for r, e in route_envs]


def test_published_code_block_is_not_json(client: httpx.Client, db_url: str) -> None:
    raw = (EVENTS / "build.complete.published-codeblock.txt").read_bytes()  # two objects back to back
    response = client.post(URL, content=raw, headers=token_headers())
    assert response.status_code == 400
    assert response.json()["reason"].startswith("invalid JSON")
    assert queued_jobs(db_url) == {}


def test_queued_payload_is_the_normalised_event(client: httpx.Client, db_url: str) -> None:
    response = client.post(URL, json=full_build(31337), headers=token_headers())
    assert response.json()["status"] == "queued"
    [job] = queued_jobs(db_url).values()
    event = BuildEvent.from_json(job.args[0]["event"])
    assert (event.build_id, event.source_branch, event.source_version) == (
        31337, "refs/heads/main", "6e12f614c0b5e4b33d4a8f0a9c3b2d1e0f9a8b7c")
    assert event.project_name == "FabrikamFiberChat" and event.definition_id == 4658


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({**sample("build.complete.2-full.json"), "subscriptionId": "00000000-0000-0000-0000-000000000000"},
         "test notification"),
        ({"eventType": "build.complete", "resource": {"id": 7, "status": "succeeded", "uri": "vstfs:///Build/Build/7"}},
         "legacy resourceVersion 1.0"),
        (full_build(result="failed"), "no route"),
        (full_build(sourceBranch="refs/heads/feature/x"), "no route"),
        (full_build(status="inProgress"), "not completed"),
        ({**sample("ms.vss-pipelines.run-state-changed-event.json"),
          "resource": {"run": {"state": "inProgress", "id": 3}}}, "not completed"),
        ({"eventType": "build.complete", "resource": None}, "no resource details"),
        ({"eventType": "workitem.updated", "resource": {}}, "not handled"),
    ],
)
def test_valid_but_unwanted_events_are_ignored_with_202(client: httpx.Client, db_url: str, body: dict[str, Any],
                                                        reason: str) -> None:
    response = client.post(URL, json=body, headers=token_headers())
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["reason"]
    assert queued_jobs(db_url) == {}


# -- authentication --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [token_headers(), token_headers(TOKEN_ROTATED), basic_headers()])
def test_any_accepted_credential_passes(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.post(URL, json=full_build(), headers=headers)
    assert response.status_code == 202


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        token_headers("tok-3f9a1c2e7d5"),                      # a prefix of the real one
        token_headers(TOKEN + "x"),
        basic_headers(password="wrong"),
        basic_headers(user="someone-else"),
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        {"Authorization": "Basic !!!not-base64", "Content-Type": "application/json"},
        {"Authorization": "Basic " + base64.b64encode(BASIC_PASSWORD.encode()).decode(),
         "Content-Type": "application/json"},
    ],
)
def test_missing_or_wrong_credentials_are_401_and_say_only_the_scheme(
    client: httpx.Client, db_url: str, headers: dict[str, str]
) -> None:
    response = client.post(URL, json=full_build(), headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "status": "rejected",
        "reason": "authentication required: HTTP Basic or the x-bridge-token header",
    }
    assert response.headers.get_list("www-authenticate") == [
        'Basic realm="gitops-bridge", charset="UTF-8"', 'Token realm="gitops-bridge", header="x-bridge-token"'
    ]
    assert queued_jobs(db_url) == {}


def test_unauthenticated_oversized_body_is_401_not_413(client: httpx.Client) -> None:
    response = client.post(URL, content=b"x" * (3 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert response.status_code == 401


def test_only_basic_configured_challenges_basic_only(db_url: str, serve: Callable[[Any], Any]) -> None:
    server = serve(create_app(make_settings(db_url, tokens=[]), routing()))
    response = httpx.post(server.url + URL, json=full_build(), headers=token_headers())
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == ['Basic realm="gitops-bridge", charset="UTF-8"']
    assert response.json()["reason"] == "authentication required: HTTP Basic"
    assert httpx.post(server.url + URL, json=full_build(), headers=basic_headers()).status_code == 202


def test_explicitly_insecure_app_accepts_anonymous_webhooks(db_url: str, serve: Callable[[Any], Any]) -> None:
    server = serve(create_app(make_settings(db_url, tokens=[], basic=[], allow_unauthenticated=True), routing()))
    response = httpx.post(server.url + URL, json=full_build(), headers={"Content-Type": "application/json"})
    assert response.status_code == 202 and response.json()["status"] == "queued"


# -- limits and shape ------------------------------------------------------------------------------------------------
def test_declared_oversized_body_is_413_without_a_job(client: httpx.Client, db_url: str) -> None:
    body = full_build()
    body["padding"] = "x" * (2 * 1024 * 1024)
    response = client.post(URL, content=json.dumps(body), headers=token_headers())
    assert response.status_code == 413
    assert response.json()["status"] == "rejected"
    assert queued_jobs(db_url) == {}


def test_chunked_oversized_body_is_413_while_streaming(client: httpx.Client, db_url: str) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield b'{"eventType": "build.complete", "padding": "'
        for _ in range(64):  # 4 MiB if it were all read
            sent.append(1)
            yield b"x" * 65536
        yield b'"}'

    response = client.post(URL, content=chunks(), headers=token_headers())
    assert response.status_code == 413
    assert queued_jobs(db_url) == {}


def test_body_exactly_at_the_limit_is_read(db_url: str, serve: Callable[[Any], Any]) -> None:
    settings = make_settings(db_url)
    settings.webhook.max_body_bytes = 4096
    server = serve(create_app(settings, routing()))
    body = json.dumps({"eventType": "other.event", "pad": ""}).encode()
    body = body[:-2] + b" " * (4096 - len(body)) + body[-2:]
    assert len(body) == 4096
    response = httpx.post(server.url + URL, content=body, headers=token_headers())
    assert response.status_code == 202
    response = httpx.post(server.url + URL, content=body + b" ", headers=token_headers())
    assert response.status_code == 413


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "json"])
def test_not_json_content_is_415(client: httpx.Client, content_type: str | None) -> None:
    headers = {"X-Bridge-Token": TOKEN}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post(URL, content=json.dumps(full_build()), headers=headers)
    assert response.status_code == 415


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"", "invalid JSON"),
        (b"\xff\xfe{}", "invalid JSON"),
        (b"[" * 5000, "JSON nested deeper than 64 levels"),  # refused before parsing
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"resource": {}}', "missing field 'eventType'"),
        (b'{"eventType": "build.complete", "resource": {"result": "succeeded", "id": "abc"}}', "resource.id"),
        (b'{"eventType": "build.complete", "resource": "text"}', "'resource' must be an object"),
        (b'{"eventType": "ms.vss-pipelines.run-state-changed-event", "resource": {"run": 5}}', "resource.run"),
    ],
)
def test_unusable_json_is_400_naming_the_problem(client: httpx.Client, db_url: str, content: bytes,
                                                reason: str) -> None:
    response = client.post(URL, content=content, headers=token_headers())
    assert response.status_code == 400
    assert reason in response.json()["reason"]
    assert queued_jobs(db_url) == {}


def test_vendor_json_media_type_is_accepted(client: httpx.Client) -> None:
    headers = {**token_headers(), "Content-Type": "application/vnd.ado+json"}
    assert client.post(URL, json=full_build(), headers=headers).status_code == 202


# -- duplicates ------------------------------------------------------------------------------------------------------
def test_redelivery_is_a_duplicate_and_one_job(client: httpx.Client, db_url: str) -> None:
    first = client.post(URL, json=full_build(), headers=token_headers())
    second = client.post(URL, json=full_build(), headers=basic_headers())
    assert (first.json()["status"], second.json()["status"]) == ("queued", "duplicate")
    assert first.json()["deployments"] == second.json()["deployments"]
    assert len(queued_jobs(db_url)) == 1


def test_both_event_types_for_one_build_give_one_job(client: httpx.Client, db_url: str) -> None:
    run = client.post(URL, json=run_state(4242), headers=token_headers())
    build = client.post(URL, json=full_build(4242), headers=token_headers())
    assert run.json()["status"] == "queued", run.json()
    assert build.json()["status"] == "duplicate"
    [(job_id, job)] = queued_jobs(db_url).items()
    assert job.args[0]["event"]["event_type"] == "ms.vss-pipelines.run-state-changed-event"  # the first one wins


# -- organizations: configuration, not input ----------------------------------------------------------------------
def with_org(build: dict[str, Any], base: str) -> dict[str, Any]:
    body = copy.deepcopy(build)
    body["resourceContainers"]["collection"]["baseUrl"] = base
    body["resourceContainers"].pop("account", None)
    return body


@pytest.fixture
def org_client(db_url: str, serve: Callable[[Any], Any]) -> Iterator[httpx.Client]:
    settings = make_settings(db_url).model_copy(update={"azure_devops": Settings(azure_devops={
        "organizations": [{"name": "fiber", "url": "https://fabrikamfiber.visualstudio.com/"}]}).azure_devops})
    server = serve(create_app(settings, routing()))
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def ignored_count() -> float:
    return metrics.REGISTRY.get_sample_value(
        "bridge_webhook_requests_total", {"event_type": "build.complete", "outcome": "ignored"}) or 0.0


def test_unknown_organization_is_ignored_without_a_job(org_client: httpx.Client, db_url: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    before = ignored_count()
    with caplog.at_level(logging.INFO, logger="bridge.webhook"):
        response = org_client.post(URL, json=with_org(full_build(), "https://dev.azure.com/evil/"),
                                   headers=token_headers())
    assert response.status_code == 202
    assert response.json() == {"status": "ignored", "reason": "unknown organization", "deployments": []}
    assert queued_jobs(db_url) == {}
    assert ignored_count() == before + 1
    [entry] = [r for r in caplog.records if r.name == "bridge.webhook"]
    assert entry.reason == "unknown organization" and entry.organization == "dev.azure.com/evil"  # type: ignore[attr-defined]


def test_configured_organization_in_either_spelling_is_one_build(org_client: httpx.Client, db_url: str) -> None:
    first = org_client.post(URL, json=with_org(full_build(77), "https://dev.azure.com/FabrikamFiber/"),
                            headers=token_headers())
    again = org_client.post(URL, json=with_org(full_build(77), "https://fabrikamfiber.visualstudio.com"),
                            headers=token_headers())
    run = org_client.post(URL, json=run_state(77, base="https://FABRIKAMFIBER.visualstudio.com/"),
                          headers=token_headers())
    assert [r.json()["status"] for r in (first, again, run)] == ["queued", "duplicate", "duplicate"]
    [(job_id, job)] = queued_jobs(db_url).items()
    event = BuildEvent.from_json(job.args[0]["event"])
    assert event.organization == "fiber"
    assert job_id == build_job_id("fiber:33dd33dd-ee44-ff55-aa66-77bb77bb77bb:77")
    assert first.json()["deployments"][0]["id"] == deployment_id(event.build_key, "chat", "dev")


def test_different_builds_are_different_jobs(client: httpx.Client, db_url: str) -> None:
    for build_id in (1, 2, 3):
        assert client.post(URL, json=full_build(build_id), headers=token_headers()).json()["status"] == "queued"
    assert len(queued_jobs(db_url)) == 3


def test_twenty_concurrent_identical_deliveries_give_one_job(db_url: str, serve: Callable[[Any], Any]) -> None:
    server = serve(create_app(make_settings(db_url), routing()))
    body = json.dumps(full_build(777)).encode()

    async def deliver_all() -> list[str]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=10) as c:
            responses = await asyncio.gather(*(c.post(URL, content=body, headers=token_headers())
                                               for _ in range(20)))
        return [r.json()["status"] for r in responses]

    statuses = asyncio.run(deliver_all())
    assert sorted(statuses) == ["duplicate"] * 19 + ["queued"]
    assert list(queued_jobs(db_url)) == [build_job_id(BuildEvent.from_json(
        next(iter(queued_jobs(db_url).values())).args[0]["event"]).build_key)]


# -- Redis unavailable -----------------------------------------------------------------------------------------------
def test_redis_down_is_503_and_recovers_without_restart(private_redis: Any, serve: Callable[[Any], Any]) -> None:
    server = serve(create_app(make_settings(private_redis.url), routing()))
    failures_before = metrics.ENQUEUE_FAILURES._value.get()
    with httpx.Client(base_url=server.url, timeout=20) as c:
        assert c.post(URL, json=full_build(1), headers=token_headers()).json()["status"] == "queued"
        private_redis.stop()
        for build_id in (2, 3):
            down = c.post(URL, json=full_build(build_id), headers=token_headers())
            assert down.status_code == 503
            assert down.headers["retry-after"] == "10"
            assert down.json() == {"status": "unavailable", "reason": "queue unavailable, retry later"}
        assert c.get("/readyz").status_code == 503
        # ignored events never touch Redis: they are still answered
        assert c.post(URL, json=sample("git.push.json"), headers=token_headers()).status_code == 202
        private_redis.start()
        for build_id in (2, 4):
            up = c.post(URL, json=full_build(build_id), headers=token_headers())
            assert up.status_code == 202 and up.json()["status"] == "queued"
        assert c.get("/readyz").status_code == 200
    assert metrics.ENQUEUE_FAILURES._value.get() == failures_before + 2
    assert sorted(queued_jobs(private_redis.url)) == sorted(
        build_job_id(f"dev.azure.com/fabrikamfiber:33dd33dd-ee44-ff55-aa66-77bb77bb77bb:{b}") for b in (2, 4))



def test_a_hung_redis_is_503_after_the_enqueue_timeout(private_redis: Any, serve: Callable[[Any], Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "REDIS_TIMEOUT_S", 0.5)
    server = serve(create_app(make_settings(private_redis.url), routing()))
    with httpx.Client(base_url=server.url, timeout=20) as c:
        assert c.post(URL, json=full_build(1), headers=token_headers()).json()["status"] == "queued"
        private_redis.process.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers
        try:
            hung = c.post(URL, json=full_build(2), headers=token_headers())
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        assert hung.status_code == 503 and hung.json()["status"] == "unavailable"
        assert c.post(URL, json=full_build(3), headers=token_headers()).json()["status"] == "queued"
# -- fuzzing ---------------------------------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False,
                                                                                                allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
PATHS = [
    ("eventType",), ("subscriptionId",), ("id",), ("resource",), ("resource", "id"), ("resource", "result"),
    ("resource", "status"), ("resource", "project"), ("resource", "project", "id"), ("resource", "definition"),
    ("resource", "definition", "id"), ("resource", "sourceBranch"), ("resource", "sourceVersion"),
    ("resource", "url"), ("resource", "_links"), ("resourceContainers",), ("resourceContainers", "collection"),
    ("resource", "run"), ("resource", "run", "state"), ("resource", "run", "id"), ("resource", "run", "result"),
    ("resource", "run", "_links", "web", "href"), ("resource", "run", "url"), ("resource", "run", "pipeline"),
]
BASES = [full_build(), run_state(99), sample("build.complete.1-minimal.json")]


def _mutate(body: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool) -> dict[str, Any]:
    body = copy.deepcopy(body)
    node: Any = body
    for part in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            return body
        node = node[part]
    if isinstance(node, dict):
        if delete:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    return body


bodies = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda base, mutations: json.dumps(
            _apply_all(BASES[base], mutations), allow_nan=False).encode(),
        st.integers(0, len(BASES) - 1),
        st.lists(st.tuples(st.sampled_from(PATHS), JSON, st.booleans()), min_size=1, max_size=4),
    ),
)


def _apply_all(body: dict[str, Any], mutations: list[tuple[tuple[str, ...], Any, bool]]) -> dict[str, Any]:
    for path, value, delete in mutations:
        body = _mutate(body, path, value, delete)
    return body


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
auths = st.one_of(
    st.just(("token", token_headers()["X-Bridge-Token"])),
    st.just(("basic", basic_headers()["Authorization"])),
    st.tuples(st.just("token"), header_text),
    st.tuples(st.just("authorization"), header_text),
    st.just(("none", "")),
)
content_types = st.one_of(st.just("application/json"), st.just("application/json; charset=utf-8"), header_text,
                          st.none())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, auth=auths, content_type=content_types)
def test_fuzzed_requests_never_5xx_and_never_queue_unless_valid(
    body: bytes, auth: tuple[str, str], content_type: str | None, fuzz_server: tuple[str, str]
) -> None:
    base_url, db_url = fuzz_server
    kind, value = auth
    headers: dict[str, str] = {}
    if kind == "token":
        headers["X-Bridge-Token"] = value
    elif kind in ("basic", "authorization"):
        headers["Authorization"] = value
    if content_type is not None:
        headers["Content-Type"] = content_type
    authenticated = (kind == "token" and value == TOKEN) or (kind == "basic")
    before = len(queued_jobs(db_url))
    response = httpx.post(base_url + URL, content=body, headers=headers, timeout=10)
    after = len(queued_jobs(db_url))
    assert response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    if not authenticated:
        assert response.status_code == 401
    if response.status_code == 202 and answer["status"] == "queued":
        assert after == before + 1
        assert authenticated
    else:
        assert after == before


@pytest.fixture
def fuzz_server(db_url: str, serve: Callable[[Any], Any]) -> tuple[str, str]:
    server = serve(create_app(make_settings(db_url), routing()))
    return server.url, db_url


# -- logs ------------------------------------------------------------------------------------------------------------
def test_a_secret_in_any_payload_field_is_masked_in_the_webhook_line(db_url: str, serve: Callable[[Any], Any]) -> None:
    settings = make_settings(db_url)
    server = serve(create_app(settings, routing()))
    body = full_build(31337)
    body["id"] = f"event-{TOKEN}"  # event_id
    body["resourceContainers"]["collection"]["baseUrl"] = f"https://dev.azure.com/{TOKEN_ROTATED}/"  # organization
    body["resourceContainers"].pop("account", None)
    body["resource"]["project"]["id"] = f"project-{BASIC_PASSWORD}"  # build_key
    stream = io.StringIO()
    handler = configure_logging(settings, stream=stream)
    try:
        response = httpx.post(server.url + URL, json=body, headers=token_headers(), timeout=10)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    assert response.status_code == 202 and response.json()["status"] == "queued"
    [line] = [x for x in stream.getvalue().splitlines() if "azure-devops webhook" in x]
    assert "build_id=31337" in line and "event_id=event-***" in line and "organization=dev.azure.com/***" in line
    for secret in settings.secret_values():
        assert secret not in line


def test_no_secret_in_logs_answers_or_metrics(db_url: str, serve: Callable[[Any], Any], private_redis: Any) -> None:
    settings = make_settings(private_redis.url)
    settings.log_level = "DEBUG"
    secrets = settings.secret_values()
    assert TOKEN in secrets and BASIC_PASSWORD in secrets and TOKEN_ROTATED in secrets
    server = serve(create_app(settings, routing()))
    stream = io.StringIO()
    handler = configure_logging(settings, stream=stream)
    seen: list[str] = []
    try:
        with httpx.Client(base_url=server.url, timeout=20) as c:
            requests = [
                (full_build(1), token_headers()),
                (full_build(1), basic_headers()),
                (full_build(2), token_headers(TOKEN + "-wrong")),
                (full_build(2), basic_headers(password=BASIC_PASSWORD + "x")),
                ({"eventType": f"leak {TOKEN} {BASIC_PASSWORD}"}, token_headers()),      # quoted in the reason
                ({"eventType": "build.complete", "resource": {"result": "succeeded", "id": TOKEN}}, basic_headers()),
            ]
            for body, headers in requests:
                seen.append(c.post(URL, json=body, headers=headers).text)
            seen.append(c.post(URL, content=f"{{{TOKEN}".encode(), headers=token_headers()).text)
            private_redis.stop()
            seen.append(c.post(URL, json=full_build(3), headers=token_headers()).text)
            seen.append(c.get("/readyz").text)
            logging.getLogger("bridge.test").error("connect to %s failed", settings.redis_url.get_secret_value()
                                                   if settings.redis_url else "")
            seen.append(c.get("/metrics").text)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    output = stream.getvalue()
    assert "azure-devops webhook queued" in output and "outcome=unauthorized" in output
    assert "outcome=unavailable" in output and "***" in output
    for secret in secrets:
        assert secret not in output
        for text in seen:
            assert secret not in text
