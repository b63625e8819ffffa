"""The pipeline gate end to end: an agentless `InvokeRESTAPI@1` call (callback mode) → progress lines in the task log
→ exactly one `TaskCompleted` with the right result. The Azure DevOps fake plays the plan (events, timeline feed,
the plan-scoped job token); the bridge runs web + worker in one loop (Redis db 7)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.demo import GITHUB_REPO, ORG, WEBHOOK_TOKEN, gate_headers, task_instance_id

from .conftest import DB, KEY_PREFIX, READ_TOKEN, Options, Stack


class GateStack(Stack):
    """The e2e stack with cart's staging and prod behind pipeline gates, and a fast gate poll."""

    margin_seconds = 120.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cart = next(r for r in self.document["routes"] if r["name"] == "cart")
        dev = cart["environments"][0]
        cart["environments"] += [
            {**dev, "name": "staging", "file": "helm/cart/values-staging.yaml",
             "argocd": {"app": "cart-staging"}, "trigger": "gate", "after": "dev"},
            {**dev, "name": "prod", "file": "helm/cart/values-prod.yaml", "trigger": "gate", "after": "staging",
             "argocd": None},
        ]
        # search/dev is an estate of two applications (the second one in another region, same values file)
        search = next(r for r in self.document["routes"] if r["name"] == "search")
        search["environments"][0]["argocd"] = {"apps": ["search-dev", "search-eu"], "discovery_seconds": 0}
        self.argocd.add_app("search-eu", "helm/search/values-dev.yaml", sync_steps=1)
        self.routing = parse_routing(self.document, "e2e routing")
        (self.root / "bridge.yaml").write_text(json.dumps(self.document, indent=2))

    def make_settings(self) -> Settings:
        base = super().make_settings()
        return base.model_copy(update={"gate": base.gate.model_copy(
            update={"poll_seconds": 0.2, "margin_seconds": self.margin_seconds})})

    def plan(self, build_id: int, app: str = "cart", **fields: Any) -> tuple[dict[str, Any], str, str]:
        plan_id, token = self.ado.add_plan()
        build = self.build(build_id, app, orchestrationPlan={"planId": plan_id}, **fields)
        return build, plan_id, token

    def gate(self, build: dict[str, Any], env: str, plan_id: str, token: str, *, route: str | None = "cart",
             timeout: str = "30", plan_url: str | None = None, endpoint: str = "gate", hub: str = "build",
             job_id: str | None = None, **body: Any) -> httpx.Response:
        headers = {"X-Bridge-Token": WEBHOOK_TOKEN, "Content-Type": "application/json",
                   **gate_headers(plan_url or self.org_url, build["project"]["id"], plan_id, token, env, hub=hub,
                                  job_id=job_id)}
        payload = {"buildId": str(build["id"]), "environment": env, "timeoutMinutes": timeout, **body}
        if route is not None:
            payload["route"] = route
        return self.http.post(f"{self.url}/webhooks/azure-devops/{endpoint}", content=json.dumps(payload),
                              headers=headers)

    def completed(self, plan_id: str) -> list[dict[str, Any]]:
        return [e for e in self.ado.plan_events(plan_id) if e["name"] == "TaskCompleted"]

    def wait_completed(self, plan_id: str, timeout: float = 25.0) -> dict[str, Any]:
        events = self.wait(f"TaskCompleted on plan {plan_id}", lambda: self.completed(plan_id), timeout)
        time.sleep(0.6)  # a few more gate ticks: a second callback would show now
        assert len(self.completed(plan_id)) == 1, self.completed(plan_id)
        return events[0]


@pytest.fixture
def gate_stack(tmp_path: Path, redis_url: Callable[[int], str],
               serve: Callable[[Any], Any]) -> Iterator[Callable[..., GateStack]]:
    started: list[GateStack] = []

    def make(margin_seconds: float = 120.0, **options: Any) -> GateStack:
        GateStack.margin_seconds = margin_seconds
        s = GateStack(tmp_path, redis_url(DB), Options(**options), serve)
        started.append(s)
        return s.start()

    yield make
    for s in started:
        s.stop()


