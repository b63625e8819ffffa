"""The chart's PrometheusRule, rendered by Helm (tests/test_chart.py machinery) and checked by Prometheus' own promtool:
`promtool check rules` on every rendered value set, and `promtool test rules` (tests/promtool/alerts.test.yaml) proving
that each alert fires when it should (the first failure after a restart included) and not when it should not (a pull
request in review, deferred jobs, one bad request at night)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_chart import CHART, NAMESPACE, RELEASE, render

from bridge import metrics

ROOT = Path(__file__).resolve().parents[1]
UNIT_TESTS = ROOT / "tests" / "promtool" / "alerts.test.yaml"
DORA_TESTS = ROOT / "tests" / "promtool" / "dora.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
INSTALL = "apt-get install -y prometheus   # or: make tools"

# values key under metrics.prometheusRule.alerts -> alert name
ALERTS = {
    "deploymentsFailing": "GitopsBridgeDeploymentsFailing",
    "webhookErrors": "GitopsBridgeWebhookErrors",
    "down": "GitopsBridgeDown",
    "workersNotConsuming": "GitopsBridgeWorkersNotConsuming",
    "queueBacklog": "GitopsBridgeQueueBacklog",
    "deploymentsStuck": "GitopsBridgeDeploymentsStuck",
    "pullRequestsWaiting": "GitopsBridgePullRequestsWaiting",
    "gateCallbacksFailing": "GitopsBridgeGateCallbacksFailing",
    "reportsFailing": "GitopsBridgeReportsFailing",
    "rollbackFailed": "GitopsBridgeRollbackFailed",
    "webhooksLost": "GitopsBridgeWebhooksLost",
}
TUNED = {
    "metrics": {"prometheusRule": {
        "enabled": True,
        "alertLabels": {"team": "platform"},
        "alertAnnotations": {"dashboard": "https://grafana.example.com/d/gitops-bridge"},
        "runbookUrl": "https://wiki.example.com/gitops-bridge",
        "jobRegex": "bridge-.*",
        "alerts": {"down": {"enabled": False}, "webhooksLost": {"enabled": False},
                   "queueBacklog": {"threshold": 500, "for": "30m", "severity": "critical"},
                   "deploymentsStuck": {"states": "writing|verifying", "seconds": 3600}},
        "additionalRules": [{"alert": "MyBridgeAlert", "expr": "vector(1) > 2", "labels": {"severity": "info"}}],
        "additionalGroups": [{"name": "mine", "rules": [{"record": "my:bridge_queue_depth:max",
                                                         "expr": "max(bridge_queue_depth)"}]}],
        "dora": {"enabled": False},
    }},
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(f"promtool is not installed (Debian's prometheus package): {INSTALL}")
    return found


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The PrometheusRule `spec` of each value set: the defaults (enabled), the full CI values, a tuned set."""
    cases = {
        "defaults": {"metrics": {"prometheusRule": {"enabled": True}}},
        "full-values": yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text()),
        "tuned": TUNED,
        "no-worker-metrics": {"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}},
    }
    results = render(tmp_path_factory.mktemp("helm-rules"), cases)
    out = {}
    for name, result in results.items():
        assert "error" not in result, result.get("error")
        (rule,) = [d for d in result["docs"] if d["kind"] == "PrometheusRule"]
        assert rule["metadata"]["name"] == RELEASE
        out[name] = rule["spec"]
    return out


def alerts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in spec["groups"] for r in group["rules"] if "alert" in r}


