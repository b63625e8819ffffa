"""End-to-end harness: the bridge against a real bare GitOps repository, the Argo CD, Azure DevOps and GitHub fakes
over real sockets, and Redis db 7 of the shared server.

    def test_x(stack: StackFactory) -> None:
        s = stack()                                  # options: argocd_url=, deadline_seconds=, reconcile=, worker=
        response = s.post(s.build(200, "cart"))      # the ADO service hook, as Azure DevOps sends it
        record = s.wait_finished(200, "dev")         # verdict set and reported back (bounded poll)
        s.commits_since(s.initial)                   # what landed in the GitOps repository

`worker=False` serves the web app alone; tests then run workers as real processes (`s.spawn_worker(name)`).
The routing, the sample Helm layout and the event envelope are the demo's (workers/demo.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from pydantic import BaseModel, SecretStr

from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.demo import (
    APPS,
    GITHUB_REPO,
    GITHUB_SECRET,
    GITHUB_TOKEN,
    ORG,
    PAT,
    PROJECT,
    WEBHOOK_TOKEN,
    BridgeThread,
    build_complete,
    make_gitops_repo,
    routing_document,
)
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake
from workers.fakes.azure_devops import FakeAzureDevOps
from workers.fakes.github import GitHubFake

DB = 7
READ_TOKEN = "e2e-read-token"  # noqa: S105 - test credentials
WRITE_TOKEN = "e2e-write-token"  # noqa: S105
KEY_PREFIX = "e2e"
QUEUE = "e2e:queue"
DEFINITIONS = {"shop": 11, "cart": 12, "search": 13}
WAIT_SECONDS = 25.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def source_sha(build_id: int) -> str:
    return hashlib.sha1(f"source-{build_id}".encode()).hexdigest()


def settings_env(settings: Settings) -> dict[str, str]:
    """The `BRIDGE_*` environment that makes `load_settings()` in another process equal `settings`."""
    out: dict[str, str] = {}

    def plain(value: Any) -> Any:
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def put(name: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, list):
            out[f"BRIDGE_{name.upper()}"] = json.dumps([str(plain(v)) for v in value])
        else:
            out[f"BRIDGE_{name.upper()}"] = str(plain(value))

    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, BaseModel):
            for sub in type(value).model_fields:
                put(f"{name}__{sub}", getattr(value, sub))
        else:
            put(name, value)
    return out


@dataclass
class Options:
    argocd_url: str | None = None   # None: the fake; anything else replaces it (e.g. a closed port)
    deadline_seconds: float = 30.0  # Argo CD deadline after push/merge
    reconcile: bool = True          # start the fake Argo CD controller
    worker: bool = True             # web + worker in one loop (like `serve`); False: the web app alone
    environments: dict[str, dict[str, Any]] | None = None  # "route/env" → extra routing fields


class WorkerProcess:
    """`gitops-bridge worker` (or, with `role="web"`, `gitops-bridge web`) as a real process, configured only through
    its environment; started once its `/healthz` answers."""

    def __init__(self, env: dict[str, str], log_path: Path, redis_url: str, role: str = "worker") -> None:
        self.env = env
        self.log_path = log_path
        self.redis_url = redis_url
        self.role = role
        self.port = int(env["BRIDGE_WORKER_METRICS_PORT" if role == "worker" else "BRIDGE_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, may_crash: bool = False) -> WorkerProcess:
        """Start and wait for `/healthz`. `may_crash`: a worker armed with crash points may reach one (and SIGKILL
        itself) before its health server answers, since it takes a queued job at once; the caller handles that."""
        script = Path(sys.executable).with_name("gitops-bridge")
        command = [str(script), self.role] if script.exists() else [sys.executable, "-m", "bridge.cli", self.role]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=Path(__file__).resolve().parents[2])
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                if may_crash and self.process.returncode == -9:
                    return self
                raise AssertionError(f"{self.role} exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.role} not healthy within {timeout}s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def kill_between_jobs(self, lease_keys: list[str], timeout: float = 15.0) -> None:
        """SIGKILL the worker at a moment when it runs no job and holds no watcher lease (checked while it is
        stopped with SIGSTOP, so the check cannot race the worker)."""
        assert self.process is not None
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                os.kill(self.process.pid, signal.SIGSTOP)
                busy = [k for k in client.scan_iter(match="arq:in-progress:*")
                        if not k.startswith(b"arq:in-progress:sweep_deployments:")]  # cron markers outlive the job
                busy += [k for k in lease_keys if client.exists(k)]
                if not busy:
                    os.kill(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
                    return
                os.kill(self.process.pid, signal.SIGCONT)
                if time.monotonic() > deadline:
                    raise AssertionError(f"the worker never went idle; busy with {busy}")
                time.sleep(0.03)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class Stack:
    def __init__(self, root: Path, redis_url: str, options: Options, serve: Callable[[Any], Any]) -> None:
        self.root, self.redis_url, self.options, self._serve = root, redis_url, options, serve
        self.bare = make_gitops_repo(root)
        self.initial = self.git("rev-parse", "main")
        self.argocd = ArgoCDFake(self.bare, token=FAKE_TOKEN)
        for app, envs in APPS.items():
            for env in envs:
                self.argocd.add_app(f"{app}-{env}", f"helm/{app}/values-{env}.yaml", sync_steps=1)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ado = FakeAzureDevOps(pat=PAT)
        self.github = GitHubFake({GITHUB_REPO: self.bare}, token=GITHUB_TOKEN, prefix="/api/v3",
                                 webhook_url=f"{self.url}/webhooks/github", webhook_secret=GITHUB_SECRET)
        self.bridge: BridgeThread | None = None
        self.workers: list[WorkerProcess] = []
        self._fakes: list[Callable[[], None]] = []
        self.http = httpx.Client(timeout=10)
        self.document = routing_document(self.bare)
        for where, extra in (options.environments or {}).items():
            route, _, name = where.partition("/")
            for r in self.document["routes"]:
                for e in r["environments"]:
                    if r["name"] == route and e["name"] == name:
                        e.update(extra)
        self.routing = parse_routing(self.document, "e2e routing")
        (root / "bridge.yaml").write_text(json.dumps(self.document, indent=2))

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> Stack:
        self.ado.start()
        self._fakes.append(self.ado.stop)
        self.github.start()
        self._fakes.append(self.github.stop)
        self.argocd.start()
        self._fakes.append(self.argocd.stop)
        if self.options.reconcile:
            self.start_argocd_controller()
        self.org_url = self.ado.org_url(ORG)
        self.settings = self.make_settings()
        if self.options.worker:
            for attempt in range(3):
                self.bridge = BridgeThread(self.settings, self.routing, self.redis_url, self.port)
                try:
                    self.bridge.start()
                    break
                except RuntimeError as exc:  # the free port was taken before the bridge bound it: take another
                    if attempt == 2 or "did not start" not in str(exc):
                        raise
                    self.bridge.loop.close()
                    self.port = free_port()
                    self.url = f"http://127.0.0.1:{self.port}"
                    self.github.webhook_url = f"{self.url}/webhooks/github"
                    self.settings = self.settings.model_copy(update={"port": self.port})
        else:
            from bridge.app import create_app

            server = self._serve(create_app(self.settings, self.routing))
            self.url = server.url
            self.github.webhook_url = f"{self.url}/webhooks/github"
        return self

    def start_argocd_controller(self) -> None:
        self.argocd.start_reconciler(period=0.1)

    def stop(self) -> None:
        """The bridge and the workers first, then the fakes (in parallel: each uvicorn takes a tick to exit)."""
        for worker in self.workers:
            worker.stop()
        if self.bridge is not None and self.bridge.thread.is_alive():
            self.bridge.stop()
            if not self.bridge.thread.is_alive():
                self.bridge.loop.close()
        threads = [threading.Thread(target=stop) for stop in self._fakes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=15)
        self.http.close()

    def make_settings(self) -> Settings:
        return Settings(
            config=self.root / "bridge.yaml", redis_url=self.redis_url, queue_name=QUEUE, key_prefix=KEY_PREFIX,
            host="127.0.0.1", port=self.port, log_level="WARNING", allow_insecure_http=True,
            webhook={"tokens": [WEBHOOK_TOKEN]},
            api={"read_tokens": [READ_TOKEN], "write_tokens": [f"release-bot:{WRITE_TOKEN}"]},
            git={"work_dir": self.root / "clones", "author_name": "gitops-bridge",
                 "author_email": "bridge@contoso.example", "timeout_seconds": 30},
            github={"token": GITHUB_TOKEN, "api_url": self.github.api_url, "pr_poll_seconds": 1.0,
                    "webhook_secret": GITHUB_SECRET, "labels": ["gitops-bridge"]},
            argocd={"url": self.options.argocd_url or self.argocd.url, "token": FAKE_TOKEN, "poll_seconds": 0.2,
                    "deadline_seconds": self.options.deadline_seconds, "degraded_grace_seconds": 0.5,
                    "refresh_timeout_seconds": 1.0, "request_timeout_seconds": 2.0},
            azure_devops={"token": PAT, "organization_url": self.org_url, "reconcile_seconds": 0},
        )

    def spawn_worker(self, name: str) -> WorkerProcess:
        """A `gitops-bridge worker` process with its own clone directory and metrics port."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(settings_env(self.settings))
        env.update({"BRIDGE_WORKER_METRICS_PORT": str(free_port()), "BRIDGE_GIT__WORK_DIR": str(self.root / name),
                    "BRIDGE_SECRETS_DIR": str(self.root / "no-secrets"), "BRIDGE_LOG_LEVEL": "INFO"})
        worker = WorkerProcess(env, self.root / f"{name}.log", self.redis_url)
        self.workers.append(worker)
        return worker.start()

    # -- Azure DevOps side -----------------------------------------------------------------------------------------

    def build(self, build_id: int, app: str, **fields: Any) -> dict[str, Any]:
        """Register a finished build in the Azure DevOps fake (a TfsGit source repository) and return its JSON."""
        return self.ado.add_build(ORG, PROJECT, {
            "id": build_id, "buildNumber": f"2026.11.{build_id}", "result": "succeeded",
            "definition": {"id": DEFINITIONS[app], "name": f"{app}-ci"},
            "sourceBranch": "refs/heads/main", "sourceVersion": source_sha(build_id),
            "repository": {"id": f"{app}-repo-id", "type": "TfsGit", "name": app},
            **fields,
        })

    def post(self, build: dict[str, Any]) -> httpx.Response:
        return self.post_event(build_complete(build, self.org_url))

    def post_event(self, event: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"{self.url}/webhooks/azure-devops", json=event,
                              headers={"X-Bridge-Token": WEBHOOK_TOKEN})

    def tags(self, build_id: int) -> list[str]:
        return self.ado.tags(build_id)

    def property_patches(self, build_id: int, env: str, status: str) -> int:
        """How many property PATCHes set `gitops-bridge.<env>.status` to `status` for the build."""
        n = 0
        for r in self.ado.requests_to("PATCH", f"/_apis/build/builds/{build_id}/properties"):
            for op in r["body"] or []:
                if op.get("path") == f"/gitops-bridge.{env}.status" and op.get("value") == status:
                    n += 1
        return n

    def tag_patches(self, build_id: int, tag: str) -> int:
        """How many tag PATCHes added `tag` to the build."""
        return sum(tag in (r["body"] or {}).get("tagsToAdd", [])
                   for r in self.ado.requests_to("PATCH", f"/_apis/build/builds/{build_id}/tags"))

    def commit_states(self, build: dict[str, Any], env: str) -> list[str]:
        """States of the `deploy/<env>` commit statuses on the build's source commit, oldest first."""
        return [s["state"] for s in self.ado.statuses(build["repository"]["id"], build["sourceVersion"])
                if s["context"]["name"] == f"deploy/{env}"]

    # -- the bridge's API ------------------------------------------------------------------------------------------

    def api(self, method: str, path: str, *, token: str = WRITE_TOKEN, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"},
                                 **kwargs)

    def records(self, build_id: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": 500}
        if build_id is not None:
            params["build_id"] = build_id
        response = self.api("GET", "/api/deployments", token=READ_TOKEN, params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def record(self, build_id: int, env: str) -> dict[str, Any] | None:
        return next((r for r in self.records(build_id) if r["environment"] == env), None)

    def describe(self) -> str:
        try:
            rows = [f"  #{r['build_id']} {r['route']}/{r['environment']}: state={r['state']} verdict={r['verdict']} "
                    f"reason={r['reason']!r} timeline={sorted(r['timeline'])}" for r in self.records()]
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            rows = [f"  (records unavailable: {exc!r})"]
        for worker in self.workers:
            rows.append(f"  worker log {worker.log_path.name}:\n{worker.output()}")
        return "\n".join(rows) or "  (no deployment records)"

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
        """Poll `probe` until it returns something truthy; fail with what was awaited and the records."""
        deadline = time.monotonic() + timeout
        while True:
            if self.bridge is not None and self.bridge.error is not None:
                raise AssertionError(f"the bridge crashed: {self.bridge.error!r}")
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}; deployments:\n"
                                     f"{self.describe()}")
            time.sleep(0.1)

    def wait_record(self, build_id: int, env: str, what: str, check: Callable[[dict[str, Any]], bool],
                    timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            record = self.record(build_id, env)
            return record if record is not None and check(record) else None

        return self.wait(f"#{build_id} {env}: {what}", probe, timeout)

    def wait_finished(self, build_id: int, env: str, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        """The deployment has a verdict and the verdict was reported back to the build."""
        return self.wait_record(build_id, env, "a verdict, reported",
                                lambda r: bool(r["verdict"]) and "reported" in r["timeline"], timeout)

    # -- the GitOps repository ------------------------------------------------------------------------------------

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(self.bare), *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout.strip()

    def head(self) -> str:
        return self.git("rev-parse", "main")

    def commits_since(self, base: str, ref: str = "main") -> list[tuple[str, str]]:
        """(sha, full message) of the commits on `ref` after `base`, newest first."""
        out = self.git("log", "--topo-order", "--format=%H%x1f%B%x1e", f"{base}..{ref}")
        return [(sha, body.strip()) for sha, _, body in
                (entry.strip().partition("\x1f") for entry in out.split("\x1e") if entry.strip())]

    def values_tag(self, app: str, env: str, ref: str = "main") -> str:
        text = self.git("show", f"{ref}:helm/{app}/values-{env}.yaml")
        match = re.search(r'^  tag: "([^"]*)"', text, re.MULTILINE)
        assert match, text
        return match.group(1)

    def push_human_commit(self, path: str, content: str, message: str) -> str:
        """A commit by someone else, pushed straight to main (a plumbing commit: no work tree needed)."""
        env = {**os.environ, "GIT_AUTHOR_NAME": "A Human", "GIT_AUTHOR_EMAIL": "human@contoso.example",
               "GIT_COMMITTER_NAME": "A Human", "GIT_COMMITTER_EMAIL": "human@contoso.example",
               "GIT_INDEX_FILE": str(self.root / "human.index")}
        run = {"check": True, "capture_output": True, "text": True, "env": env, "timeout": 30}
        git = ["git", "--git-dir", str(self.bare)]
        parent = self.head()
        subprocess.run([*git, "read-tree", parent], **run)  # type: ignore[call-overload]
        blob = subprocess.run([*git, "hash-object", "-w", "--stdin"], input=content,
                              **run).stdout.strip()  # type: ignore[call-overload]
        subprocess.run([*git, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"],
                       **run)  # type: ignore[call-overload]
        tree = subprocess.run([*git, "write-tree"], **run).stdout.strip()  # type: ignore[call-overload]
        sha: str = subprocess.run([*git, "commit-tree", tree, "-p", parent, "-m", message],
                                  **run).stdout.strip()  # type: ignore[call-overload]
        subprocess.run([*git, "update-ref", "refs/heads/main", sha, parent], **run)  # type: ignore[call-overload]
        return sha

    # -- GitHub side -----------------------------------------------------------------------------------------------

    def open_pull(self, number: int | None = None) -> Any:
        pulls = [p for p in self.github.pulls(GITHUB_REPO) if p.state == "open"]
        if number is not None:
            pulls = [p for p in pulls if p.number == number]
        return pulls[0] if pulls else None


StackFactory = Callable[..., Stack]


@pytest.fixture
def stack(tmp_path: Path, redis_url: Callable[[int], str], serve: Callable[[Any], Any]) -> Iterator[StackFactory]:
    """`stack(**Options)` → a started Stack on Redis db 7 (flushed); everything is stopped after the test."""
    started: list[Stack] = []

    def make(**options: Any) -> Stack:
        assert not started, "one stack per test (they share Redis db 7)"
        s = Stack(tmp_path, redis_url(DB), Options(**options), serve)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.stop()


def run_state_changed(s: Stack, build: dict[str, Any]) -> dict[str, Any]:
    """The YAML pipelines' `ms.vss-pipelines.run-state-changed-event`: no branch, no commit, no project name."""
    project_id, run_id, pipeline = build["project"]["id"], build["id"], build["definition"]
    base = f"{s.org_url}{project_id}"
    return {
        "subscriptionId": str(uuid.uuid4()), "notificationId": run_id, "id": str(uuid.uuid4()),
        "eventType": "ms.vss-pipelines.run-state-changed-event", "publisherId": "pipelines",
        "message": {"text": f"Run {run_id} succeeded."},
        "resource": {"run": {
            "_links": {"self": {"href": f"{base}/_apis/Pipelines/{pipeline['id']}/runs/{run_id}"},
                       "web": {"href": f"{base}/_build/results?buildId={run_id}"}},
            "pipeline": {"id": pipeline["id"], "name": pipeline["name"]},
            "state": "completed", "result": "succeeded", "createdDate": build["queueTime"],
            "finishedDate": build["finishTime"], "url": f"{base}/_apis/Pipelines/{pipeline['id']}/runs/{run_id}",
        }},
        "resourceVersion": "5.1-preview.1",
        "resourceContainers": {"collection": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, s.org_url)),
                                              "baseUrl": s.org_url},
                               "project": {"id": project_id, "baseUrl": s.org_url}},
        "createdDate": build["finishTime"],
    }