def test_gate_for_a_promotion_deploys_and_calls_back_succeeded(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(400)
    assert s.post(build).status_code == 202
    dev = s.wait_finished(400, "dev")
    assert dev["verdict"] == "succeeded"
    assert s.record(400, "staging") is None  # trigger: gate — `after: dev` does not start it

    answer = s.gate(build, "staging", plan, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "accepted"
    done = s.wait_completed(plan)
    assert done["result"] == "succeeded"
    staging = s.record(400, "staging")
    assert staging is not None and staging["verdict"] == "succeeded"
    feed = "\n".join(s.ado.plan_feed(plan))
    assert f"committed {staging['commit_sha'][:10]} to gitops:helm/cart/values-staging.yaml" in feed
    assert "verdict: succeeded" in feed
    # the GitOps commit is the task's output variable (its timeline record's variables), and the log says so
    assert s.ado.plan_variables(plan)[task_instance_id(plan, "staging")] == {"gitopsCommitSha": staging["commit_sha"]}
    assert f"output variable gitopsCommitSha = {staging['commit_sha']}" in feed
    # the ledger says it landed; the token is gone once it did
    assert any(k.startswith("gate:") for k in staging["delivered"])
    assert token not in json.dumps(s.records())


def test_gate_before_the_build_event_is_the_same_deployment(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(401)
    assert s.gate(build, "dev", plan, token).status_code == 200  # the run is still going: no event yet
    assert s.wait_completed(plan)["result"] == "succeeded"
    assert s.post(build).status_code == 202  # the run finished: build.complete arrives
    time.sleep(1.0)
    records = [r for r in s.records(401) if r["environment"] == "dev"]
    assert len(records) == 1 and records[0]["verdict"] == "succeeded"
    assert len(s.commits_since(s.initial)) == 1
    # a retried gate call (same coordinates) attaches, and never calls back a second time
    again = s.gate(build, "dev", plan, token)
    assert again.status_code == 200 and again.json()["status"] == "attached"
    time.sleep(0.6)
    assert len(s.completed(plan)) == 1


def test_degraded_rollout_turns_the_stage_red(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    s.argocd.script("cart-dev", degrade=True)
    build, plan, token = s.plan(402)
    assert s.gate(build, "dev", plan, token).status_code == 200
    assert s.wait_completed(plan)["result"] == "failed"
    feed = "\n".join(s.ado.plan_feed(plan))
    assert "verdict: failed" in feed and "Degraded" in feed


def test_superseded_through_a_gate_names_the_newer_build(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    assert s.post(s.build(431, "cart")).status_code == 202  # the newer build deployed first
    assert s.wait_finished(431, "dev")["verdict"] == "succeeded"
    build, plan, token = s.plan(430)  # the older run reaches its gated stage last
    assert s.gate(build, "dev", plan, token).status_code == 200
    assert s.wait_completed(plan)["result"] == "failed"
    record = s.record(430, "dev")
    assert record is not None and record["verdict"] == "superseded" and record["commit_sha"] is None
    feed = "\n".join(s.ado.plan_feed(plan))
    assert "verdict: superseded" in feed and "newer build 431" in feed
    assert "gitopsCommitSha" not in feed and s.ado.plan_variables(plan) == {}  # nothing of #430 was committed
    assert len(s.commits_since(s.initial)) == 1


def test_a_pull_request_closed_unmerged_fails_the_stage_and_names_it(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(432, "shop")
    assert s.post(build).status_code == 202
    assert s.wait_finished(432, "dev")["verdict"] == "succeeded"
    pull = s.wait("the staging pull request", s.open_pull)  # `after: dev` opened it; the gate attaches
    assert s.gate(build, "staging", plan, token, route="shop").status_code == 200
    s.wait("the pull request in the task log", lambda: any("pull request #" in line for line in s.ado.plan_feed(plan)))
    s.github.close(GITHUB_REPO, pull.number)
    assert s.wait_completed(plan)["result"] == "failed"
    record = s.record(432, "staging")
    assert record is not None and record["verdict"] == "rejected"
    feed = "\n".join(s.ado.plan_feed(plan))
    assert f"pull request #{pull.number} opened" in feed and "counts against this stage's deadline" in feed
    assert f"verdict: rejected — pull request #{pull.number} was closed without merging" in feed


def test_an_estate_shows_each_application_and_names_the_failing_one(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack(reconcile=False)  # Argo CD's controller starts once the live lines were seen
    s.argocd.script("search-eu", degrade=True)
    build, plan, token = s.plan(433, "search")
    assert s.gate(build, "dev", plan, token, route="search").status_code == 200
    # while it waits, the watcher's view of each application, one line per application
    live = {f"Argo CD app {app}: sync OutOfSync" for app in ("search-dev", "search-eu")}
    s.wait("a live line per application", lambda: all(any(line.startswith(want) for line in s.ado.plan_feed(plan))
                                                       for want in live))
    s.start_argocd_controller()
    assert s.wait_completed(plan)["result"] == "failed"
    feed = s.ado.plan_feed(plan)
    verdict = next(line for line in feed if line.startswith("verdict: "))
    assert verdict.startswith("verdict: failed — search-eu: ") and "Degraded" in verdict
    # each application with its own state, the failing one first, then the verdict
    final = [line.strip() for line in feed[feed.index(verdict) - 2:feed.index(verdict)]]
    assert final[0].startswith("Argo CD app search-eu: failed — ") and "Degraded" in final[0]
    assert final[1].startswith("Argo CD app search-dev: ")


def test_a_refused_output_variable_neither_stops_the_log_nor_the_callback(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(434)
    s.ado.fail(400, method="PATCH", path=f"/plans/{plan}/timelines", times=100)
    assert s.gate(build, "dev", plan, token).status_code == 200
    assert s.wait_completed(plan)["result"] == "succeeded"
    feed = "\n".join(s.ado.plan_feed(plan))
    assert "committed" in feed and "verdict: succeeded" in feed
    assert "output variable gitopsCommitSha not set: Azure Pipelines: output variables rejected (400)" in feed
    assert len(s.ado.requests_to("PATCH", f"/plans/{plan}/timelines")) == 1  # said once, not tried every tick


def test_after_not_satisfied_fails_and_deploys_nothing(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(403)
    assert s.gate(build, "prod", plan, token).status_code == 200
    assert s.wait_completed(plan)["result"] == "failed"
    assert "staging did not succeed for build 403 (not deployed)" in "\n".join(s.ado.plan_feed(plan))
    assert s.records(403) == []


def test_a_build_of_another_plan_deploys_nothing(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, _, _ = s.plan(404)
    other_plan, other_token = s.ado.add_plan()  # a valid credential, used to deploy someone else's build
    assert s.gate(build, "dev", other_plan, other_token).status_code == 200
    assert s.wait_completed(other_plan)["result"] == "failed"
    assert "does not belong to this pipeline run" in "\n".join(s.ado.plan_feed(other_plan))
    assert s.records(404) == []
    assert s.commits_since(s.initial) == []


def test_held_environment_fails_the_stage_and_names_the_hold(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    assert s.api("PUT", "/api/holds/cart/dev", json={"reason": "release freeze"}).status_code == 201
    build, plan, token = s.plan(405)
    assert s.gate(build, "dev", plan, token).status_code == 200
    assert s.wait_completed(plan)["result"] == "failed"
    feed = "\n".join(s.ado.plan_feed(plan))
    assert "held" in feed and "release freeze" in feed and "release-bot" in feed


def test_pushed_passes_and_says_not_verified(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(406)
    assert s.post(build).status_code == 202
    s.wait_finished(406, "dev")
    assert s.gate(build, "staging", plan, token, job_id=str(uuid.uuid4())).status_code == 200
    s.wait_completed(plan)
    plan2, token2 = s.ado.add_plan()
    s.ado.add_build(ORG, build["project"]["name"], {**build, "orchestrationPlan": {"planId": plan2}})
    assert s.gate(build, "prod", plan2, token2).status_code == 200  # prod has no Argo CD application
    assert s.wait_completed(plan2)["result"] == "succeeded"
    assert "pushed (not verified" in "\n".join(s.ado.plan_feed(plan2))


def test_deadline_ends_before_the_job_timeout(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack(margin_seconds=55.0, reconcile=False)  # Argo CD never syncs: only the gate's deadline ends it
    build, plan, token = s.plan(407)
    started = time.monotonic()
    assert s.gate(build, "dev", plan, token, timeout="1").status_code == 200
    assert s.wait_completed(plan)["result"] == "failed"
    assert time.monotonic() - started < 60  # before Azure DevOps would time the job out
    record = s.record(407, "dev")
    assert record is not None and record["verdict"] == "timed-out"
    assert "deadline passed" in record["reason"]
    feed = "\n".join(s.ado.plan_feed(plan))
    assert "Argo CD app cart-dev: sync OutOfSync" in feed  # the watcher's live view, while it waited
    assert "verdict: timed-out" in feed


def test_callback_failing_twice_then_landing(gate_stack: Callable[..., GateStack],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = gate_stack()
    build, plan, token = s.plan(408)
    s.ado.fail(503, method="POST", path=f"/plans/{plan}/events", times=2)
    assert s.gate(build, "dev", plan, token).status_code == 200
    assert s.wait_completed(plan)["result"] == "succeeded"
    attempts = s.ado.requests_to("POST", f"/plans/{plan}/events")
    assert len(attempts) == 3
    assert "TaskCompleted will retry" in caplog.text  # the retries were logged, the job's token never
    assert token not in caplog.text and token not in json.dumps(s.records())


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"plan_url": "https://evil.example.com/org/"}, 403, "not a configured Azure DevOps organization"),
    ({"route": "nope"}, 400, "no route 'nope'"),
    ({"env": "qa"}, 400, "route 'cart' has no environment 'qa' (environments: dev, staging, prod)"),
    ({"route": None, "env": "dev"}, 400, "name the route"),
    ({"timeout": "$(timeout)"}, 400, "'timeoutMinutes' must be a whole number"),
    ({"hub": "checks"}, 400, "HubName must be build or release"),
])
def test_bad_gate_calls_are_refused_with_a_reason(gate_stack: Callable[..., GateStack], change: dict[str, Any],
                                                  status: int, message: str) -> None:
    s = gate_stack()
    build, plan, token = s.plan(409)
    env = change.pop("env", "dev")
    answer = s.gate(build, env, plan, token, **change)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["reason"]
    assert token not in answer.text
    time.sleep(0.3)
    assert s.ado.plan_events(plan) == [] and s.records(409) == []


def test_bad_build_id_and_missing_headers(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(410)
    answer = s.gate({**build, "id": "$(Build.BuildId)"}, "dev", plan, token)
    assert answer.status_code == 400 and "'buildId' must be a whole number" in answer.json()["reason"]
    answer = s.http.post(f"{s.url}/webhooks/azure-devops/gate", json={"buildId": "410", "environment": "dev"},
                         headers={"X-Bridge-Token": WEBHOOK_TOKEN})
    assert answer.status_code == 400 and "missing header(s) PlanUrl" in answer.json()["reason"]
    answer = s.http.post(f"{s.url}/webhooks/azure-devops/gate", json={})
    assert answer.status_code == 401


def test_check_passes_when_the_previous_environment_succeeded(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    build, plan, token = s.plan(411)
    assert s.post(build).status_code == 202
    s.wait_finished(411, "dev")
    check_plan, check_token = s.ado.add_plan()
    answer = s.gate(build, "staging", check_plan, check_token, endpoint="check", hub="checks")
    assert answer.status_code == 200, answer.text
    assert s.wait_completed(check_plan)["result"] == "succeeded"
    # and fails, saying why, when the build never ran there
    never_plan, never_token = s.ado.add_plan()
    assert s.gate(build, "prod", never_plan, never_token, endpoint="check", hub="checks").status_code == 200
    assert s.wait_completed(never_plan)["result"] == "failed"
    assert "never ran in staging" in "\n".join(s.ado.plan_feed(never_plan))
    # an environment without after: has nothing to check
    answer = s.gate(build, "dev", never_plan, never_token, endpoint="check", hub="checks")
    assert answer.status_code == 400 and "has no 'after:'" in answer.json()["reason"]


def test_check_fails_when_the_previous_environment_failed(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    s.argocd.script("cart-dev", degrade=True)
    build, _, _ = s.plan(413)
    assert s.post(build).status_code == 202
    assert s.wait_finished(413, "dev")["verdict"] == "failed"
    check_plan, check_token = s.ado.add_plan()
    assert s.gate(build, "staging", check_plan, check_token, endpoint="check", hub="checks").status_code == 200
    assert s.wait_completed(check_plan)["result"] == "failed"
    assert "build 413 failed in dev: " in "\n".join(s.ado.plan_feed(check_plan))
    assert s.record(413, "staging") is None  # a check deploys nothing


def test_wait_sees_a_gated_environment_through_the_api(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack()
    answer = s.api("GET", "/api/builds/412", token=READ_TOKEN, params={"route": "cart"})
    envs = {e["name"]: e for e in answer.json()["routes"][0]["environments"]}
    assert envs["dev"]["ungated"] and not envs["staging"]["ungated"] and envs["prod"]["trigger"] == "gate"


def test_worker_killed_while_the_gate_waits(gate_stack: Callable[..., GateStack]) -> None:
    s = gate_stack(worker=False, reconcile=False)  # workers are real processes; Argo CD holds the deployment
    first = s.spawn_worker("worker-1")
    build, plan, token = s.plan(420)
    assert s.gate(build, "dev", plan, token).status_code == 200
    s.wait("the gate's progress lines", lambda: any("committed" in line for line in s.ado.plan_feed(plan)))
    first.kill_between_jobs([f"{KEY_PREFIX}:lock:argocd-watch:cart-dev"])
    assert s.completed(plan) == []

    s.spawn_worker("worker-2")
    s.start_argocd_controller()
    assert s.wait_completed(plan)["result"] == "succeeded"
    record = s.record(420, "dev")
    assert record is not None and record["verdict"] == "succeeded" and record["state"] == "done"
    feed = s.ado.plan_feed(plan)
    assert len([line for line in feed if line.startswith("committed")]) == 1  # each line posted once


def test_a_refused_callback_is_recorded_and_counted(gate_stack: Callable[..., GateStack],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from bridge import metrics

    refused = metrics.GATE_CALLBACKS.labels(result="succeeded", outcome="refused")
    before = refused._value.get()
    s = gate_stack()
    build, plan, _ = s.plan(421)
    wrong = f"job-token-of-nobody-{uuid.uuid4().hex}"  # the plan refuses it, like an expired job token
    assert s.gate(build, "dev", plan, wrong).status_code == 200
    s.wait("the refused callback counted", lambda: refused._value.get() > before)
    record = s.wait_record(421, "dev", "done although the callback was refused", lambda r: r["state"] == "done")
    assert record["verdict"] == "succeeded"
    assert s.completed(plan) == []
    # the token is nowhere: not in a record, an answer, Redis (once the gate is over) or a log line
    assert wrong not in json.dumps(s.records())
    import redis as sync_redis

    with sync_redis.Redis.from_url(s.redis_url) as r:
        for key in r.scan_iter(match=f"{KEY_PREFIX}:*"):
            value = r.dump(key) or b""
            assert wrong.encode() not in value, key
    assert wrong not in caplog.text