def write_rules(spec: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path


@pytest.mark.parametrize("case", ["defaults", "full-values", "tuned", "no-worker-metrics"])
def test_promtool_accepts_the_rendered_rules(rules: dict[str, dict[str, Any]], case: str, tmp_path: Path) -> None:
    path = write_rules(rules[case], tmp_path / "rules.yaml")
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def promtool_unit_tests(spec: dict[str, Any], tests: Path, tmp_path: Path) -> None:
    """Run `promtool test rules` on `tests` next to the rendered rules (the tests name them `rules.yaml`)."""
    write_rules(spec, tmp_path / "rules.yaml")
    shutil.copy(tests, tmp_path / tests.name)
    proc = subprocess.run([promtool(), "test", "rules", str(tmp_path / tests.name)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_of_every_alert(rules: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    promtool_unit_tests(rules["defaults"], UNIT_TESTS, tmp_path)
    # every alert has a case where it fires, and the promised "must not fire" cases exist
    firing = {t["alertname"] for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
              for t in test["alert_rule_test"] if t["exp_alerts"]}
    assert firing == set(alerts(rules["defaults"])) == set(ALERTS.values())
    names = [test["name"] for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]]
    for promise in ("first failure after a restart", "pull request in review", "deferred jobs", "bad request at night"):
        assert any(promise in name for name in names), promise


def test_promtool_unit_tests_of_the_dora_rules(rules: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    promtool_unit_tests(rules["defaults"], DORA_TESTS, tmp_path)


def test_every_alert_is_actionable(rules: dict[str, dict[str, Any]]) -> None:
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.MULTILINE)}
    exported = exported_metric_names()
    for name, alert in alerts(rules["full-values"]).items():
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), name
        assert re.fullmatch(r"[0-9]+[smhdw]", alert["for"]), name
        assert alert["labels"]["team"] == "platform" and alert["annotations"]["summary"], name
        url = alert["annotations"]["runbook_url"]
        assert url.endswith(f"docs/operations.md#{name.lower()}") and name.lower() in anchors, name
        expr = alert["expr"]
        assert f'namespace="{NAMESPACE}"' in expr, name
        used = set(re.findall(r"\bbridge_[a-z_]+", expr))
        assert used and used <= exported, f"{name}: {used - exported}"
        assert "increase(" not in expr or "[30m]" in expr or "[1h]" in expr, name  # the window of full-values
    # Prometheus' own templates survive Helm's templating.
    full = alerts(rules["full-values"])
    assert "{{ $labels.environment }}" in full["GitopsBridgeDeploymentsFailing"]["annotations"]["summary"]
    assert "{{ $value | humanizeDuration }}" in full["GitopsBridgeDeploymentsStuck"]["annotations"]["summary"]
    # awaiting-merge is a pull request in review: never "stuck"
    assert "awaiting-merge" not in full["GitopsBridgeDeploymentsStuck"]["expr"]
    assert 'job=~"gitops-bridge|gitops-bridge-worker-metrics"' in full["GitopsBridgeDown"]["expr"]


def test_every_alert_can_be_tuned_disabled_and_extended(rules: dict[str, dict[str, Any]]) -> None:
    tuned = alerts(rules["tuned"])
    assert set(tuned) == set(ALERTS.values()) - {"GitopsBridgeDown", "GitopsBridgeWebhooksLost"} | {"MyBridgeAlert"}
    backlog = tuned["GitopsBridgeQueueBacklog"]
    assert backlog["expr"].endswith("> 500") and backlog["for"] == "30m" and backlog["labels"]["severity"] == "critical"
    assert 'state=~"writing|verifying"}) > 3600' in tuned["GitopsBridgeDeploymentsStuck"]["expr"]
    for name in set(tuned) - {"MyBridgeAlert"}:
        assert tuned[name]["labels"]["team"] == "platform"
        assert tuned[name]["annotations"]["dashboard"] == "https://grafana.example.com/d/gitops-bridge"
        assert tuned[name]["annotations"]["runbook_url"] == f"https://wiki.example.com/gitops-bridge#{name.lower()}"
    groups = [g["name"] for g in rules["tuned"]["groups"]]
    assert groups == ["gitops-bridge", "mine"]  # DORA rules off, the user's group appended
    assert [g["name"] for g in rules["defaults"]["groups"]] == ["gitops-bridge", "gitops-bridge-dora"]
    # without the worker metrics Service no worker is scraped: only the web is required to be present
    down = alerts(rules["no-worker-metrics"])["GitopsBridgeDown"]["expr"]
    assert 'role="web"' in down and 'role="worker"' not in down


def test_dora_recording_rules(rules: dict[str, dict[str, Any]]) -> None:
    (dora,) = [g for g in rules["defaults"]["groups"] if g["name"] == "gitops-bridge-dora"]
    records = {r["record"]: r["expr"] for r in dora["rules"]}
    assert set(records) == {"environment:bridge_deployment_frequency:increase1d",
                            "environment:bridge_change_failure_rate:ratio_7d",
                            "span:bridge_lead_time_seconds:p50_7d", "span:bridge_lead_time_seconds:p90_7d",
                            "environment:bridge_time_to_restore_seconds:p50_7d",
                            "environment:bridge_time_to_restore_seconds:p90_7d"}
    assert 'verdict=~"succeeded|pushed"' in records["environment:bridge_deployment_frequency:increase1d"]


def exported_metric_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names
