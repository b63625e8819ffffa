"""The pipeline gate's pure parts: the call (headers and body) as tables, the progress lines, the run-time scrubber."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from bridge.gate import Refused, parse_call
from bridge.logs import SecretFilter, forget_secret, remember_secret
from bridge.organizations import Organization
from bridge.records import DeploymentRecord
from bridge.routing import parse_routing
from workers.gate import AppView, callback_result, is_final, progress_lines

ROUTING = parse_routing({
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [
        {"name": "api", "match": {"project": "Acme", "definition": "api-ci"}, "environments": [
            {"name": "dev", "repository": "gitops", "file": "api/dev.yaml"},
            {"name": "prod", "repository": "gitops", "file": "api/prod.yaml", "after": "dev", "trigger": "gate"},
        ]},
        {"name": "web", "match": {"project": "Acme", "definition": "web-ci"}, "environments": [
            {"name": "dev", "repository": "gitops", "file": "web/dev.yaml"},
        ]},
    ],
})
ORGS = [Organization(name="acme", url="https://dev.azure.com/acme/")]
G = [str(uuid.uuid4()) for _ in range(5)]


def headers(**change: str) -> dict[str, str]:
    base = {"PlanUrl": "https://dev.azure.com/acme/", "ProjectId": G[0], "HubName": "build", "PlanId": G[1],
            "JobId": G[2], "TimelineId": G[3], "TaskInstanceId": G[4], "AuthToken": "job-token-1234567890"}
    return {k: v for k, v in {**base, **change}.items() if v}


def test_a_good_call() -> None:
    gate, token = parse_call("gate", headers(), {"buildId": "42", "environment": "prod", "route": "api"}, ROUTING,
                             ORGS, 1000.0)
    assert token == "job-token-1234567890"
    assert (gate.organization, gate.build_id, gate.route, gate.environment, gate.timeout_minutes) == (
        "acme", 42, "api", "prod", 60)
    assert gate.build_key == f"acme:{G[0]}:42"
    assert gate.job_deadline == 1000.0 + 3600
    assert "job-token" not in str(gate.to_json())
    # the same call is the same gate; another task instance is another gate of the same deployment
    again, _ = parse_call("gate", headers(), {"buildId": 42, "environment": "prod", "route": "api"}, ROUTING, ORGS, 5.0)
    other, _ = parse_call("gate", headers(TaskInstanceId=str(uuid.uuid4())),
                          {"buildId": 42, "environment": "prod", "route": "api"}, ROUTING, ORGS, 5.0)
    assert again.id == gate.id and other.id != gate.id and other.deployment == gate.deployment


def test_the_visualstudio_url_of_a_configured_organization_is_the_same_organization() -> None:
    gate, _ = parse_call("gate", headers(PlanUrl="https://acme.visualstudio.com/"),
                         {"buildId": "1", "environment": "prod"}, ROUTING, ORGS, 0.0)
    assert gate.organization == "acme" and gate.route == "api"  # prod: only one route has it


@pytest.mark.parametrize(("hdrs", "body", "status", "message"), [
    (headers(PlanUrl="https://dev.azure.com/evil/"), {"buildId": "1", "environment": "dev"}, 403, "not a configured"),
    (headers(PlanUrl="http://127.0.0.1:9/"), {"buildId": "1", "environment": "dev"}, 403, "not a configured"),
    (headers(AuthToken=""), {"buildId": "1", "environment": "dev"}, 400, "missing header(s) AuthToken"),
    (headers(PlanId="not-a-guid"), {"buildId": "1", "environment": "dev"}, 400, "PlanId must be a GUID"),
    (headers(), ["buildId"], 400, "body must be a JSON object"),
    (headers(), {"buildId": "1"}, 400, "'environment'"),
    (headers(), {"buildId": "1", "environment": "dev"}, 400, "name the route in the body"),
    (headers(), {"buildId": "-1", "environment": "prod"}, 400, "'buildId' must be a whole number"),
    (headers(), {"buildId": True, "environment": "prod"}, 400, "'buildId' must be a whole number"),
    (headers(), {"buildId": "1", "environment": "prod", "timeoutMinutes": "0"}, 400, "between 1 and"),
    (headers(), {"buildId": "1", "environment": "qa", "route": "api"}, 400,
     "route 'api' has no environment 'qa' (environments: dev, prod)"),
])
def test_refusals(hdrs: dict[str, str], body: Any, status: int, message: str) -> None:
    with pytest.raises(Refused) as exc:
        parse_call("gate", hdrs, body, ROUTING, ORGS, 0.0)
    assert exc.value.status == status
    assert message in exc.value.reason
    assert "job-token" not in exc.value.reason


def test_a_check_needs_after_and_the_checks_hub() -> None:
    with pytest.raises(Refused, match="HubName must be checks"):
        parse_call("check", headers(), {"buildId": "1", "environment": "prod"}, ROUTING, ORGS, 0.0)
    with pytest.raises(Refused, match="has no 'after:'"):
        parse_call("check", headers(HubName="checks"), {"buildId": "1", "environment": "dev", "route": "api"},
                   ROUTING, ORGS, 0.0)
    gate, _ = parse_call("check", headers(HubName="checks"), {"buildId": "1", "environment": "prod"}, ROUTING, ORGS,
                         0.0)
    assert gate.kind == "check" and gate.hub == "checks"


@pytest.mark.parametrize(("verdict", "result"), [("succeeded", "succeeded"), ("pushed", "succeeded"),
                                                 ("failed", "failed"), ("timed-out", "failed"),
                                                 ("rejected", "failed"), ("held", "failed"),
                                                 ("superseded", "failed")])
def test_callback_results(verdict: str, result: str) -> None:
    assert callback_result(verdict) == result


def test_progress_lines_grow_with_the_deployment() -> None:
    gate, _ = parse_call("gate", headers(), {"buildId": "42", "environment": "prod"}, ROUTING, ORGS, 0.0)
    assert [k for k, _ in progress_lines(gate, None, "dev")] == ["waiting"]
    record = DeploymentRecord(id="d", build_key="k", build_id=42, route="api", environment="prod", repository="gitops",
                              file="api/prod.yaml", keys=["image.tag"], tag="42", old_tags={"image.tag": "41"},
                              commit_sha="a" * 40, state="done", verdict="pushed", reason="no Argo CD application")
    lines = dict(progress_lines(gate, record, "dev"))
    assert lines["commit"] == "committed aaaaaaaaaa to gitops:api/prod.yaml (image.tag: 41 → 42)"
    assert lines["verdict"].startswith("verdict: pushed (not verified")


def _record(**fields: Any) -> DeploymentRecord:
    base: dict[str, Any] = dict(id="d", build_key="k", build_id=42, route="api", environment="prod",
                                repository="gitops", file="api/prod.yaml", keys=["image.tag"], tag="42",
                                old_tags={"image.tag": "41"}, commit_sha="b" * 40, state="verifying",
                                argocd_app="default/api-eu, api-us")
    return DeploymentRecord(**{**base, **fields})


def test_each_application_of_an_estate_gets_its_own_lines() -> None:
    gate, _ = parse_call("gate", headers(), {"buildId": "42", "environment": "prod"}, ROUTING, ORGS, 0.0)
    apps = {"api-us": AppView(snapshot="sync Synced at bbbbbbb; health Progressing; no operation"),
            "api-eu": AppView("failed", "Degraded: Deployment api/api: Degraded", "")}
    lines = dict(progress_lines(gate, _record(), "dev", apps))
    assert lines["argocd"] == "Argo CD apps default/api-eu, api-us: waiting for sync and health at bbbbbbbbbb"
    assert lines["argocd:api-us:sync Synced at bbbbbbb; health Progressing"] == \
        "Argo CD app api-us: sync Synced at bbbbbbb; health Progressing"
    assert lines["app:api-eu:failed"] == "Argo CD app api-eu: failed — Degraded: Deployment api/api: Degraded"
    assert not any(is_final(k) for k in lines)


def test_the_verdict_lists_each_application_the_failed_first() -> None:
    gate, _ = parse_call("gate", headers(), {"buildId": "42", "environment": "prod"}, ROUTING, ORGS, 0.0)
    record = _record(state="reporting", verdict="failed", reason="api-us: Degraded", details={"argocd": {"apps": {
        "api-eu": {"state": "succeeded", "reason": "bbbbbbb synced and Healthy"},
        "api-us": {"state": "failed", "reason": "Degraded"}, "api-ap": {"state": "waiting", "reason": ""}}}})
    final = [(k, line) for k, line in progress_lines(gate, record, "dev") if is_final(k)]
    assert [line for _, line in final] == [
        "  Argo CD app api-us: failed — Degraded", "  Argo CD app api-ap: waiting",
        "  Argo CD app api-eu: succeeded — bbbbbbb synced and Healthy", "verdict: failed — api-us: Degraded"]
    # a single application: its snapshot follows the verdict, as before
    single = _record(state="reporting", verdict="failed", reason="Degraded", argocd_app="api-prod",
                     details={"argocd": {"snapshot": "sync Synced at bbbbbbb; health Degraded"}})
    assert [line for k, line in progress_lines(gate, single, "dev") if is_final(k)] == [
        "verdict: failed — Degraded", "Argo CD: sync Synced at bbbbbbb; health Degraded"]


def test_a_token_learnt_at_run_time_is_scrubbed_until_forgotten() -> None:
    scrubber = SecretFilter(["configured-secret"])
    remember_secret("job-token-abcdef123456")
    try:
        record = logging.LogRecord("x", logging.INFO, "", 0, "calling back with %s", ("job-token-abcdef123456",),
                                   None)
        scrubber.filter(record)
        assert "job-token" not in record.getMessage()
        assert SecretFilter([]).scrub("job-token-abcdef123456") == "***"
    finally:
        forget_secret("job-token-abcdef123456")
    assert SecretFilter([]).scrub("job-token-abcdef123456") == "job-token-abcdef123456"
