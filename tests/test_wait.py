"""`gitops-bridge wait`: the pure decisions (bridge.waiting) as tables, and the command against a running bridge
(db 8): one test per row of the exit-code table, a build whose event has not arrived yet, progress lines."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis as AsyncRedis

from bridge import waiting
from bridge.app import create_app
from bridge.cli import main
from bridge.queue import Keys, deployment_id
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings

DB = 8
PREFIX, QUEUE = "test-wait", "test-wait:queue"
HOOK, READ = "hook-tok-9a8b7c", "read-tok-6d5e4f"
ORG = "acme"

ROUTING: dict[str, Any] = {
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [
        {"name": "api", "match": {"project": "Acme", "definition": "api-ci"}, "environments": [
            {"name": "dev", "repository": "gitops", "file": "api/dev.yaml"},
            {"name": "staging", "repository": "gitops", "file": "api/staging.yaml", "after": "dev"},
            {"name": "prod", "repository": "gitops", "file": "api/prod.yaml", "after": "staging", "trigger": "gate"},
            {"name": "hotfix", "repository": "gitops", "file": "api/hotfix.yaml",
             "branches": ["refs/heads/hotfix/*"]},
        ]},
        {"name": "web", "match": {"project": "Acme", "definition": "web-ci"}, "environments": [
            {"name": "dev", "repository": "gitops", "file": "web/dev.yaml"},
        ]},
    ],
}


def api_body(deployments: list[dict[str, Any]], route: str | None = None) -> dict[str, Any]:
    from bridge.api import route_json

    cfg = parse_routing(ROUTING)
    return {"build_id": 7, "routes": [route_json(r) for r in cfg.routes if route in (None, r.name)],
            "deployments": deployments}


def dep(env: str, verdict: str | None, route: str = "api", state: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": f"d-{route}-{env}", "route": route, "environment": env, "verdict": verdict,
            "state": state or ("done" if verdict else "verifying"), "reason": extra.pop("reason", None),
            "kind": "build", "created": 1.0, **extra}


# -- the pure decisions ----------------------------------------------------------------------------------------------

def test_routing_marks_which_environments_deploy_without_a_gate() -> None:
    route = parse_routing(ROUTING).route("api")
    assert [e.name for e in route.ungated()] == ["dev", "staging", "hotfix"]
    assert route.environment("prod").trigger == "gate"


def test_a_gated_environment_is_not_started_by_the_build() -> None:
    from bridge.routing import match_build

    found = match_build(parse_routing(ROUTING), project_id=None, project_name="Acme", definition_id=None,
                        definition_name="api-ci", branch="refs/heads/main", result="succeeded")
    assert [t.key for t in found] == [("api", "dev")]


@pytest.mark.parametrize(("text", "seconds"), [("20m", 1200), ("90s", 90), ("1h", 3600), ("1.5m", 90), ("45", 45),
                                                ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert waiting.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "5d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        waiting.parse_duration(text)


def test_route_is_the_named_one_or_the_deployments_or_the_only_candidate() -> None:
    assert waiting.choose_route(api_body([]), None, []) is None  # two routes, nothing deployed yet
    assert waiting.choose_route(api_body([dep("dev", None)]), None, [])["name"] == "api"
    assert waiting.choose_route(api_body([]), None, ["staging"])["name"] == "api"
    assert waiting.choose_route(api_body([]), "web", [])["name"] == "web"
    with pytest.raises(waiting.UsageError, match="no route 'nope'"):
        waiting.choose_route(api_body([]), "nope", [])
    with pytest.raises(waiting.UsageError, match="several routes"):
        waiting.choose_route(api_body([dep("dev", None), dep("dev", None, route="web")]), None, [])


def test_targets_default_to_the_ungated_environments_the_branch_accepts() -> None:
    route = waiting.choose_route(api_body([]), "api", [])
    assert route is not None
    assert waiting.targets(route, [], api_body([dep("dev", None, source_branch="refs/heads/main")])) == ["dev",
                                                                                                         "staging"]
    assert waiting.targets(route, [], api_body([])) == ["dev", "staging", "hotfix"]  # branch not known yet
    assert waiting.targets(route, ["prod"], api_body([])) == ["prod"]
    with pytest.raises(waiting.UsageError, match=r"no environment 'qa' in route 'api' \(environments: dev, staging"):
        waiting.targets(route, ["qa"], api_body([]))


@pytest.mark.parametrize(("verdicts", "code"), [
    ({"dev": "succeeded", "staging": "pushed"}, 0),
    ({"dev": "succeeded", "staging": "failed"}, 3),
    ({"dev": "rejected"}, 3),  # staging never starts: it carries dev's code
    ({"dev": "succeeded", "staging": "timed-out"}, 4),
    ({"dev": "superseded"}, 5),
    ({"dev": "held"}, 5),
    ({"dev": "timed-out", "staging": None}, 4),  # a follower that never started does not hide the failure
])
def test_exit_code_is_the_highest(verdicts: dict[str, str | None], code: int) -> None:
    body = api_body([dep(env, v) for env, v in verdicts.items() if v is not None])
    route = waiting.choose_route(body, "api", [])
    assert route is not None
    every = waiting.statuses(route, body)
    found = [every["dev"], every["staging"]]
    assert all(s.final for s in found)
    assert waiting.exit_code(found, timed_out=False) == code


def test_a_pending_environment_at_the_timeout_is_6_unless_something_worse_happened() -> None:
    assert waiting.exit_code([waiting.EnvStatus("dev", "verifying")], timed_out=True) == 6
    assert waiting.exit_code([], timed_out=True) == 6
    assert waiting.exit_code([waiting.EnvStatus("dev", "verifying"),
                              waiting.EnvStatus("x", "done", "superseded")], timed_out=True) == 6


def test_progress_lines_say_pushed_is_not_verified() -> None:
    assert waiting.EnvStatus("dev", "done", "pushed").line() == "dev: pushed (not verified: no Argo CD check)"
    assert waiting.EnvStatus("prod", "done", "failed", "Degraded").line() == "prod: failed: Degraded"


# -- the command against a running bridge ----------------------------------------------------------------------------

@pytest.fixture
def bridge(redis_url: Callable[[int], str], serve: Callable[[Any], Any],
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    url = redis_url(DB)
    settings = Settings(redis_url=url, queue_name=QUEUE, key_prefix=PREFIX, webhook={"tokens": [HOOK]},
                        api={"read_tokens": [f"ci:{READ}"]})
    server = serve(create_app(settings, parse_routing(ROUTING)))
    monkeypatch.setenv("BRIDGE_API__READ_TOKENS", f"ci:{READ}")
    server.redis_url = url
    yield server


def seed(url: str, build_id: int, env: str, verdict: str | None, route: str = "api", **fields: Any) -> None:
    build_key = f"{ORG}:Acme:{build_id}"
    record = DeploymentRecord(
        id=deployment_id(build_key, route, env), build_key=build_key, build_id=build_id, route=route,
        environment=env, repository="gitops", file=f"{route}/{env}.yaml", keys=["image.tag"], tag=str(build_id),
        state="done" if verdict else "verifying", verdict=verdict, reason=fields.pop("reason", None), **fields)

    async def create() -> None:
        client = AsyncRedis.from_url(url)
        try:
            store = DeploymentStore(client, Keys(prefix=PREFIX))
            if not await store.create(record):
                await store.update(record.id, reason=record.reason, verdict=verdict, state="done")
        finally:
            await client.aclose()

    asyncio.run(create())


def wait(capsys: pytest.CaptureFixture[str], server: Any, *argv: str) -> tuple[int, str, str]:
    code = main(["wait", "--url", server.url, "--interval", "0.05", "--timeout", "10s", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("verdicts", "code"), [
    ({"dev": "succeeded", "staging": "succeeded"}, 0),
    ({"dev": "succeeded", "staging": "pushed"}, 0),
    ({"dev": "succeeded", "staging": "failed"}, 3),
    ({"dev": "rejected"}, 3),
    ({"dev": "succeeded", "staging": "timed-out"}, 4),
    ({"dev": "superseded"}, 5),
    ({"dev": "held"}, 5),
])
def test_exit_code_for_each_verdict(bridge: Any, capsys: pytest.CaptureFixture[str], verdicts: dict[str, str],
                                    code: int) -> None:
    for env, verdict in verdicts.items():
        seed(bridge.redis_url, 41, env, verdict, reason=f"{env} {verdict}", source_branch="refs/heads/main")
    got, out, err = wait(capsys, bridge, "41")
    assert got == code, (out, err)
    assert f"build 41 api/dev: {verdicts['dev']}" in out


def test_json_prints_each_environments_verdict_and_reason(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    seed(bridge.redis_url, 42, "dev", "pushed", reason="no Argo CD application")
    seed(bridge.redis_url, 42, "staging", "failed", reason="Degraded: Deployment/api")
    code, out, err = wait(capsys, bridge, "42", "--env", "dev", "--env", "staging", "-o", "json")
    assert code == 3
    body = json.loads(out)
    assert body["exit_code"] == 3 and body["route"] == "api"
    assert [(e["environment"], e["verdict"], e["reason"]) for e in body["environments"]] == [
        ("dev", "pushed", "no Argo CD application"), ("staging", "failed", "Degraded: Deployment/api")]
    assert "api/dev: pushed (not verified" in err  # progress on stderr, so stdout stays JSON


def test_waits_for_a_build_whose_event_has_not_arrived(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    def later() -> None:
        time.sleep(0.3)
        seed(bridge.redis_url, 43, "dev", None)
        time.sleep(0.3)
        seed(bridge.redis_url, 43, "dev", "succeeded", reason="Healthy")
        seed(bridge.redis_url, 43, "staging", "succeeded", reason="Healthy")

    worker = threading.Thread(target=later)
    worker.start()
    try:
        code, out, err = wait(capsys, bridge, "43", "--route", "api", "--env", "dev", "--env", "staging")
    finally:
        worker.join()
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0] == "build 43 api/dev: waiting"
    assert "build 43 api/dev: verifying" in lines
    assert lines[-2:] == ["build 43 api/dev: succeeded: Healthy", "build 43 api/staging: succeeded: Healthy"]


def test_no_deployment_before_the_timeout_is_6(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["wait", "44", "--url", bridge.url, "--interval", "0.05", "--timeout", "300ms"])
    _, err = capsys.readouterr()
    assert code == 6
    assert "no deployment appeared within 300ms" in err


def test_a_deployment_still_in_flight_at_the_timeout_is_6(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    seed(bridge.redis_url, 45, "dev", None)
    code = main(["wait", "45", "--env", "dev", "--url", bridge.url, "--interval", "0.05", "--timeout", "300ms"])
    _, err = capsys.readouterr()
    assert code == 6
    assert "not every environment has a verdict" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["46", "--route", "nope"], "no route 'nope'"),
    (["46", "--route", "api", "--env", "qa"], "no environment 'qa' in route 'api'"),
    (["46", "--timeout", "soon"], "invalid duration"),
])
def test_usage_errors_are_2(bridge: Any, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = wait(capsys, bridge, *argv)
    assert code == 2
    assert message in err


def test_a_bad_flag_is_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["wait", "not-a-number"])
    assert exc.value.code == 2


def test_unreachable_or_unauthorised_is_7(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = wait(capsys, bridge, "47", "--token", "wrong")
    assert code == 7 and "HTTP 401" in err
    code = main(["wait", "47", "--url", "127.0.0.1:1", "--timeout", "1s"])
    assert code == 7 and "cannot reach the bridge" in capsys.readouterr().err
