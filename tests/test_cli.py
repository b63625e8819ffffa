"""The `gitops-bridge` command: check-config (output, errors naming file/route/field, exit 2), web/worker refusing
to start, the API commands against a running bridge (db 8), and `serve` with its embedded, append-only Redis."""

from __future__ import annotations

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
    (None, "cannot read routing file"),
    ("routes: [\n", "invalid YAML"),
    ("- just\n- a list\n", "(top level): must be a mapping"),
])
def test_unreadable_routing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], content: str | None, message: str) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__TOKENS", HOOK)
    path = tmp_path / "bridge.yaml"
    if content is not None:
        path.write_text(content)
    code, _, err = run_cli(capsys, "check-config", "--config", str(path))
    assert code == 2
    assert f"{path}: " in err and message in err


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
                        api={"read_tokens": [READ], "write_tokens": [WRITE]})
    server = serve(create_app(settings, parse_routing(API_ROUTING)))
    monkeypatch.setenv("BRIDGE_API__READ_TOKENS", READ)
    monkeypatch.setenv("BRIDGE_API__WRITE_TOKENS", WRITE)
    server.redis_url = url
    return server


def test_deployments_table_and_json(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    old = seed(bridge.redis_url, 41, "dev", "succeeded", now - 10, commit_sha="0123456789abcdef" * 2 + "01234567")
    new = seed(bridge.redis_url, 42, "dev", "failed", now - 5, reason="values file missing: " + "x" * 80)
    code, out, _ = run_cli(capsys, "deployments", "--url", bridge.url)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "BUILD_ID", "ROUTE", "ENVIRONMENT", "TAG", "STATE", "VERDICT", "COMMIT",
                              "REASON"]
    assert [r.split()[0] for r in rows] == [new.id, old.id]
    assert rows[1].split()[:8] == [old.id, "41", "api", "dev", "41", "done", "succeeded", "0123456789"]
    assert rows[0].rstrip().endswith("x...") and len(rows[0].split("values file missing: ")[1].rstrip()) == 60 - 21
    assert rows[0].split()[7] == "-"  # no commit

    code, out, _ = run_cli(capsys, "deployments", "--url", bridge.url, "--build-id", "41", "--json")
    assert code == 0
    body = json.loads(out)
    assert [item["id"] for item in body["items"]] == [old.id]
    assert body["next_offset"] is None

    code, out, _ = run_cli(capsys, "deployments", "--url", bridge.url, "--verdict", "failed", "--env", "dev",
                           "--route", "api", "--json")
    assert [item["id"] for item in json.loads(out)["items"]] == [new.id]


def test_default_url_is_the_local_port(bridge: Any, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BRIDGE_PORT", str(bridge.port))
    code, out, _ = run_cli(capsys, "deployments")
    assert code == 0
    assert out.startswith("ID ")


def test_hold_and_release(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "hold", "api", "prod", "--reason", "release freeze", "--url", bridge.url)
    assert (code, out) == (0, "held api/prod: release freeze\n")
    holds = httpx.get(f"{bridge.url}/api/holds", headers={"Authorization": f"Bearer {READ}"}).json()["items"]
    assert [(h["route"], h["environment"], h["by"]) for h in holds] == [("api", "prod", "cli")]

    assert run_cli(capsys, "release", "api", "prod", "--url", bridge.url)[:2] == (0, "released api/prod\n")
    assert run_cli(capsys, "release", "api", "prod", "--url", bridge.url)[:2] == (0, "api/prod was not held\n")

    with pytest.raises(SystemExit) as exc:
        main(["hold", "api", "qa", "--reason", "x", "--url", bridge.url])
    assert str(exc.value.code) == "PUT /api/holds/api/qa: HTTP 404: no environment 'qa' in route 'api'"


def test_promote(bridge: Any, capsys: pytest.CaptureFixture[str]) -> None:
    dev = seed(bridge.redis_url, 7, "dev", "failed", time.time())
    with pytest.raises(SystemExit) as exc:
        main(["promote", "7", "--to", "prod", "--url", bridge.url])
    assert str(exc.value.code) == ("POST /api/promotions: HTTP 409: dev did not succeed for build 7 (failed); "
                                   "pass force to override")

    code, out, _ = run_cli(capsys, "promote", "7", "--to", "prod", "--force", "--route", "api", "--url", bridge.url)
    assert code == 0
    assert out == f"queued: deployment {deployment_id(dev.build_key, 'api', 'prod')} (from {dev.id})\n"
    with redis.Redis.from_url(bridge.redis_url) as r:
        assert r.zcard(QUEUE) == 1


def test_tokens_explicit_wrong_and_missing(bridge: Any, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BRIDGE_API__WRITE_TOKENS")
    with pytest.raises(SystemExit) as exc:  # the read token is not used for changes
        main(["hold", "api", "prod", "--reason", "x", "--url", bridge.url])
    assert str(exc.value.code) == "no API token: pass --token or set BRIDGE_API__WRITE_TOKENS"

    with pytest.raises(SystemExit) as exc:
        main(["hold", "api", "prod", "--reason", "x", "--url", bridge.url, "--token", READ])
    assert "HTTP 403: this token may only read" in str(exc.value.code)

    assert run_cli(capsys, "hold", "api", "prod", "--reason", "x", "--url", bridge.url, "--token", WRITE)[0] == 0
    monkeypatch.delenv("BRIDGE_API__READ_TOKENS")
    with pytest.raises(SystemExit) as exc:
        main(["deployments", "--url", bridge.url])
    assert str(exc.value.code) == "no API token: pass --token or set BRIDGE_API__READ_TOKENS"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_API__READ_TOKENS", READ)
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as exc:
        main(["deployments", "--url", url])
    assert str(exc.value.code) == f"cannot reach the bridge at {url}: ConnectError"


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
