"""A fake Argo CD API server whose applications follow a real bare git repository (reference README §5, §11).

    fake = ArgoCDFake(bare_repo, branch="main", token=FAKE_TOKEN)
    fake.add_app("web", values_file="envs/prod/values.yaml", project="team-a", auto_sync=True)
    served = ServedApp(fake.asgi).start(); fake.url = served.url     (or `with fake.serve(): ...`)
    fake.script("web", health_sequence=["Progressing", "Healthy"], hang_refresh=True, fail_5xx=3)
    fake.reconcile_now()                 # one controller pass over every app
    fake.start_reconciler(period=0.05)   # or a background controller
    fake.requests                        # [RequestLog(method, path, query, headers, time, status)]

State comes from git: a refresh reads the branch head and compares the app's values file at the last-applied
revision with the file at head (Synced / OutOfSync). A commit that does not touch the file is Synced at the new
head with no operation. Auto-sync apps get an operation on OutOfSync; manual apps wait for `POST /sync`.
Operations advance one step per controller pass (Running → terminal, `operation` cleared in the same update);
the next refresh pass moves `reconciledAt` past `finishedAt` and steps the scripted health. Timestamps have second
precision and come from a controller clock that moves at least one second per pass, so "reconciledAt lags
finishedAt" stays observable in fast tests.

Quirks reproduced: JWT-shaped bearer check (401), 403 without `project` vs 404 with it, exact
`Content-Type: application/json` on non-GET (415, plain text), `?refresh` blocking until the next reconcile (or
hanging), 400 code 9 for a second sync, 400 for a revision on an auto-sync app, retry phase (Running with
`finishedAt`), SyncError after a failed auto-sync (never retried for that SHA), ComparisonError with no operation,
scripted 5xx/429 bursts.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from workers.fakes.server import ServedApp

FAKE_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG8tYnJpZGdlIn0.ZmFrZS1zaWduYXR1cmU"
CHART_REVISION = "1.2.3"


@dataclass
class RequestLog:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    time: float
    status: int = 0


@dataclass
class FakeApp:
    name: str
    values_file: str
    project: str = "default"
    namespace: str = "argocd"
    auto_sync: bool = True
    multi_source: bool = False
    repo_url: str = "https://dev.azure.com/org/proj/_git/gitops"
    path: str = "apps"
    labels: dict[str, str] = field(default_factory=dict)
    sync_window: bool = False      # a deny window is active: manual syncs get 403, auto-sync waits
    sync_denied: bool = False      # RBAC: the bridge's account may not `sync` this app
    notify_deployed: bool = False  # on-deployed fires once the synced app turns Healthy
    rollout: bool = False     # the workload is an Argo Rollout (canary) instead of a Deployment
    canary_step: int = 1      # status.currentStepIndex while paused
    rollout_aborted: bool = False
    # live state
    applied_rev: str | None = None
    applied_content: bytes | None = None
    compared_rev: str | None = None
    sync_status: str = "Synced"
    health: str = "Healthy"
    health_changed: str = ""
    operation: dict[str, Any] | None = None
    op_state: dict[str, Any] | None = None
    reconciled_at: str = ""
    conditions: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    failed_revs: set[str] = field(default_factory=set)
    resource_version: int = 1000
    passes: int = 0           # completed refresh passes (what a blocked `?refresh` waits for)
    refresh_wanted: bool = False
    health_queue: list[str] = field(default_factory=list)
    retries_left: int = 0
    # script
    health_sequence: list[str] = field(default_factory=lambda: ["Progressing", "Healthy"])
    sync_fails: bool = False
    sync_retries: int = 0
    sync_steps: int = 1       # controller passes an operation stays Running before it ends
    comparison_error: str | None = None
    hang_refresh: bool = False
    frozen: bool = False
    forbidden: bool = False
    fail_5xx: int = 0
    fail_429: int = 0
    retry_after: float | None = None
    steps_done: int = 0

    def revisions(self, rev: str | None) -> dict[str, Any]:
        if self.multi_source:
            return {"revisions": [CHART_REVISION, rev] if rev else []}
        return {"revision": rev} if rev else {}

    def source(self, branch: str) -> dict[str, Any]:
        if self.multi_source:
            return {"sources": [
                {"repoURL": "https://charts.example.com", "chart": self.name, "targetRevision": CHART_REVISION,
                 "helm": {"valueFiles": [f"$values/{self.values_file}"]}},
                {"repoURL": self.repo_url, "targetRevision": branch, "ref": "values"},
            ]}
        return {"source": {"repoURL": self.repo_url, "path": self.path, "targetRevision": branch,
                           "helm": {"valueFiles": [self.values_file]}}}


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, "message": message}, status_code=status)


class ArgoCDFake:
    def __init__(self, bare_repo: str | Path, branch: str = "main", token: str = FAKE_TOKEN,
                 username: str = "ado-bridge") -> None:
        self.repo = Path(bare_repo)
        self.branch = branch
        self.token = token
        self.username = username
        self.apps: dict[str, FakeApp] = {}
        self.requests: list[RequestLog] = []
        self.url = ""
        self._lock = threading.RLock()
        self._clock = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._served: ServedApp | None = None
        # argocd-notifications: webhook posts on sync succeeded/failed, deployed, health degraded
        self.notify_url: str | None = None
        self.notify_headers: dict[str, str] = {}
        self.notify_duplicates = False
        self.notify_stale = False
        self.notifications: list[dict[str, Any]] = []   # what was sent (or attempted: a failed send counts as sent)
        self.transitions: list[tuple[float, str, str]] = []  # (wall time, app, new health): when each change happened
        self._outbox: list[dict[str, Any]] = []
        self._contents: dict[tuple[str, str], bytes | None] = {}
        self._pass_head: str | None = None
        self.asgi = Starlette(routes=[
            Route("/api/v1/session/userinfo", self._userinfo, methods=["GET"]),
            Route("/api/v1/applications", self._list, methods=["GET"]),
            Route("/api/v1/applications/{name}", self._get, methods=["GET"]),
            Route("/api/v1/applications/{name}/sync", self._sync, methods=["POST"]),
            Route("/api/v1/applications/{name}/resource", self._resource, methods=["GET"]),
            Route("/api/v1/applications/{name}/syncwindows", self._syncwindows, methods=["GET"]),
            Route("/api/v1/applications/{name}/operation", self._terminate, methods=["DELETE"]),
        ])
        self.asgi.add_middleware(_Gate, fake=self)

    # -- scripting API -------------------------------------------------------------------------------------------

    def add_app(self, name: str, values_file: str, *, project: str = "default", namespace: str = "argocd",
                auto_sync: bool = True, multi_source: bool = False, labels: Mapping[str, str] | None = None,
                fresh: bool = False, **script: Any) -> FakeApp:
        """Register an app already Synced and Healthy at the branch head (the state before our push).

        `fresh=True`: an app just generated (an ApplicationSet's new cluster): never synced, OutOfSync and Missing
        until the controller syncs it. Apps may be added while a test runs."""
        app = FakeApp(name=name, values_file=values_file, project=project, namespace=namespace,
                      auto_sync=auto_sync, multi_source=multi_source, labels=dict(labels or {}))
        with self._lock:
            now = self._tick()
            if fresh:
                app.sync_status, app.health, app.health_changed, app.reconciled_at = "OutOfSync", "Missing", now, ""
                self.apps[name] = app
                self.script(name, **script)
                return app
            head = self._head()
            app.applied_rev = app.compared_rev = head
            app.applied_content = self._content(head, values_file)
            app.health_changed = now
            app.reconciled_at = now
            op = {"sync": self._op_sync(app, head), "initiatedBy": {"automated": True}, "retry": {"limit": 5}}
            app.op_state = {"operation": op, "phase": "Succeeded", "message": "successfully synced (all tasks run)",
                            "syncResult": {**app.revisions(head), "resources": self._resources(app, "Synced")},
                            "startedAt": now, "finishedAt": now}
            app.history.append({"id": 1, **app.revisions(head), "deployStartedAt": now, "deployedAt": now,
                                "initiatedBy": {"automated": True}})
            self.apps[name] = app
        self.script(name, **script)
        return app

    def script(self, name: str, *, health_sequence: list[str] | None = None, degrade: bool = False,
               suspend: bool = False, sync_fails: bool | None = None, sync_retries: int | None = None,
               sync_steps: int | None = None, comparison_error: str | None = None, clear_comparison_error: bool = False,
               hang_refresh: bool | None = None, frozen: bool | None = None, forbidden: bool | None = None,
               fail_5xx: int | None = None, fail_429: int | None = None, retry_after: float | None = None,
               auto_sync: bool | None = None, rollout: str | None = None, canary_step: int | None = None,
               sync_window: bool | None = None, sync_denied: bool | None = None) -> None:
        """Change how one app behaves from now on (applies to the next sync / passes / requests).

        `rollout="paused"`: the workload is an Argo Rollout that pauses at canary step `canary_step` (Suspended);
        `rollout="aborted"`: its update is aborted (Degraded); `rollout="healthy"`: a Rollout that completes."""
        with self._lock:
            app = self.apps[name]
            if rollout is not None:
                app.rollout = True
                app.rollout_aborted = rollout == "aborted"
                app.health_sequence = {"paused": ["Progressing", "Suspended"], "aborted": ["Progressing", "Degraded"],
                                       }.get(rollout, ["Progressing", "Healthy"])
            if canary_step is not None:
                app.canary_step = canary_step
            if health_sequence is not None:
                app.health_sequence = list(health_sequence)
            if degrade:
                app.health_sequence = ["Progressing", "Degraded"]
            if suspend:
                app.health_sequence = ["Progressing", "Suspended"]
            for attr, value in (("sync_fails", sync_fails), ("sync_retries", sync_retries),
                                ("sync_steps", sync_steps), ("hang_refresh", hang_refresh), ("frozen", frozen),
                                ("forbidden", forbidden), ("fail_5xx", fail_5xx), ("fail_429", fail_429),
                                ("retry_after", retry_after), ("auto_sync", auto_sync),
                                ("sync_window", sync_window), ("sync_denied", sync_denied)):
                if value is not None:
                    setattr(app, attr, value)
            if comparison_error is not None:
                app.comparison_error = comparison_error
            if clear_comparison_error:
                app.comparison_error = None
        self._wake.set()

    def notify(self, url: str, headers: Mapping[str, str] | None = None, *, duplicates: bool = False,
               stale: bool = False) -> None:
        """Post argocd-notifications webhooks to `url` (triggers on-sync-succeeded, on-sync-failed, on-deployed,
        on-health-degraded). `duplicates`: every notification twice; `stale`: each followed by an `on-deployed`
        for the previously deployed revision (out of order)."""
        self.notify_url, self.notify_headers = url, dict(headers or {})
        self.notify_duplicates, self.notify_stale = duplicates, stale

    def reconcile_now(self, name: str | None = None) -> None:
        """One controller pass: advance each app's operation, or else refresh it from git. The branch head is
        resolved once per pass (as Argo CD's repo server caches a revision's resolution), not once per app."""
        with self._lock:
            self._pass_head = None
            try:
                for app in list(self.apps.values()) if name is None else [self.apps[name]]:
                    self._pass(app)
            finally:
                self._pass_head = None
            outbox, self._outbox = self._outbox, []
        self._send(outbox)

    def _notice(self, app: FakeApp, trigger: str, revision: str | None) -> None:
        if self.notify_url is None:
            return
        body = {"app": app.name, "namespace": app.namespace, "project": app.project, "revision": revision or "",
                "trigger": trigger}
        self._outbox += [body] * (2 if self.notify_duplicates else 1)
        if self.notify_stale and len(app.history) >= 2:
            old = app.history[-2].get("revision") or (app.history[-2].get("revisions") or [""])[-1]
            self._outbox.append({**body, "revision": old, "trigger": "on-deployed"})

    def _send(self, outbox: list[dict[str, Any]]) -> None:
        if not outbox or self.notify_url is None:
            return
        import httpx

        with httpx.Client(timeout=5.0) as client:
            for body in outbox:
                entry = dict(body)
                self.notifications.append(entry)
                try:
                    response = client.post(self.notify_url, json=body, headers=self.notify_headers)
                    entry["_status"] = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    entry["_status"] = type(exc).__name__  # like Argo CD: recorded as sent anyway

    def start_reconciler(self, period: float = 0.05) -> None:
        """A background controller: one pass every `period` seconds, and promptly after a refresh request."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(period)
                self._wake.clear()
                if not self._stop.is_set():
                    self.reconcile_now()

        self._thread = threading.Thread(target=loop, name="fake-argocd-controller", daemon=True)
        self._thread.start()

    def stop_reconciler(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=5)
            self._thread = None

    def start(self) -> ArgoCDFake:
        self._served = ServedApp(self.asgi).start()
        self.url = self._served.url
        return self

    def stop(self) -> None:
        self.stop_reconciler()
        if self._served is not None:
            self._served.stop()
            self._served = None

    @contextmanager
    def serve(self, reconcile_period: float | None = None) -> Iterator[ArgoCDFake]:
        self.start()
        if reconcile_period is not None:
            self.start_reconciler(reconcile_period)
        try:
            yield self
        finally:
            self.stop()

    def application(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._render(self.apps[name])

    def count(self, method: str = "GET", app: str | None = None, *, refresh: bool | None = None,
              since: float = 0.0) -> int:
        """Logged requests matching method/app/refresh-ness (for load assertions)."""
        n = 0
        for r in list(self.requests):
            if r.method != method or r.time < since or r.path == "/api/v1/session/userinfo":
                continue
            if app is not None and not r.path.startswith(f"/api/v1/applications/{app}"):
                continue
            if refresh is not None and ("refresh" in r.query) != refresh:
                continue
            n += 1
        return n

    # -- controller ----------------------------------------------------------------------------------------------

    def _git(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "--git-dir", str(self.repo), *args], capture_output=True, timeout=30)

    def _head(self) -> str:
        out = self._git("rev-parse", f"refs/heads/{self.branch}")
        if out.returncode != 0:
            raise RuntimeError(f"fake Argo CD: cannot resolve {self.branch}: {out.stderr.decode().strip()}")
        return out.stdout.decode().strip()

    def _pass_head_or_resolve(self) -> str:
        if self._pass_head is None:
            self._pass_head = self._head()
        return self._pass_head

    def _content(self, rev: str, path: str) -> bytes | None:
        """A file at a commit: immutable, so read from git once (Argo CD's repo server caches manifests per
        revision too); keeps the fake's controller pass from forking git for every app every second."""
        key = (rev, path)
        if len(rev) != 40:  # a name, not a commit: it may move
            out = self._git("show", f"{rev}:{path}")
            return out.stdout if out.returncode == 0 else None
        if key not in self._contents:
            if len(self._contents) >= 100_000:
                self._contents.clear()
            out = self._git("show", f"{rev}:{path}")
            self._contents[key] = out.stdout if out.returncode == 0 else None
        return self._contents[key]

    def _tick(self) -> str:
        """The controller clock: real time, but at least one second after the previous stamp."""
        now = datetime.now(UTC).replace(microsecond=0)
        self._clock = max(now, self._clock + timedelta(seconds=1))
        return self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _op_sync(self, app: FakeApp, rev: str) -> dict[str, Any]:
        return {**app.revisions(rev), **{k: v for k, v in app.source(self.branch).items()}}

    def _resources(self, app: FakeApp, status: str, message: str = "configured") -> list[dict[str, Any]]:
        return [{"group": "apps", "version": "v1", "kind": "Deployment", "namespace": app.name, "name": app.name,
                 "status": status, "message": f"deployment.apps/{app.name} {message}", "syncPhase": "Sync"}]

    def _pass(self, app: FakeApp) -> None:
        if app.frozen:
            return
        if app.operation is not None:
            self._operation_step(app)
        else:
            self._refresh_step(app)

    def _operation_step(self, app: FakeApp) -> None:
        now = self._tick()
        app.resource_version += 1
        rev = (app.operation or {}).get("sync", {}).get("revision") or \
            ((app.operation or {}).get("sync", {}).get("revisions") or [None, None])[-1]
        if app.op_state is None or app.op_state.get("operation") is not app.operation:
            app.op_state = {"operation": copy.deepcopy(app.operation), "phase": "Running",
                            "message": "one or more tasks are running",
                            "syncResult": {**app.revisions(rev), "resources": self._resources(app, "Synced")},
                            "startedAt": now}
            app.op_state["operation"] = app.operation
            app.steps_done = 0
            app.retries_left = app.sync_retries
            return
        app.steps_done += 1
        if app.steps_done < app.sync_steps:
            return
        state = app.op_state
        if app.sync_fails:
            reason = f'Deployment.apps "{app.name}" is invalid: spec.template.spec.containers[0].image: Required value'
            if app.retries_left > 0:
                app.retries_left -= 1
                state["retryCount"] = state.get("retryCount", 0) + 1
                state["finishedAt"] = now
                state["message"] = (f"one or more objects failed to apply, reason: {reason}. "
                                    f"Retrying attempt #{state['retryCount']} at {now[11:16]}.")
                app.steps_done = 0
                return
            tried = state.get("retryCount", 0)
            state.update(phase="Failed", finishedAt=now,
                         message=f"one or more objects failed to apply, reason: {reason}"
                                 + (f" (retried {tried} times)." if tried else ""))
            self._notice(app, "on-sync-failed", rev)
            state["syncResult"]["resources"] = self._resources(app, "SyncFailed", f"is invalid: {reason}")
            if rev:
                app.failed_revs.add(rev)
        else:
            state.update(phase="Succeeded", finishedAt=now, message="successfully synced (all tasks run)")
            app.applied_rev = rev
            app.applied_content = self._content(rev, app.values_file) if rev else None
            app.history.append({"id": len(app.history) + 1, **app.revisions(rev), "deployStartedAt":
                                state["startedAt"], "deployedAt": now,
                                "initiatedBy": state["operation"].get("initiatedBy", {})})
            app.health_queue = list(app.health_sequence)
            app.notify_deployed = True
            self._notice(app, "on-sync-succeeded", rev)
        # terminal: the operation is cleared in the same update; health and reconciledAt stay stale until the
        # next refresh pass (separate reconcilers).
        state["operation"] = copy.deepcopy(app.operation)
        app.operation = None
        app.refresh_wanted = True

    def _refresh_step(self, app: FakeApp) -> None:
        now = self._tick()
        app.resource_version += 1
        app.refresh_wanted = False
        if app.comparison_error is not None:
            app.sync_status = "Unknown"
            app.compared_rev = self.branch
            if not any(c["type"] == "ComparisonError" for c in app.conditions):
                app.conditions.append({"type": "ComparisonError", "lastTransitionTime": now, "message":
                                       "Failed to load target state: failed to generate manifest for source 1 of 1:"
                                       f" rpc error: code = Unknown desc = {app.comparison_error}"})
            app.reconciled_at = now
            app.passes += 1
            return
        app.conditions = [c for c in app.conditions if c["type"] != "ComparisonError"]
        head = self._pass_head_or_resolve()
        app.compared_rev = head
        app.sync_status = "Synced" if self._content(head, app.values_file) == app.applied_content else "OutOfSync"
        if app.health_queue:
            new = app.health_queue.pop(0)
            if new != app.health:
                app.health, app.health_changed = new, now
                self.transitions.append((time.time(), app.name, new))
                if new == "Degraded":
                    self._notice(app, "on-health-degraded", app.compared_rev)
            if new == "Healthy" and app.notify_deployed:
                app.notify_deployed = False
                self._notice(app, "on-deployed", app.applied_rev)
        app.reconciled_at = now
        app.passes += 1
        if app.auto_sync and app.sync_status == "OutOfSync" and app.operation is None and not app.sync_window:
            if head in app.failed_revs:
                if not any(c["type"] == "SyncError" for c in app.conditions):
                    msg = (app.op_state or {}).get("message", "")
                    app.conditions.append({"type": "SyncError", "lastTransitionTime": now,
                                           "message": f"Failed last sync attempt to [{head}]: {msg}"})
            else:
                app.conditions = [c for c in app.conditions if c["type"] != "SyncError"]
                app.operation = {"sync": self._op_sync(app, head), "initiatedBy": {"automated": True},
                                 "retry": {"limit": 5}}
                app.op_state = None

    # -- wire format ---------------------------------------------------------------------------------------------

    def _render(self, app: FakeApp) -> dict[str, Any]:
        status: dict[str, Any] = {
            "sync": {"status": app.sync_status, **app.revisions(app.compared_rev),
                     "comparedTo": {**app.source(self.branch),
                                    "destination": {"server": "https://kubernetes.default.svc",
                                                    "namespace": app.name}}},
            "health": {"status": app.health, "lastTransitionTime": app.health_changed},
            "resources": [self._workload(app)],
            "reconciledAt": app.reconciled_at,
            "history": app.history[-10:],
            "sourceType": "Helm",
        }
        if app.op_state is not None:
            status["operationState"] = app.op_state
        if app.conditions:
            status["conditions"] = app.conditions
        body: dict[str, Any] = {
            "metadata": {"name": app.name, "namespace": app.namespace, **({"labels": app.labels} if app.labels else {}),
                         "resourceVersion": str(app.resource_version)},
            "spec": {"project": app.project, **app.source(self.branch),
                     "destination": {"server": "https://kubernetes.default.svc", "namespace": app.name},
                     "syncPolicy": {"automated": {"prune": True, "selfHeal": True}} if app.auto_sync else {}},
            "status": status,
        }
        if app.operation is not None:
            body["operation"] = app.operation
        return copy.deepcopy(body)

    def _workload(self, app: FakeApp) -> dict[str, Any]:
        """The app's one workload in `status.resources`, health message as Argo CD's health checks write it."""
        if app.rollout:
            message = {"Suspended": "Rollout is paused",
                       "Degraded": "RolloutAborted: Rollout aborted update to revision 2" if app.rollout_aborted else
                       "ProgressDeadlineExceeded: ReplicaSet has timed out progressing.",
                       "Progressing": "more replicas need to be updated"}.get(app.health)
            return {"group": "argoproj.io", "version": "v1alpha1", "kind": "Rollout", "namespace": app.name,
                    "name": app.name, "status": app.sync_status,
                    "health": {"status": app.health, **({"message": message} if message else {})}}
        return {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": app.name, "name": app.name,
                "status": app.sync_status,
                "health": {"status": app.health, **({"message": f'Deployment "{app.name}" exceeded its progress '
                                                                "deadline"} if app.health == "Degraded" else {})}}

    def _rollout_manifest(self, app: FakeApp) -> dict[str, Any]:
        steps = [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "10m"}},
                 {"setWeight": 100}]
        status: dict[str, Any] = {"phase": "Healthy", "currentStepIndex": len(steps), "message": ""}
        if app.health == "Suspended":
            status = {"phase": "Paused", "currentStepIndex": app.canary_step, "message": "CanaryPauseStep",
                      "pauseConditions": [{"reason": "CanaryPauseStep", "startTime": app.health_changed}]}
        elif app.health == "Degraded" and app.rollout_aborted:
            status = {"phase": "Degraded", "abort": True, "currentStepIndex": 0,
                      "message": "RolloutAborted: Rollout aborted update to revision 2"}
        return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                "metadata": {"name": app.name, "namespace": app.name},
                "spec": {"strategy": {"canary": {"steps": steps}}}, "status": status}

    # -- HTTP ----------------------------------------------------------------------------------------------------

    async def _syncwindows(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        window = {"kind": "deny", "schedule": "0 22 * * *", "duration": "10h", "manualSync": False}
        active = [window] if found.sync_window else []
        return JSONResponse({"activeWindows": active or None, "assignedWindows": [window],
                             "canSync": not found.sync_window})

    async def _resource(self, request: Request) -> Response:
        """`GET …/resource?kind=&group=&resourceName=&namespace=&version=`: the live manifest as a JSON string."""
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        q = request.query_params
        with self._lock:
            if not found.rollout or q.get("kind") != "Rollout" or q.get("resourceName") != found.name:
                return _error(404, 5, f'{q.get("kind")} "{q.get("resourceName")}" not found as part of application '
                                      f'"{found.name}"')
            return JSONResponse({"manifest": json.dumps(self._rollout_manifest(found))})

    async def _userinfo(self, request: Request) -> Response:
        return JSONResponse({"loggedIn": request.state.authenticated, "username": self.username, "iss": "argocd"})

    def _lookup(self, request: Request, body: dict[str, Any] | None = None) -> FakeApp | Response:
        name = request.path_params["name"]
        projects = request.query_params.getlist("project") + request.query_params.getlist("projects")
        if body and body.get("project"):
            projects.append(str(body["project"]))
        if len(set(projects)) > 1:
            return _error(400, 3, "multiple projects specified - the api only supports one project at a time")
        project = projects[0] if projects else None
        with self._lock:
            app = self.apps.get(name)
            ns = (body or {}).get("appNamespace") or request.query_params.get("appNamespace") or "argocd"
            if app is not None and app.namespace != ns:
                app = None
            if project is None:
                if app is None or app.forbidden:
                    return _error(403, 7, "permission denied")
            else:
                if app is not None and app.forbidden:
                    return _error(403, 7, "permission denied")
                if app is None or app.project != project:
                    return _error(404, 5, f'applications.argoproj.io "{name}" not found')
            if app.fail_429 > 0:
                app.fail_429 -= 1
                headers = {"Retry-After": f"{app.retry_after:g}"} if app.retry_after is not None else {}
                return JSONResponse({"error": "too many requests", "code": 8, "message": "too many requests"},
                                    status_code=429, headers=headers)
            if app.fail_5xx > 0:
                app.fail_5xx -= 1
                return _error(503, 14, "connection error: desc = \"transport: Error while dialing\"")
            return app

    async def _list(self, request: Request) -> Response:
        projects = set(request.query_params.getlist("project") + request.query_params.getlist("projects"))
        ns = request.query_params.get("appNamespace")
        try:
            wanted = parse_selector(request.query_params.get("selector") or "")
        except ValueError as exc:
            return _error(400, 3, str(exc))
        with self._lock:
            items = [self._render(a) for a in sorted(self.apps.values(), key=lambda a: a.name)
                     if (not projects or a.project in projects) and (ns is None or a.namespace == ns)
                     and not a.forbidden and selector_matches(wanted, a.labels)]
        # Go's encoding/json writes a nil slice as null
        return JSONResponse({"items": items or None, "metadata": {"resourceVersion": "1"}})

    async def _get(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        app = found
        if "refresh" not in request.query_params:
            with self._lock:
                return JSONResponse(self._render(app))
        with self._lock:
            start = app.passes
            app.refresh_wanted = True
        # Blocks until the controller completes a refresh pass; no server-side timeout (argo-cd#21613).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with self._lock:
                if not app.hang_refresh and not app.frozen and app.passes == start:
                    # the controller reacts to the refresh annotation promptly
                    self._refresh_step(app)
                if app.passes > start and not app.hang_refresh:
                    return JSONResponse(self._render(app))
            if await request.is_disconnected():
                return _error(500, 2, "application refresh deadline exceeded")
            await asyncio.sleep(0.02)
        return _error(500, 2, "application refresh deadline exceeded")

    async def _sync(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 3, "invalid character in request body")
        if not isinstance(body, dict):
            return _error(400, 3, "request body must be an object")
        found = self._lookup(request, body)
        if isinstance(found, Response):
            return found
        app = found
        with self._lock:
            # order of AS Sync: sync windows, then RBAC `sync`, then the operation check
            if app.sync_window:
                return _error(403, 7, "cannot sync: blocked by sync window")
            if app.sync_denied:
                return _error(403, 7, f"permission denied: applications, sync, {app.project}/{app.name}, "
                                      f"sub: {self.username}, iat: 2026-11-27T00:00:00Z")
            if app.operation is not None:
                return _error(400, 9, "another operation is already in progress")
            revision = body.get("revision")
            if revision and revision != self.branch and app.auto_sync:
                return _error(400, 9, f"Cannot sync to {revision}: auto-sync currently set to {self.branch}")
            rev = revision if revision and len(revision) == 40 else self._head()
            op: dict[str, Any] = {"sync": {**self._op_sync(app, rev), "prune": bool(body.get("prune"))},
                                  "initiatedBy": {"username": self.username}, "retry": {}}
            if body.get("infos"):
                op["info"] = body["infos"]
            app.operation = op
            app.op_state = None
            app.resource_version += 1
            rendered = self._render(app)
        self._wake.set()
        return JSONResponse(rendered)

    async def _terminate(self, request: Request) -> Response:
        found = self._lookup(request)
        if isinstance(found, Response):
            return found
        with self._lock:
            if found.operation is None:
                return _error(400, 3, "Unable to terminate operation. No operation is in progress")
            if found.op_state:
                found.op_state["phase"] = "Terminating"
            return JSONResponse({})


class _Gate:
    """Request log, bearer check (JWT-shaped, then equal), exact Content-Type on non-GET, 405 for wrong methods."""

    def __init__(self, app: Callable[..., Awaitable[None]], fake: ArgoCDFake) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(dict(scope))
        entry = RequestLog(method=request.method, path=request.url.path, query=dict(request.query_params),
                           headers={k.lower(): v for k, v in request.headers.items()}, time=time.time())
        self.fake.requests.append(entry)
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        authenticated = len(token.split(".")) == 3 and token == self.fake.token
        scope = dict(scope)
        scope.setdefault("state", {})["authenticated"] = authenticated

        async def logged_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
            await send(message)

        if request.url.path == "/api/v1/session/userinfo":
            await self.app(scope, receive, logged_send)
            return
        if request.method != "GET" and request.headers.get("content-type", "").lower() != "application/json":
            await PlainTextResponse("Invalid content type", status_code=415)(scope, receive, logged_send)
            return
        if not authenticated:
            if len(token.split(".")) != 3:
                response: Response = _error(401, 16, "no session information")
            else:
                response = _error(401, 16, "invalid session: token signature is invalid")
            await response(scope, receive, logged_send)
            return
        await self.app(scope, receive, logged_send)


Requirement = tuple[str, str, frozenset[str]]  # key, operator (in, notin, exists, !exists), values


def parse_selector(text: str) -> list[Requirement]:
    """A Kubernetes label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`."""
    out: list[Requirement] = []
    for part in (p.strip() for p in re.split(r",(?![^(]*\))", text)):
        if not part:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part):
            out.append((m.group(1), m.group(2), frozenset(x.strip() for x in m.group(3).split(","))))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", part):
            out.append((m.group(1), "notin" if m.group(2) == "!=" else "in", frozenset([m.group(3)])))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", part):
            out.append((m.group(2), "!exists" if m.group(1) else "exists", frozenset()))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    return out


def selector_matches(requirements: list[Requirement], labels: Mapping[str, str]) -> bool:
    for key, op, values in requirements:
        ok = {"in": labels.get(key) in values, "notin": labels.get(key) not in values,
              "exists": key in labels, "!exists": key not in labels}[op]
        if not ok:
            return False
    return True


def git_is_ancestor(repos: Mapping[str, str | Path]) -> Callable[[str, str, str], Awaitable[bool]]:
    """`ctx["is_ancestor"]` over bare repositories (tests, demo): `git merge-base --is-ancestor`."""

    async def is_ancestor(repository: str, ancestor: str, descendant: str) -> bool:
        if ancestor == descendant:
            return True
        proc = await asyncio.create_subprocess_exec(
            "git", "--git-dir", str(repos[repository]), "merge-base", "--is-ancestor", ancestor, descendant,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), 30) == 0

    return is_ancestor
