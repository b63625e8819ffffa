"""`gitops-bridge demo`: the whole flow on one machine, with no external service.

An embedded Redis, a bare GitOps repository with a sample Helm app, the Argo CD, Azure DevOps and GitHub fakes the
tests use, and the bridge itself (web + worker, as `serve` runs them). Then a realistic sequence of builds:

1. shop #101: a normal dev deployment; dev succeeds, so staging (`after: dev`) opens a pull request, which the demo
   merges like a reviewer would, and staging is verified too.
2. cart #201 and #202 finish at the same moment: one writer, coalesced, the newer tag wins.
3. cart #204, then #203 finishing last: the older build is `superseded`, never written.
4. search #300 deploys; #301's pipeline deploys through a gated stage (an agentless `InvokeRESTAPI@1` task calling
   `POST /webhooks/azure-devops/gate`). Its rollout degrades in Argo CD, so the deployment `failed`: the stage's log
   shows why, live, and `TaskCompleted` `failed` turns the stage (and the run) red. With `on_failure: rollback`, the
   bridge rolls search back to #300 on its own, verified healthy, and holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bridge.embedded_redis import EmbeddedRedis
from bridge.output import format_table
from bridge.routing import parse_routing
from bridge.serve import serve
from bridge.settings import Settings
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake
from workers.fakes.azure_devops import FakeAzureDevOps
from workers.fakes.github import GitHubFake
from workers.report import VERDICT_TAGS

ORG, PROJECT = "contoso", "Storefront"
GITHUB_REPO = "contoso/gitops"
WEBHOOK_TOKEN = "demo-webhook-token"  # noqa: S105 - a demo credential, printed on purpose
API_TOKEN = "demo-api-token"  # noqa: S105
PAT = "demo-pat"  # noqa: S105
GITHUB_TOKEN = "demo-github-token"  # noqa: S105
GITHUB_SECRET = "demo-github-webhook-secret"  # noqa: S105

VALUES = """\
# Values for {app} in {env}.
# gitops-bridge edits only the image tag below; everything else stays byte for byte.
replicaCount: {replicas}

image:
  repository: contoso.azurecr.io/{app}   # pushed by the Azure DevOps pipeline
  tag: "{tag}"
  pullPolicy: IfNotPresent

resources:
  limits: {{cpu: 500m, memory: 256Mi}}   # flow style survives too

ingress:
  enabled: {ingress}
"""

CHART = """\
apiVersion: v2
name: {app}
version: 1.0.0
"""

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{{{ .Chart.Name }}}}
spec:
  replicas: {{{{ .Values.replicaCount }}}}
  template:
    spec:
      containers:
        - name: app
          image: "{{{{ .Values.image.repository }}}}:{{{{ .Values.image.tag }}}}"
"""

BUILDS = (101, 201, 202, 203, 204, 300, 301)
EXPLORE_BUILD = 205  # the build the --keep-running hints send
APPS = {"shop": ("dev", "staging", "prod"), "cart": ("dev", "staging", "prod"), "search": ("dev", "staging", "prod")}


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Platform Team", "GIT_AUTHOR_EMAIL": "platform@contoso.example",
           "GIT_COMMITTER_NAME": "Platform Team", "GIT_COMMITTER_EMAIL": "platform@contoso.example"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_gitops_repo(root: Path) -> Path:
    """A bare repository with a Helm chart and values-dev/staging/prod.yaml per app."""
    bare = root / "gitops.git"
    work = root / "seed"
    _git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    _git(root, "init", "--quiet", "--initial-branch=main", str(work))
    for app, envs in APPS.items():
        chart = work / "helm" / app
        (chart / "templates").mkdir(parents=True)
        (chart / "Chart.yaml").write_text(CHART.format(app=app))
        (chart / "templates" / "deployment.yaml").write_text(DEPLOYMENT)
        for env in envs:
            (chart / f"values-{env}.yaml").write_text(VALUES.format(
                app=app, env=env, tag="100", replicas=3 if env == "prod" else 1,
                ingress="true" if env != "dev" else "false"))
    _git(work, "add", "-A")
    _git(work, "commit", "--quiet", "-m", "Initial GitOps layout")
    _git(work, "push", "--quiet", str(bare), "main")
    shutil.rmtree(work)
    return bare


