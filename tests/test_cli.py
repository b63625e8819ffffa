"""The `gitops-bridge` command: check-config (output, errors naming file/route/field, exit 2), web/worker refusing
to start, the API commands against a running bridge (db 8), and `serve` with its embedded, append-only Redis."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from arq.connections import RedisSettings, create_pool
from arq.constants import job_key_prefix
from redis.asyncio import Redis as AsyncRedis
from redis_server import shared_redis_url

from bridge.app import create_app
from bridge.cli import main
from bridge.queue import PROCESS_BUILD, Keys, deployment_id
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import parse_routing

DB = 8
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bridge.yaml"
EVENTS = Path(__file__).resolve().parent / "data" / "azure-devops-events"  # copies of the reference samples
HOOK, READ, WRITE, GITHUB = "hook-tok-5d2c9e", "read-tok-1a7f3b", "write-tok-8e0c4d", "ghp-tok-4b9d1e"
PREFIX = "test-cli"
QUEUE = "test-cli:queue"
ORG = "dev.azure.com/acme:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
QUEUE_DEFAULT = "gitops-bridge:queue"  # what `serve` uses (BRIDGE_QUEUE_NAME unset)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No BRIDGE_* from the outside, an empty secrets dir, and the root logger restored (`_load` configures it)."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    empty = tmp_path / "no-secrets"
    empty.mkdir()
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(empty))
    monkeypatch.setenv("BRIDGE_ARGOCD__URL", "https://argocd.example.invalid")  # the example names Argo CD apps
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- check-config ----------------------------------------------------------------------------------------------------

def test_check_config_prints_the_resolved_example(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    monkeypatch.setenv("BRIDGE_GITHUB__TOKEN", GITHUB)
    code, out, err = run_cli(capsys, "check-config", "--config", str(EXAMPLE))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{EXAMPLE}: OK — 1 repositories, 1 routes"
    assert "repository platform: https://github.com/org/gitops-repo.git @ main (github org/gitops-repo)" in out
    assert ("route api-service: project=Fabrikam definition=api-service-ci "
            "branches=refs/heads/main,refs/heads/release/* results=succeeded tag={build.id} ordering=build-id") in out
    envs = [line.split() for line in lines if line.startswith("    ")]
    assert [e[:3] for e in envs] == [
        ["dev", "push", "platform:helm/api-service/values-dev.yaml"],
        ["staging", "pull-request", "platform:helm/api-service/values-staging.yaml"],
        ["prod", "pull-request", "platform:helm/api-service/values-prod.yaml"],
    ]
    assert "(after dev; argocd default/api-service-staging)" in out
    assert "(branches refs/heads/release/*; argocd default/api-service-prod)" in out
    assert HOOK not in out and GITHUB not in out


def test_config_file_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", str(EXAMPLE))
    monkeypatch.setenv("BRIDGE_WEBHOOK__BASIC", "ado:pw-91c3")
    monkeypatch.setenv("BRIDGE_GITHUB__TOKEN", GITHUB)
    code, out, _ = run_cli(capsys, "check-config")
    assert code == 0
    assert out.startswith(f"{EXAMPLE}: OK")


def test_secrets_dir_files_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "webhook__tokens").write_text(HOOK + "\n")
    (secrets / "github__token").write_text(GITHUB)
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(secrets))
    code, out, err = run_cli(capsys, "check-config", "--config", str(EXAMPLE))
    assert (code, err) == (0, "")
    assert HOOK not in out

    (secrets / "webhook__tokens").unlink()
    (secrets / "webhook__basic").write_text("no-colon-here")
    code, _, err = run_cli(capsys, "check-config", "--config", str(EXAMPLE))
    assert code == 2
    assert "settings: webhook.basic: each entry must be 'user:password'" in err
    assert "no-colon-here" not in err


def test_missing_credentials_are_listed_together(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "check-config", "--config", str(EXAMPLE))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "configuration invalid:",
        "  settings: webhook: no credentials configured (BRIDGE_WEBHOOK__TOKENS or BRIDGE_WEBHOOK__BASIC); "
        "set BRIDGE_WEBHOOK__ALLOW_UNAUTHENTICATED=true to run open",
        "  settings: github.token: routes use pull-request promotion but BRIDGE_GITHUB__TOKEN is unset",
    ]


def test_allow_unauthenticated_and_push_only_needs_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = example()
    for env in data["routes"][0]["environments"]:
        env["promotion"] = "push"
    monkeypatch.setenv("BRIDGE_WEBHOOK__ALLOW_UNAUTHENTICATED", "true")
    code, out, _ = run_cli(capsys, "check-config", "--config", str(write_config(tmp_path, data)))
    assert code == 0
    assert "pull-request" not in out


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation of the example: `path` like routes.0.environments.1.file."""

    def apply(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return apply


ROUTE = "routes[0] (api-service)"
CONFIG_ERRORS = [
    ("unknown key in an environment", _set("routes.0.environments.0.fiel", "x"),
     f"{ROUTE}: environments[0].fiel: unknown key"),
    ("unknown key in a route", _set("routes.0.tags", "x"), f"{ROUTE}: tags: unknown key"),
    ("unknown key in match", _set("routes.0.match.branch", "main"), f"{ROUTE}: match.branch: unknown key"),
    ("unknown repository", _set("routes.0.environments.1.repository", "nope"),
     f"{ROUTE}: environments[1].repository: unknown repository 'nope' (known: platform)"),
    ("absolute file", _set("routes.0.environments.0.file", "/etc/values.yaml"),
     f"{ROUTE}: environments[0].file: must be a relative path inside the repository"),
    ("windows drive file", _set("routes.0.environments.0.file", "C:/values.yaml"),
     f"{ROUTE}: environments[0].file: must be a relative path inside the repository"),
    ("escaping file", _set("routes.0.environments.2.file", "helm/../../values.yaml"),
     f"{ROUTE}: environments[2].file: must not escape the repository ('..')"),
    ("duplicate target", _set("routes.0.environments.1.file", "helm/api-service/values-dev.yaml"),
     f"{ROUTE}: environments[1].keys: duplicate target helm/api-service/values-dev.yaml:image.tag "
     "(also api-service/dev)"),
    ("bad branch glob", _set("routes.0.match.branches", ["refs/heads/[main"]),
     f"{ROUTE}: match.branches: unbalanced brackets in glob 'refs/heads/[main'"),
    ("bad environment glob", _set("routes.0.environments.2.branches", [" refs/heads/main"]),
     f"{ROUTE}: environments[2].branches: empty or padded glob ' refs/heads/main'"),
    ("unknown tag placeholder", _set("routes.0.tag", "{build.id}-{build.colour}"),
     f"{ROUTE}: tag: unknown placeholder(s) {{build.colour}} in '{{build.id}}-{{build.colour}}'"),
    ("unknown after", _set("routes.0.environments.1.after", "qa"),
     f"{ROUTE}: environments[1].after: unknown environment 'qa'"),
    ("pull request without github", _set("repositories.platform.github", None),
     f"{ROUTE}: environments[1].promotion: pull-request needs repositories.platform.github"),
]


@pytest.mark.parametrize(("mutate", "problem"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors_name_file_route_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 mutate: Callable[[dict[str, Any]], None], problem: str) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    monkeypatch.setenv("BRIDGE_GITHUB__TOKEN", GITHUB)
    data = example()
    mutate(data)
    path = write_config(tmp_path, data)
    code, out, err = run_cli(capsys, "check-config", "--config", str(path))
    assert (code, out) == (2, "")
    assert err.startswith("configuration invalid:\n")
    assert f"  {path}: {problem}" in err.splitlines()


def test_every_problem_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    data = example()
    data["routes"].append(copy.deepcopy(data["routes"][0]) | {"name": "worker"})
    data["routes"][0]["environments"][0]["file"] = "/abs.yaml"
    data["routes"][1]["environments"][0]["color"] = "blue"
    code, _, err = run_cli(capsys, "check-config", "--config", str(write_config(tmp_path, data)))
    assert code == 2
    assert "routes[0] (api-service): environments[0].file:" in err
    assert "routes[1] (worker): environments[0].color: unknown key" in err


@pytest.mark.parametrize(("content", "message"), [
    (None, ": cannot read routing file"),
    ("routes: [\n", ":2:1: invalid YAML: did not find expected node content"),  # libyaml's words
    ("routes:\n  - name: a\n    match: {project: x\n  - b: [\n",
     ":4:6: invalid YAML: did not find expected ',' or '}' (while parsing a flow mapping at 3:12)"),
    ("- just\n- a list\n", ": (top level): must be a mapping"),
])
def test_unreadable_routing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], content: str | None, message: str) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    path = tmp_path / "bridge.yaml"
    if content is not None:
        path.write_text(content)
    code, _, err = run_cli(capsys, "check-config", "--config", str(path))
    assert code == 2
    assert f"  {path}{message}" in err  # the real file name, and line:column for YAML syntax errors


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("BRIDGE_PORT", "eighty", "settings: port: Input should be a valid integer"),
    ("BRIDGE_WEBHOOK__TOKENZ", "secret-typo-value", "settings: webhook.tokenz: unknown setting "
                                                    "(BRIDGE_WEBHOOK__TOKENZ)"),
    ("BRIDGE_AZURE_DEVOPS__AUTH", "secret-auth-value", "settings: azure_devops.auth: String should match pattern"),
])
def test_invalid_settings_exit_2_without_echoing_values(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], name: str, value: str,
                                                        problem: str) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    monkeypatch.setenv(name, value)
    for command in ("check-config", "web", "worker"):
        code, _, err = run_cli(capsys, command, "--config", str(EXAMPLE))
        assert code == 2, command
        assert problem in err
        assert value not in err


