"""A real Prometheus (Debian's `prometheus`, on a loopback port) scrapes a running web and a real worker process with
the chart's rules loaded. After a short scenario (one success, one failure and its fix, three unauthorized webhooks)
every alert and every dashboard expression is queried through Prometheus' HTTP API: the expected alerts are firing or
pending, the others evaluate to nothing, and every panel returns data except those in EXCEPTIONS."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_chart import CHART, NAMESPACE, render

from .conftest import Stack, StackFactory, free_port

pytestmark = pytest.mark.slow

INSTALL = "apt-get install -y prometheus   # or: make tools"
# The alerts this scenario must raise (firing, or pending while their `for:` runs).
EXPECTED = {"GitopsBridgeDeploymentsFailing", "GitopsBridgeWebhookErrors"}
# Everything else the scenario cannot raise, with the reason. The test reads this table and nothing else.
EXCEPTIONS: dict[str, str] = {
    "alert:GitopsBridgeDown": "both roles are up and scraped",
    "alert:GitopsBridgeWorkersNotConsuming": "the worker takes every ready job within a second",
    "alert:GitopsBridgeQueueBacklog": "never 50 ready jobs",
    "alert:GitopsBridgeDeploymentsStuck": "no deployment stays 30 minutes in a state",
    "alert:GitopsBridgePullRequestsWaiting": "no pull request in the scenario",
    "alert:GitopsBridgeReportsFailing": "the Azure DevOps fake accepts every report",
    "alert:GitopsBridgeGateCallbacksFailing": "the scenario makes no pipeline-gate call",
    "alert:GitopsBridgeRollbackFailed": "no rollback in the scenario",
    "alert:GitopsBridgeWebhooksLost": "every build arrives by webhook (the reconciler is off)",
}
# Grafana's variables, as the dashboard would expand them over the scenario.
VARIABLES = {"$namespace": NAMESPACE, "$__rate_interval": "5m", "$__range_s": "600", "$__range": "10m"}


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (Debian's prometheus package): {INSTALL}")
    return found


class Prometheus:
    def __init__(self, root: Path, rules: dict[str, Any], targets: dict[str, str]) -> None:
        root.mkdir()
        (root / "rules.yaml").write_text(yaml.safe_dump({"groups": rules["groups"]}, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(root / "rules.yaml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target],
                                                                     "labels": {"namespace": NAMESPACE}}]}
                               for job, target in targets.items()],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with (self.root / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'data'}", f"--web.listen-address={self.url[7:]}",
                 "--storage.tsdb.retention.time=1h"], stdout=log, stderr=subprocess.STDOUT)
        self.wait("Prometheus ready", lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def wait(self, what: str, probe: Any, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = probe()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                log = (self.root / "prometheus.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"gave up waiting for {what}; prometheus log:\n{log}")
            time.sleep(0.2)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> dict[str, str]:
        body = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()
        return {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[list[Prometheus]]:
    started: list[Prometheus] = []
    yield started
    for p in started:
        p.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((CHART / "dashboards" / "gitops-bridge.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((f"panel:{panel['title']}/{target['refId']}", expr))
    return out


def test_alerts_and_dashboard_against_a_real_prometheus(stack: StackFactory, prometheus: list[Prometheus],
                                                         tmp_path: Path) -> None:
    binary("prometheus")
    (tmp_path / "helm").mkdir()
    rendered = render(tmp_path / "helm", {"rules": {"metrics": {"prometheusRule": {"enabled": True}}}})["rules"]
    (spec,) = [d["spec"] for d in rendered["docs"] if d["kind"] == "PrometheusRule"]

    s: Stack = stack(worker=False)  # the web app in-process, the worker a real `gitops-bridge worker`
    worker = s.spawn_worker("worker-1")
    web_target, worker_target = s.url.removeprefix("http://"), f"127.0.0.1:{worker.port}"
    prom = Prometheus(tmp_path / "prometheus", spec, {"gitops-bridge": web_target,
                                                       "gitops-bridge-worker-metrics": worker_target})
    prometheus.append(prom.start())
    # both processes scraped once before anything happens: every series has its 0 sample
    prom.wait("both targets up", lambda: len(prom.query("up == 1")) == 2)

    # the scenario: one success, one failure (then its fix), three unauthorized webhooks
    s.argocd.script("search-dev", degrade=True)
    assert s.post(s.build(500, "cart")).status_code == 202
    assert s.post(s.build(501, "search")).status_code == 202
    for _ in range(3):
        assert s.http.post(f"{s.url}/webhooks/azure-devops", json={"eventType": "build.complete"}).status_code == 401
    assert s.wait_finished(500, "dev")["verdict"] == "succeeded"
    assert s.wait_finished(501, "dev")["verdict"] == "failed"
    # ... and its fix: the next build of search succeeds in dev, which restores the environment (time to restore)
    s.argocd.script("search-dev", health_sequence=["Progressing", "Healthy"])
    assert s.post(s.build(502, "search")).status_code == 202
    assert s.wait_finished(502, "dev")["verdict"] == "succeeded"

    # the expected alerts rise (firing, or pending while their `for:` runs) ...
    raised = prom.wait(f"alerts {sorted(EXPECTED)}", lambda: (a := prom.alerts()) and EXPECTED <= a.keys() and a)
    assert raised["GitopsBridgeDeploymentsFailing"] == "firing"  # for: 0m — the first failure fires at once
    assert raised["GitopsBridgeWebhookErrors"] in ("pending", "firing")
    # ... and every other alert's expression evaluates, to nothing, for the reason given
    for group in spec["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and rule["alert"] not in EXPECTED:
                assert f"alert:{rule['alert']}" in EXCEPTIONS, rule["alert"]
                assert rule["alert"] not in raised and prom.query(rule["expr"]) == [], rule["alert"]
    assert prom.query('bridge_deployments_total{job="gitops-bridge-worker-metrics", verdict="failed", '
                      'environment="dev"}')[0]["value"][1] == "1"

    # every dashboard expression returns data, except those listed with their reason
    empty = [name for name, expr in dashboard_queries() if not prom.query(expr)]
    listed = sorted(k for k in EXCEPTIONS if k.startswith("panel:"))
    assert empty == listed, f"panels without data: {empty}"
    # the DORA recording rules have data too
    dora = next(g for g in spec["groups"] if g["name"] == "gitops-bridge-dora")
    for rule in dora["rules"]:
        prom.wait(rule["record"], lambda r=rule: prom.query(r["record"]), timeout=10)