def routing_document(bare: Path) -> dict[str, Any]:
    def env(app: str, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "repository": "gitops", "file": f"helm/{app}/values-{name}.yaml", "keys": ["image.tag"],
                "argocd": {"app": f"{app}-{name}"}, **extra}

    return {
        "repositories": {"gitops": {"url": str(bare), "branch": "main", "github": GITHUB_REPO}},
        "routes": [
            {"name": "shop", "match": {"project": PROJECT, "definition": "shop-ci", "branches": ["refs/heads/main"]},
             "environments": [env("shop", "dev"), env("shop", "staging", promotion="pull-request", after="dev")]},
            {"name": "cart", "match": {"project": PROJECT, "definition": "cart-ci", "branches": ["refs/heads/main"]},
             "environments": [env("cart", "dev")]},
            {"name": "search", "match": {"project": PROJECT, "definition": "search-ci"},
             "environments": [env("search", "dev", degraded_grace_seconds=1)]},
        ],
    }


def build_complete(build: dict[str, Any], org_url: str) -> dict[str, Any]:
    """The service-hook envelope Azure DevOps posts for a finished build (resourceVersion 2.0)."""
    return {
        "subscriptionId": str(uuid.uuid4()), "notificationId": build["id"], "id": str(uuid.uuid4()),
        "eventType": "build.complete", "publisherId": "tfs",
        "message": {"text": f"Build {build['buildNumber']} succeeded"},
        "resource": build, "resourceVersion": "2.0",
        "resourceContainers": {"collection": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, org_url)), "baseUrl": org_url},
                               "project": {"id": build["project"]["id"], "baseUrl": org_url}},
        "createdDate": build["finishTime"],
    }


def task_instance_id(plan_id: str, stage: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{plan_id}:{stage}:task"))


def gate_headers(org_url: str, project_id: str, plan_id: str, token: str, stage: str, *, hub: str = "build",
                 job_id: str | None = None) -> dict[str, str]:
    """The headers `InvokeRESTAPI@1` adds in callback mode (its defaults) for one stage of a run; the job, timeline
    and task ids are derived from the plan and the stage, as stable as Azure DevOps' own."""
    return {"PlanUrl": org_url, "ProjectId": project_id, "HubName": hub, "PlanId": plan_id,
            "JobId": job_id or str(uuid.uuid5(uuid.NAMESPACE_OID, f"{plan_id}:{stage}")),
            "TimelineId": str(uuid.uuid5(uuid.NAMESPACE_OID, plan_id)),
            "TaskInstanceId": task_instance_id(plan_id, stage), "AuthToken": token}


class BridgeThread:
    """The bridge (web + worker in one event loop, like `gitops-bridge serve`) in a background thread."""

    def __init__(self, settings: Settings, routing: Any, redis_url: str, port: int) -> None:
        self.settings, self.routing, self.redis_url, self.port = settings, routing, redis_url, port
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Future[None] | None = None
        self.thread = threading.Thread(target=self._run, name="bridge", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = asyncio.ensure_future(serve(self.settings, self.routing, self.redis_url, host="127.0.0.1",
                                                port=self.port), loop=self.loop)
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self._drain()

    def _drain(self) -> None:
        """A failed start (uvicorn exits with SystemExit when its port is taken) stops the loop with the worker's
        tasks still pending: cancel and finish them, so none is left half-run when the loop goes away."""
        pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def start(self, timeout: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"the bridge did not start: {self.error}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the bridge did not become ready")

    def stop(self) -> None:
        if self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=10)


class Progress:
    """Prints each deployment's state changes as the bridge's API reports them."""

    def __init__(self, api: str, out: Callable[[str], None]) -> None:
        self.api, self.out = api, out
        self.seen: dict[str, tuple[str, str | None]] = {}
        self.t0 = time.monotonic()

    def items(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.api}/api/deployments", params={"limit": 200},
                             headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5)
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def poll(self) -> list[dict[str, Any]]:
        items = self.items()
        for item in sorted(items, key=lambda i: i["created"]):
            now = (item["state"], item["verdict"])
            before = self.seen.get(item["id"])
            self.seen[item["id"]] = now
            if before == now or (before and item["verdict"] and before[1] == item["verdict"]):
                continue  # nothing new (reporting → done keeps the verdict printed already)
            what = f"#{item['build_id']} {item['route']}/{item['environment']}"
            detail = item["state"]
            if item["verdict"]:
                detail = f"{item['verdict'].upper()}: {item['reason']}"
            elif item["state"] == "awaiting-merge" and item.get("pr_url"):
                detail = f"awaiting-merge ({item['pr_url']})"
            elif item["state"] == "verifying" and item.get("commit_sha"):
                detail = f"verifying commit {item['commit_sha'][:10]} in Argo CD"
            self.out(f"  [{time.monotonic() - self.t0:5.1f}s] {what:<22} {detail}")
        return items