# -- web and worker refuse to start ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["web", "worker"])
def test_web_and_worker_need_a_redis_url(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         command: str) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    monkeypatch.setenv("BRIDGE_GITHUB__TOKEN", GITHUB)
    code, _, err = run_cli(capsys, command, "--config", str(EXAMPLE))
    assert code == 2
    assert f"settings: redis_url: `{command}` needs BRIDGE_REDIS_URL or BRIDGE_REDIS_SENTINELS (use `serve`" in err


@pytest.mark.parametrize("command", ["web", "worker", "serve"])
def test_invalid_routing_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], command: str) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    monkeypatch.setenv("BRIDGE_REDIS_URL", shared_redis_url(DB))
    data = example()
    data["routes"][0]["tag"] = "{build.nope}"
    path = write_config(tmp_path, data)
    code, _, err = run_cli(capsys, command, "--config", str(path))
    assert code == 2
    assert f"{path}: {ROUTE}: tag: unknown placeholder(s) {{build.nope}}" in err


def test_web_refuses_without_webhook_credentials(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_REDIS_URL", shared_redis_url(DB))
    code, _, err = run_cli(capsys, "web", "--config", str(EXAMPLE))
    assert code == 2
    assert "webhook: no credential configured" in err


# -- commands that talk to a running bridge --------------------------------------------------------------------------

API_ROUTING: dict[str, Any] = {
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [{
        "name": "api",
        "match": {"project": "Acme", "definition": "api-ci"},
        "environments": [
            {"name": "dev", "repository": "gitops", "file": "api/dev.yaml"},
            {"name": "prod", "repository": "gitops", "file": "api/prod.yaml"},
        ],
    }],
}


def seed(url: str, build_id: int, env: str, verdict: str | None, created: float, **fields: Any) -> DeploymentRecord:
    build_key = f"{ORG}:{build_id}"
    record = DeploymentRecord(
        id=deployment_id(build_key, "api", env), build_key=build_key, build_id=build_id, route="api",
        environment=env, repository="gitops", file=f"api/{env}.yaml", keys=["image.tag"], tag=str(build_id),
        state="done" if verdict else "verifying", verdict=verdict, reason=fields.pop("reason", None),
        created=created, **fields)

    async def create() -> None:
        client = AsyncRedis.from_url(url)
        try:
            assert await DeploymentStore(client, Keys(prefix=PREFIX)).create(record)
        finally:
            await client.aclose()

    asyncio.run(create())
    return record


@pytest.fixture
def bridge(redis_url: Callable[[int], str], serve: Callable[[Any], Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A running bridge on db 8; the CLI finds its tokens in the environment, its URL through --url."""
    from bridge.settings import Settings

    url = redis_url(DB)
    settings = Settings(redis_url=url, queue_name=QUEUE, key_prefix=PREFIX, webhook={"tokens": [HOOK]},
                        api={"read_tokens": [f"viewer:{READ}"], "write_tokens": [f"alice:{WRITE}"]})
    server = serve(create_app(settings, parse_routing(API_ROUTING)))
    monkeypatch.setenv("BRIDGE_API__READ_TOKENS", f"viewer:{READ}")
    monkeypatch.setenv("BRIDGE_API__WRITE_TOKENS", f"alice:{WRITE}")
    server.redis_url = url
    return server


def table(out: str) -> tuple[list[str], list[list[str]]]:
    header, *rows = out.splitlines()
    return header.split(), [r.split() for r in rows]


def test_deployments_table_wide_json_yaml(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    old = seed(bridge.redis_url, 41, "dev", "succeeded", now - 7200, commit_sha="0123456789abcdef" * 2 + "01234567")
    reason = "values file missing: " + "x" * 80
    new = seed(bridge.redis_url, 42, "dev", "failed", now - 5, reason=reason)
    code, out, _ = run_cli(capsys, "deployments", "--url", bridge.url)
    assert code == 0
    header, rows = table(out)
    assert header == ["BUILD", "ROUTE", "ENV", "TAG", "STATE", "VERDICT", "AGE", "REASON"]
    assert rows[1] == ["41", "api", "dev", "41", "done", "succeeded", "2h", "-"]
    assert rows[0][:7] == ["42", "api", "dev", "42", "done", "failed", "5s"]
    assert out.splitlines()[1].endswith(reason)  # reasons are never cut

    code, out, _ = run_cli(capsys, "deployments", "--url", bridge.url, "-o", "wide")
    header, rows = table(out)
    assert header == ["ID", "BUILD", "ROUTE", "ENV", "TAG", "STATE", "VERDICT", "COMMIT", "BY", "AGE", "REASON"]
    assert [r[0] for r in rows] == [new.id, old.id] and rows[1][7] == "0123456789"

    for flags in (["--json"], ["-o", "json"]):
        code, out, _ = run_cli(capsys, "deployments", "--url", bridge.url, "--build-id", "41", *flags)
        body = json.loads(out)
        assert [item["id"] for item in body["items"]] == [old.id] and body["next_offset"] is None
    code, out, _ = run_cli(capsys, "deployments", "--url", bridge.url, "--verdict", "failed", "--env", "dev",
                           "--route", "api", "-o", "yaml")
    assert [item["id"] for item in yaml.safe_load(out)["items"]] == [new.id]


def test_limit_zero_means_all_and_n_means_n(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    for build_id in range(1, 4):
        seed(bridge.redis_url, build_id, "dev", "succeeded", time.time() - build_id)
    assert len(json.loads(run_cli(capsys, "deployments", "--url", bridge.url, "--limit", "0", "--json")[1])["items"]) \
        == 3
    assert len(json.loads(run_cli(capsys, "deployments", "--url", bridge.url, "--limit", "2", "--json")[1])["items"]) \
        == 2


@pytest.mark.parametrize("argv", [
    ["deployments", "--verdict", "faild"],
    ["deployments", "--limit", "-1"],
    ["deployments", "-o", "xml"],
    ["completion", "tcsh"],
])
def test_closed_sets_are_checked_before_any_request(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    # No bridge is running and no token is set: a request would fail differently.
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--url", "http://127.0.0.1:9"] if argv[0] != "completion" else argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "invalid choice" in err or "must be 0 (all) or more" in err


def test_deployment_shows_its_timeline(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    record = seed(bridge.redis_url, 43, "dev", "succeeded", time.time(), commit_sha="abc123",
                  timeline={"received": "2026-11-27T10:00:00.000Z", "queued": "2026-11-27T10:00:00.100Z",
                            "finished": "2026-11-27T10:00:09.000Z"})
    code, out, _ = run_cli(capsys, "deployment", record.id, "--url", bridge.url)
    assert code == 0
    assert "id:" in out and record.id in out and "verdict:" in out
    timeline = out.split("Timeline:\n", 1)[1].splitlines()
    assert timeline[0].split() == ["STEP", "AT", "AGE"]
    assert [line.split()[0] for line in timeline[1:]] == ["received", "queued", "finished"]
    assert json.loads(run_cli(capsys, "deployment", record.id, "--url", bridge.url, "-o", "json")[1])["timeline"] \
        == record.timeline
    code, _, err = run_cli(capsys, "deployment", "nope", "--url", bridge.url)
    assert (code, err) == (1, "error: GET /api/deployments/nope: HTTP 404: deployment 'nope' not found\n")


def test_holds_record_the_tokens_name_and_the_note(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "hold", "api", "prod", "--reason", "release freeze", "--by", "CAB-12",
                           "--url", bridge.url)
    assert (code, out) == (0, "held api/prod by alice: release freeze\n")
    code, out, _ = run_cli(capsys, "holds", "--url", bridge.url)
    header, rows = table(out)
    assert header == ["ROUTE", "ENV", "BY", "AGE", "REASON"]
    assert rows == [["api", "prod", "alice", "0s", "release", "freeze"]]
    (hold,) = json.loads(run_cli(capsys, "holds", "--url", bridge.url, "-o", "json")[1])["items"]
    assert (hold["by"], hold["note"]) == ("alice", "CAB-12")  # the server's identity; the client's text is a note
    assert table(run_cli(capsys, "holds", "--url", bridge.url, "-o", "wide")[1])[0] == [
        "ROUTE", "ENV", "BY", "NOTE", "SINCE", "AGE", "REASON"]

    assert run_cli(capsys, "release", "api", "prod", "--url", bridge.url)[:2] == (0, "released api/prod\n")
    assert run_cli(capsys, "release", "api", "prod", "--url", bridge.url)[:2] == (0, "api/prod was not held\n")
    assert run_cli(capsys, "holds", "--url", bridge.url)[1] == "ROUTE  ENV  BY  AGE  REASON\n"


@pytest.mark.parametrize(("route", "env", "blamed"), [
    ("nope", "dev", "no route 'nope' (routes: api)"),
    ("api", "qa", "no environment 'qa' in route 'api' (environments: dev, prod)"),
])
def test_hold_blames_what_does_not_exist(bridge: Any, capsys: pytest.CaptureFixture[str], route: str, env: str,
                                          blamed: str) -> None:
    code, _, err = run_cli(capsys, "hold", route, env, "--reason", "x", "--url", bridge.url)
    assert (code, err) == (1, f"error: PUT /api/holds/{route}/{env}: HTTP 404: {blamed}\n")


def test_promote_records_who(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    dev = seed(bridge.redis_url, 7, "dev", "failed", time.time())
    code, _, err = run_cli(capsys, "promote", "7", "--to", "prod", "--url", bridge.url)
    assert (code, err) == (1, "error: POST /api/promotions: HTTP 409: dev did not succeed for build 7 (failed); "
                              "pass force to override\n")

    code, out, _ = run_cli(capsys, "promote", "7", "--to", "prod", "--force", "--route", "api", "--by", "hotfix",
                           "--url", bridge.url)
    assert code == 0
    assert out == f"queued: deployment {deployment_id(dev.build_key, 'api', 'prod')} (from {dev.id})\n"
    with redis.Redis.from_url(bridge.redis_url) as r:
        (job_id,) = r.zrange(QUEUE, 0, -1)
        job = r.get(job_key_prefix + job_id.decode())
    assert job is not None and b"alice (hotfix)" in job  # the worker records it as details.promoted_by


def test_tokens_explicit_wrong_and_missing(bridge: Any, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BRIDGE_API__WRITE_TOKENS")
    code, _, err = run_cli(capsys, "hold", "api", "prod", "--reason", "x", "--url", bridge.url)
    assert (code, err) == (1, "error: no API token: pass --token or set BRIDGE_API__WRITE_TOKENS\n")

    code, _, err = run_cli(capsys, "hold", "api", "prod", "--reason", "x", "--url", bridge.url, "--token", READ)
    assert code == 1 and "HTTP 403: this token may only read" in err

    code, out, _ = run_cli(capsys, "hold", "api", "prod", "--reason", "x", "--url", bridge.url, "--token", WRITE)
    assert (code, out) == (0, "held api/prod by alice: x\n")
    monkeypatch.delenv("BRIDGE_API__READ_TOKENS")
    code, _, err = run_cli(capsys, "deployments", "--url", bridge.url)
    assert (code, err) == (1, "error: no API token: pass --token or set BRIDGE_API__READ_TOKENS\n")


def test_bare_tokens_still_work_and_are_unnamed(redis_url: Callable[[int], str], serve: Callable[[Any], Any],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.settings import Settings

    settings = Settings(redis_url=redis_url(DB), queue_name=QUEUE, key_prefix=PREFIX, webhook={"tokens": [HOOK]},
                        api={"write_tokens": [WRITE]})
    server = serve(create_app(settings, parse_routing(API_ROUTING)))
    code, out, _ = run_cli(capsys, "hold", "api", "dev", "--reason", "x", "--url", server.url, "--token", WRITE)
    assert (code, out) == (0, "held api/dev by unnamed-token: x\n")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_bridge_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_API__READ_TOKENS", READ)
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run_cli(capsys, "deployments", "--url", url)
    assert (code, out, err) == (1, "", f"error: cannot reach the bridge at {url}: ConnectError\n")


def test_url_without_a_scheme_means_http(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "deployments", "--url", f"127.0.0.1:{bridge.port}")
    assert code == 0 and out.startswith("BUILD ")


def test_default_url_is_the_local_port(bridge: Any, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_PORT", str(bridge.port))
    code, out, _ = run_cli(capsys, "deployments")
    assert code == 0
    assert out.startswith("BUILD ")


def test_a_closed_pipe_ends_quietly(bridge: Any) -> None:
    for build_id in range(1, 40):
        seed(bridge.redis_url, build_id, "dev", "succeeded", time.time() - build_id, reason="r" * 200)
    script = Path(sys.executable).with_name("gitops-bridge")
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; '{script}' deployments --url {bridge.url} -o json "
                                         "| head -c 10"], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert proc.stderr == "" and len(proc.stdout) == 10
    assert proc.returncode in (0, 141)


# -- version, completion, check-config --routing-only, unknown variables ---------------------------------------------

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"gitops-bridge {version('gitops-bridge')}\n"
    assert run_cli(capsys, "version")[1].startswith(f"gitops-bridge {version('gitops-bridge')} (python ")
    assert json.loads(run_cli(capsys, "version", "-o", "json")[1])["version"] == version("gitops-bridge")


def test_bash_completion_completes_commands_flags_and_values(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    script.write_text(run_cli(capsys, "completion", "bash")[1])

    def complete(*words: str) -> list[str]:
        array = " ".join(f"'{w}'" for w in ("gitops-bridge", *words))
        proc = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=({array}); COMP_CWORD={len(words)}; "
                                             '_gitops_bridge; printf "%s\\n" "${COMPREPLY[@]}"'],
                              capture_output=True, text=True, check=True)
        return proc.stdout.split()

    assert complete("dep") == ["deployments", "deployment"]
    assert complete("deployments", "--verdict", "f") == ["failed"]
    assert complete("holds", "-o", "") == ["table", "wide", "json", "yaml"]
    assert "--routing-only" in complete("check-config", "--r")


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_get_a_script(capsys: pytest.CaptureFixture[str], shell: str) -> None:
    code, out, _ = run_cli(capsys, "completion", shell)
    assert code == 0
    assert "deployments" in out and "--verdict" in out or "-l verdict" in out


def test_every_flag_has_help_and_every_command_an_example() -> None:
    from bridge.cli import parser
    from bridge.completion import commands

    for cmd in commands(parser()):
        assert cmd.help, cmd.name
        assert all(cmd.helps[flag] for flag in cmd.flags), (cmd.name, cmd.helps)
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sp in sub.choices.items():
        assert sp.epilog and sp.epilog.startswith("example:\n  ") and "gitops-bridge " + name in sp.epilog, name
        assert all(a.help for a in sp._actions if not a.option_strings), name


def test_check_config_routing_only_needs_no_settings(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # No webhook credential, no GitHub token, but pull-request routes: the full check fails, the routing one passes.
    assert run_cli(capsys, "check-config", "--config", str(EXAMPLE))[0] == 2
    code, out, err = run_cli(capsys, "check-config", "--routing-only", "--config", str(EXAMPLE))
    assert (code, err) == (0, "")
    assert out.startswith(f"{EXAMPLE}: OK — ") and "settings and secrets not checked" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    code, _, err = run_cli(capsys, "check-config", "--routing-only", "--config", str(bad))
    assert code == 2 and f"{bad}:2:1: invalid YAML" in err


def test_unknown_bridge_variables_are_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    monkeypatch.setenv("BRIDGE_ARGOCD_URL", "https://argocd.example.com")
    monkeypatch.setenv("BRIDGE_COLOUR", "blue")
    code, _, err = run_cli(capsys, "check-config", "--config", str(write_config_push_only()))
    assert code == 0
    assert ("warning: BRIDGE_ARGOCD_URL is not a gitops-bridge setting and is ignored "
            "(did you mean BRIDGE_ARGOCD__URL?)") in err
    assert "warning: BRIDGE_COLOUR is not a gitops-bridge setting and is ignored\n" in err
    assert "BRIDGE_WEBHOOK__TOKENS" not in err and "BRIDGE_SECRETS_DIR" not in err


def write_config_push_only() -> Path:
    data = example()
    for route in data["routes"]:
        for env in route["environments"]:
            env["promotion"] = "push"
    path = Path(os.environ["BRIDGE_SECRETS_DIR"]).parent / "push-only.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- serve: web + worker + embedded Redis in one process -------------------------------------------------------------

SERVE_ROUTING = """\
repositories:
  gitops: {url: "file:///nonexistent/gitops.git"}
routes:
  - name: chat
    match: {project: FabrikamFiberChat, definition: "MainRepo (1)", branches: ["refs/heads/main"]}
    environments:
      - {name: dev, repository: gitops, file: chat/dev.yaml}
"""


def build_complete(build_id: int) -> dict[str, Any]:
    """The full build.complete sample as real deliveries look."""
    body: dict[str, Any] = json.loads((EVENTS / "build.complete.2-full.json").read_text())
    body["publisherId"] = "tfs"
    body["resource"]["uri"] = f"vstfs:///Build/Build/{build_id}"
    body["resource"]["id"] = build_id
    body["resource"]["sourceVersion"] = "6e12f614c0b5e4b33d4a8f0a9c3b2d1e0f9a8b7c"
    return body


class ServeProcess:
    """`gitops-bridge serve` as a child process, its stderr in a file (for the embedded Redis URL)."""

    def __init__(self, tmp_path: Path, port: int, run: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp_path / f"serve-{run}.log"
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
        env.update({
            "BRIDGE_CONFIG": str(tmp_path / "bridge.yaml"), "BRIDGE_REDIS_DATA_DIR": str(tmp_path / "redis"),
            "BRIDGE_SECRETS_DIR": str(tmp_path / "no-secrets"), "BRIDGE_HOST": "127.0.0.1", "BRIDGE_PORT": str(port),
            "BRIDGE_WEBHOOK__TOKENS": HOOK, "BRIDGE_API__WRITE_TOKENS": WRITE, "BRIDGE_KEY_PREFIX": PREFIX,
        })
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([str(Path(sys.executable).with_name("gitops-bridge")), "serve"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        self.client = httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {WRITE}"})

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"serve not ready within {timeout}s:\n{self.log.read_text()}")

    @property
    def redis_url(self) -> str:
        found = re.search(r"embedded Redis on (redis://\S+)", self.log.read_text())
        assert found, self.log.read_text()
        return found.group(1)

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise


def wait_for(predicate: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def enqueue_deferred(url: str, payload: dict[str, Any]) -> None:
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=QUEUE_DEFAULT)
    try:
        assert await pool.enqueue_job(PROCESS_BUILD, payload, _job_id="later", _defer_by=3600) is not None
    finally:
        await pool.aclose()


@pytest.mark.slow
def test_serve_with_embedded_redis_survives_a_restart(tmp_path: Path) -> None:
    (tmp_path / "bridge.yaml").write_text(SERVE_ROUTING)
    (tmp_path / "no-secrets").mkdir(exist_ok=True)
    port = free_port()
    hook = {"X-Bridge-Token": HOOK}

    first = ServeProcess(tmp_path, port, 1)
    try:
        first.wait_ready()
        # a held environment: the worker records the deployment without touching git
        assert first.client.put("/api/holds/chat/dev", json={"reason": "freeze"}).status_code == 201
        answer = first.client.post("/webhooks/azure-devops", json=build_complete(501), headers=hook)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "queued"
        held = wait_for(lambda: [i for i in first.client.get("/api/deployments").json()["items"]
                                 if i["verdict"] == "held"])
        assert [(i["build_id"], i["environment"]) for i in held] == [(501, "dev")]
        # and a job that is still waiting in the queue when the process stops
        asyncio.run(enqueue_deferred(first.redis_url, {"note": "deferred"}))
        embedded = first.redis_url
    finally:
        code = first.stop()
    assert code == 0, first.log.read_text()
    assert "shutdown on SIGTERM" in first.log.read_text() and "SIGUSR1" not in first.log.read_text()
    with pytest.raises(redis.ConnectionError):  # SIGTERM stopped the embedded Redis too
        redis.Redis.from_url(embedded, socket_connect_timeout=1).ping()
    assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0

    second = ServeProcess(tmp_path, port, 2)
    try:
        second.wait_ready()
        items = second.client.get("/api/deployments").json()["items"]
        assert [(i["id"], i["verdict"]) for i in items] == [(held[0]["id"], "held")]
        assert [h["reason"] for h in second.client.get("/api/holds").json()["items"]] == ["freeze"]
        with redis.Redis.from_url(second.redis_url) as r:
            assert r.zscore(QUEUE_DEFAULT, "later") is not None
            assert r.exists(job_key_prefix + "later")
        # the delivery is remembered: a redelivery is a duplicate, not a second deployment
        again = second.client.post("/webhooks/azure-devops", json=build_complete(501), headers=hook)
        assert again.json()["status"] == "duplicate", again.text
    finally:
        assert second.stop() == 0, second.log.read_text()


def test_worker_runs_until_sigterm(tmp_path: Path, redis_url: Callable[[int], str]) -> None:
    """`gitops-bridge worker`: health on BRIDGE_WORKER_METRICS_PORT while it runs; SIGTERM stops it cleanly."""
    (tmp_path / "bridge.yaml").write_text(SERVE_ROUTING)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    env.update({"BRIDGE_CONFIG": str(tmp_path / "bridge.yaml"), "BRIDGE_REDIS_URL": redis_url(DB),
                "BRIDGE_SECRETS_DIR": str(tmp_path), "BRIDGE_HOST": "127.0.0.1", "BRIDGE_KEY_PREFIX": PREFIX,
                "BRIDGE_WORKER_METRICS_PORT": str(port), "BRIDGE_GIT__WORK_DIR": str(tmp_path / "repos")})
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(Path(sys.executable).with_name("gitops-bridge")), "worker"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["status"] == "ok"
            except httpx.TransportError:
                return False

        wait_for(healthy)
        assert "bridge_" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    # The signal that stopped it, not the SIGUSR1 arq's close() fakes when it does not own the handlers.
    assert "shutdown on SIGTERM" in log.read_text() and "SIGUSR1" not in log.read_text()


# -- safe local defaults ---------------------------------------------------------------------------------------------

def test_local_defaults_are_loopback_and_the_users_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bridge.settings import Settings

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    settings = Settings()
    assert settings.host == "127.0.0.1"  # the image and the chart say 0.0.0.0 explicitly
    assert settings.redis_data_dir == tmp_path / "data" / "gitops-bridge" / "redis"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().redis_data_dir == tmp_path / "home" / ".local" / "share" / "gitops-bridge" / "redis"
    monkeypatch.setenv("BRIDGE_REDIS_DATA_DIR", str(tmp_path / "mine"))
    assert Settings().redis_data_dir == tmp_path / "mine"


def test_named_tokens_are_validated(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.settings import ApiSettings

    api = ApiSettings(read_tokens="viewer:r-1,bare-token", write_tokens=["alice:w-1"])
    assert [(n, t.get_secret_value()) for n, t in api.named(write=False)] == [
        ("viewer", "r-1"), ("unnamed-token", "bare-token"), ("alice", "w-1")]
    assert [n for n, _ in api.named(write=True)] == ["alice"]
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    monkeypatch.setenv("BRIDGE_API__WRITE_TOKENS", ":secret-without-name")
    code, _, err = run_cli(capsys, "check-config", "--config", str(EXAMPLE))
    assert code == 2 and "settings: api.write_tokens: each entry is `name:token`" in err
    assert "secret-without-name" not in err


def test_routing_only_finds_the_file_through_bridge_config(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_CONFIG", str(EXAMPLE))
    code, out, _ = run_cli(capsys, "check-config", "--routing-only")
    assert code == 0 and out.startswith(f"{EXAMPLE}: OK")


def test_rollback_and_release_deploy_latest(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "rollback", "api", "dev", "--url", bridge.url)
    assert (code, err) == (1, "error: POST /api/rollbacks: HTTP 409: nothing succeeded in api/dev before what runs "
                              "there now (unknown): there is nothing to roll back to\n")
    seed(bridge.redis_url, 41, "dev", "succeeded", time.time())
    code, out, _ = run_cli(capsys, "rollback", "api", "dev", "--to", "41", "--reason", "500s", "--url", bridge.url)
    assert (code, out) == (0, "queued: rollback rollback-1-api-dev of api/dev to build 41, tag 41; the environment is "
                              "held until `gitops-bridge release api dev`\n")
    (hold,) = json.loads(run_cli(capsys, "holds", "--url", bridge.url, "-o", "json")[1])["items"]
    assert (hold["by"], hold["note"], hold["rollback"]) == ("alice", "500s", "rollback-1-api-dev")
    code, out, _ = run_cli(capsys, "release", "api", "dev", "--deploy-latest", "--url", bridge.url)
    assert (code, out) == (0, "released api/dev\nno held build to deploy\n")