def run_demo(*, keep_running: bool = False, port: int = 0, out: Callable[[str], None] = print,
             ado: FakeAzureDevOps | None = None) -> int:
    """Run the scenario; 0 when every deployment ended with the verdict the scenario expects and every build's tags
    in Azure DevOps say the same. `ado`: the Azure DevOps fake to use (tests read its tags afterwards)."""
    with _stop_on_signals():
        return _run(keep_running=keep_running, port=port, out=out, ado=ado or FakeAzureDevOps(pat=PAT))


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT end the demo through its cleanup (fakes, bridge, embedded Redis), even when the shell
    started it in the background with SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(*, keep_running: bool, port: int, out: Callable[[str], None], ado: FakeAzureDevOps) -> int:
    root = Path(tempfile.mkdtemp(prefix="gitops-bridge-demo-"))
    out(f"gitops-bridge demo — working directory {root}")
    bare = make_gitops_repo(root)
    argocd = ArgoCDFake(bare, token=FAKE_TOKEN)
    for app, envs in APPS.items():
        for env in envs:
            argocd.add_app(f"{app}-{env}", f"helm/{app}/values-{env}.yaml", sync_steps=1)
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    bridge_url = f"http://127.0.0.1:{port}"
    github = GitHubFake({GITHUB_REPO: bare}, token=GITHUB_TOKEN, prefix="/api/v3",
                        webhook_url=f"{bridge_url}/webhooks/github", webhook_secret=GITHUB_SECRET)
    redis = EmbeddedRedis(root / "redis")
    started: list[Any] = []
    try:
        for thing in (redis, ado, github):
            thing.start()
            started.append(thing)
        argocd.start()
        started.append(argocd)
        argocd.start_reconciler(period=0.25)
        org_url = ado.org_url(ORG)
        document = routing_document(bare)
        document["routes"][2]["environments"][0]["on_failure"] = "rollback"  # search/dev: step 4
        routing = parse_routing(document, "demo routing")
        (root / "bridge.yaml").write_text(json.dumps(document, indent=2))
        # model_validate, not the constructor: the demo ignores BRIDGE_* variables of the surrounding shell.
        settings = Settings.model_validate({
            "config": root / "bridge.yaml", "redis_url": redis.url, "queue_name": "demo:queue", "key_prefix": "demo",
            "port": port, "log_level": "WARNING", "allow_insecure_http": True,  # the fakes speak http://
            "webhook": {"tokens": [WEBHOOK_TOKEN]}, "api": {"write_tokens": [f"demo-operator:{API_TOKEN}"]},
            "git": {"work_dir": root / "clones", "author_name": "gitops-bridge",
                    "author_email": "bridge@contoso.example"},
            "github": {"token": GITHUB_TOKEN, "api_url": github.api_url, "pr_poll_seconds": 1.0,
                       "webhook_secret": GITHUB_SECRET, "labels": ["gitops-bridge", "demo"]},
            "argocd": {"url": argocd.url, "token": FAKE_TOKEN, "poll_seconds": 0.5, "deadline_seconds": 30,
                       "degraded_grace_seconds": 1, "refresh_timeout_seconds": 2},
            "azure_devops": {"token": PAT, "organization_url": org_url, "reconcile_seconds": 0},
            "gate": {"poll_seconds": 0.5},
        })
        from bridge.logs import configure_logging

        configure_logging(settings)
        bridge = BridgeThread(settings, routing, redis.url, port)
        bridge.start()
        started.append(bridge)
        out(f"bridge up on {bridge_url}; Argo CD fake {argocd.url}; Azure DevOps fake {org_url}; "
            f"GitHub fake {github.api_url}\n")
        scenario = Scenario(ado, github, argocd, bridge_url, org_url, out)
        code = scenario.run()
        if not keep_running:
            out("\nThe bridge and the fakes stop now; `gitops-bridge demo --keep-running` leaves them up to explore.")
        else:
            out(explore_hints(scenario, root, bridge_url))
            try:
                threading.Event().wait()  # until SIGINT/SIGTERM (see _stop_on_signals)
            except KeyboardInterrupt:
                pass
        return code
    finally:
        for thing in reversed(started):
            if isinstance(thing, ArgoCDFake):
                thing.stop_reconciler()
            thing.stop()
        if not keep_running:
            shutil.rmtree(root, ignore_errors=True)


def tag_contradictions(items: list[dict[str, Any]], tags: dict[int, list[str]]) -> list[str]:
    """Builds whose Azure DevOps tags differ from their records' verdicts (exactly one verdict tag per environment)."""
    found = []
    for build_id, build_tags in tags.items():
        records = [i for i in items if i["build_id"] == build_id]
        want = sorted({VERDICT_TAGS[i["verdict"]].format(env=i["environment"]) if i["verdict"]
                       else f"deploying-{i['environment']}" for i in records} | {
            f"rolled-back-{i['environment']}" for i in items  # a rollback also marks the build it undid
            if i.get("kind") == "rollback" and i["verdict"] and i.get("commit_sha")
            and ((i.get("details") or {}).get("rollback_of") or {}).get("build_id") == build_id})
        if sorted(build_tags) != want:
            found.append(f"#{build_id} shows {', '.join(sorted(build_tags)) or 'nothing'}, "
                         f"its verdicts say {', '.join(want) or 'nothing'}")
    return found


def _command() -> str:
    """How to call this gitops-bridge as pasted: the script next to this Python (a venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("gitops-bridge")
    if beside.exists():
        return str(beside) if shutil.which("gitops-bridge") != str(beside) else "gitops-bridge"
    return "gitops-bridge" if shutil.which("gitops-bridge") else f"{sys.executable} -m bridge.cli"


def explore_hints(scenario: Scenario, root: Path, bridge_url: str) -> str:
    """Commands that work as pasted while the demo keeps running, including a routed build ready to send."""
    event = root / f"event-cart-{EXPLORE_BUILD}.json"
    build = scenario.build(EXPLORE_BUILD, "cart")
    event.write_text(json.dumps(build_complete(build, scenario.org_url), indent=2))
    cli = _command()
    api = f"--url {bridge_url} --token {API_TOKEN}"
    return "\n".join([
        f"\n--keep-running: the bridge stays up on {bridge_url} until Ctrl-C. Try:",
        f"  {cli} deployments {api} -o wide",
        f"  {cli} holds {api}",
        "  # send another finished build (cart #205, routed to cart/dev), then list again:",
        f"  curl -sS -X POST -H 'Content-Type: application/json' -H 'X-Bridge-Token: {WEBHOOK_TOKEN}' "
        f"--data @{event} {bridge_url}/webhooks/azure-devops",
        f"  {cli} deployments {api} --build-id {EXPLORE_BUILD}",
        f"  curl -sS -H 'Authorization: Bearer {API_TOKEN}' {bridge_url}/api/deployments",
        f"  curl -sS {bridge_url}/metrics | grep '^bridge_'",
        f"  git --git-dir {scenario.argocd.repo} log --oneline main",
    ])


@dataclass
class GatedStage:
    """A stage of a pipeline run waiting on the gate: the plan the bridge calls back, and how much of its log the
    demo has printed."""

    build_id: int
    name: str
    plan: str
    printed: int = 0
    result: str = ""


class Scenario:
    def __init__(self, ado: FakeAzureDevOps, github: GitHubFake, argocd: ArgoCDFake, bridge_url: str, org_url: str,
                 out: Callable[[str], None]) -> None:
        self.ado, self.github, self.argocd = ado, github, argocd
        self.bridge_url, self.org_url, self.out = bridge_url, org_url, out
        self.progress = Progress(bridge_url, out)
        self.client = httpx.Client(timeout=10, headers={"X-Bridge-Token": WEBHOOK_TOKEN})
        self.commits = 0
        self.stages: list[GatedStage] = []

    def build(self, build_id: int, app: str, *, commit: str | None = None, plan: str | None = None) -> dict[str, Any]:
        return self.ado.add_build(ORG, PROJECT, {
            "id": build_id, "buildNumber": f"2026.11.{build_id}", "result": "succeeded",
            "definition": {"id": {"shop": 11, "cart": 12, "search": 13}[app], "name": f"{app}-ci"},
            "sourceBranch": "refs/heads/main",
            "sourceVersion": (commit or f"{build_id:x}".rjust(8, "a")) * 5,
            "repository": {"id": f"{app}-repo-id", "type": "TfsGit", "name": app},
            **({"orchestrationPlan": {"planId": plan}} if plan else {}),
        })

    def gate(self, build_id: int, app: str, environment: str) -> None:
        """The run reaches its gated stage: a server job whose `InvokeRESTAPI@1` task (callback mode) calls the gate
        while the run is still in progress (no build.complete yet)."""
        plan, token = self.ado.add_plan()
        build = self.build(build_id, app, plan=plan)
        stage = f"Deploy {environment}"
        body = {"buildId": str(build_id), "environment": environment, "route": app, "timeoutMinutes": "10"}
        response = self.client.post(f"{self.bridge_url}/webhooks/azure-devops/gate", content=json.dumps(body),
                                    headers={"Content-Type": "application/json",
                                             **gate_headers(self.org_url, build["project"]["id"], plan, token, stage)})
        self.out(f"  pipeline #{build_id}, stage '{stage}' (server job, InvokeRESTAPI@1 → /webhooks/azure-devops/gate)"
                 f" → HTTP {response.status_code} {response.json().get('status')}")
        self.stages.append(GatedStage(build_id, stage, plan))

    def pipeline_log(self) -> None:
        """Print what each gated stage shows in Azure DevOps as it arrives: its task log, then its result."""
        for stage in self.stages:
            feed = self.ado.plan_feed(stage.plan)
            for line in feed[stage.printed:]:
                self.out(f"  | #{stage.build_id} {stage.name}: {line}")
            stage.printed = len(feed)
            done = [e for e in self.ado.plan_events(stage.plan) if e["name"] == "TaskCompleted"]
            if done and not stage.result:
                stage.result = str(done[0].get("result"))
                colour = "green" if stage.result == "succeeded" else "red"
                self.out(f"  | #{stage.build_id} {stage.name}: TaskCompleted {stage.result} → the stage turns "
                         f"{colour}, and run #{stage.build_id} with it")

    def post(self, *builds: dict[str, Any]) -> None:
        """Post finished builds to the webhook, concurrently when there are several."""
        def send(build: dict[str, Any]) -> None:
            response = self.client.post(f"{self.bridge_url}/webhooks/azure-devops",
                                        json=build_complete(build, self.org_url))
            body = response.json()
            self.out(f"  webhook: build #{build['id']} ({build['definition']['name']}) → HTTP {response.status_code} "
                     f"{body.get('status')} {[d['environment'] for d in body.get('deployments', [])]}")

        threads = [threading.Thread(target=send, args=(b,)) for b in builds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def wait(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            items = self.progress.poll()
            self.pipeline_log()
            self.merge_open_pull_requests()
            if done(items) or time.monotonic() > deadline:
                return items
            time.sleep(0.2)

    def merge_open_pull_requests(self) -> None:
        for pr in self.github.pulls(GITHUB_REPO):
            if pr.state == "open":
                sha = self.github.merge(GITHUB_REPO, pr.number)
                self.out(f"  reviewer merges PR #{pr.number} ({pr.title}) → merge commit {sha[:10]}")

    @staticmethod
    def finished(items: list[dict[str, Any]], *builds: int) -> bool:
        mine = [i for i in items if i["build_id"] in builds]
        return bool(mine) and all(i["verdict"] for i in mine)

    def run(self) -> int:
        t0 = time.monotonic()
        self.out("1) shop #101: a normal dev deployment, then staging through a pull request (after: dev)")
        self.post(self.build(101, "shop"))
        self.wait(lambda items: len([i for i in items if i["build_id"] == 101]) == 2
                  and self.finished(items, 101))

        self.out("\n2) cart #201 and #202 finish at the same moment")
        self.post(self.build(201, "cart"), self.build(202, "cart"))
        self.wait(lambda items: self.finished(items, 201, 202))

        self.out("\n3) cart #204 finishes, then the older #203 finishes last")
        self.post(self.build(204, "cart"))
        time.sleep(0.3)
        self.post(self.build(203, "cart"))
        self.wait(lambda items: self.finished(items, 203, 204))

        self.out("\n4) search #300 deploys; #301's pipeline deploys through a gated stage, and its rollout degrades in "
                 "Argo CD (on_failure: rollback)")
        self.post(self.build(300, "search"))
        self.wait(lambda items: self.finished(items, 300))
        self.argocd.script("search-dev", degrade=True)
        self.gate(301, "search", "dev")
        # Argo CD synced #301 (its health is set at the sync); the environment recovers once #300 is back
        self.wait(lambda items: any(i["build_id"] == 301 and "synced" in i["timeline"] for i in items))
        self.argocd.script("search-dev", health_sequence=["Progressing", "Healthy"])
        items = self.wait(lambda items: self.finished(items, 301) and any(
            i["kind"] == "rollback" and i["verdict"] for i in items))
        return self.summary(items, time.monotonic() - t0)

    def reported(self, items: list[dict[str, Any]], timeout: float = 20.0) -> list[dict[str, Any]]:
        """The records once every final report has landed in Azure DevOps (`timeline.reported`), bounded."""
        deadline = time.monotonic() + timeout
        while not all("reported" in (i.get("timeline") or {}) for i in items if i["verdict"]):
            if time.monotonic() > deadline:
                late = sorted(i["id"] for i in items if i["verdict"] and "reported" not in (i.get("timeline") or {}))
                self.out(f"\n(final reports still missing after {timeout:.0f}s: {', '.join(late)})")
                break
            time.sleep(0.1)
            items = self.progress.poll()
        self.pipeline_log()
        return items

    def summary(self, items: list[dict[str, Any]], elapsed: float) -> int:
        items = self.reported(items)
        rows = [{"build": i["build_id"], "route": i["route"], "env": i["environment"], "tag": i["tag"],
                 "verdict": i["verdict"] or f"({i['state']})", "commit": (i.get("commit_sha") or "")[:10] or "-",
                 "reason": i.get("reason")} for i in sorted(items, key=lambda i: i["created"])]
        self.out(f"\nDeployments ({elapsed:.1f}s):")
        self.out(format_table(rows, ("build", "route", "env", "tag", "verdict", "commit", "reason")))
        self.out("\nCommits in the GitOps repository (newest first):")
        log = subprocess.run(["git", "--git-dir", str(self.argocd.repo), "log", "--format=%h %an  %s", "main"],
                             capture_output=True, text=True, check=True).stdout
        self.out("\n".join("  " + line for line in log.strip().splitlines()))
        tags = {b: self.ado.tags(b) for b in BUILDS}
        self.out("\nWhat each build shows in Azure DevOps (build tags):")
        for build_id, build_tags in tags.items():
            self.out(f"  #{build_id}: {', '.join(build_tags) or '-'}")
        contradictions = tag_contradictions(items, tags)
        if contradictions:
            self.out("\nBuild tags that contradict the verdicts: " + "; ".join(contradictions))
            return 1
        verdicts = {(i["build_id"], i["environment"]): i["verdict"] for i in items}
        expected = {
            (101, "dev"): {"succeeded"}, (101, "staging"): {"succeeded"},
            (201, "dev"): {"succeeded", "superseded"}, (202, "dev"): {"succeeded"},
            (203, "dev"): {"superseded"}, (204, "dev"): {"succeeded"}, (300, "dev"): {"succeeded"},
            (301, "dev"): {"failed"},
        }
        callbacks = {(s.build_id, s.name): [e.get("result") for e in self.ado.plan_events(s.plan)
                                            if e["name"] == "TaskCompleted"] for s in self.stages}
        if callbacks != {(301, "Deploy dev"): ["failed"]}:
            self.out(f"\nUNEXPECTED pipeline callbacks (one TaskCompleted failed for #301 expected): {callbacks}")
            return 1
        if not any(i.get("kind") == "rollback" and i["verdict"] == "succeeded" for i in items):
            self.out("\nUNEXPECTED: search was not rolled back to #300")
            return 1
        wrong = {k: verdicts.get(k) for k, allowed in expected.items() if verdicts.get(k) not in allowed}
        if wrong:
            self.out(f"\nUNEXPECTED verdicts: {wrong}")
            return 1
        self.out("\nEvery deployment ended with the expected verdict.")
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
