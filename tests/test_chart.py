"""The Helm chart: values vs schema vs templates, and Helm's own lint and rendering through helm-sdkpy.

helm-sdkpy bundles Helm's Go library but needs Python >= 3.12, so the Helm half runs in its own venv
(`.cache/helm-venv/`, made by `make install`) through a subprocess: one run lints and renders every value set.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from bridge import metrics
from bridge.routing import parse_routing
from bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "gitops-bridge"
CACHE = ROOT / ".cache"
HELM_VENV = CACHE / "helm-venv"
HELM_SDKPY = "helm-sdkpy==0.1.32"
RELEASE, NAMESPACE = "gitops-bridge", "bridge"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
# Schema objects deliberately left open: Kubernetes or app-owned structures passed through as they are.
PASSTHROUGH = {("global",), ("config", "routing")} | {
    (role, *path) for role in ("web", "worker")
    for path in [("affinity",), ("topologySpreadConstraints", "[]"), ("extraEnv", "[]", "valueFrom"),
                 ("envFrom", "[]"), ("extraVolumes", "[]"), ("extraVolumeMounts", "[]"), ("extraContainers", "[]"),
                 ("initContainers", "[]"), ("dnsConfig",)]
} | {("metrics", "serviceMonitor", key) for key in ("tlsConfig",)} | {
    ("metrics", "serviceMonitor", key, "[]") for key in ("relabelings", "metricRelabelings")
} | {("networkPolicy", key, "[]") for key in ("extraIngress", "extraEgress")} | {
    ("metrics", "prometheusRule", "additionalRules", "[]"), ("metrics", "prometheusRule", "additionalGroups", "[]")}
# Schema properties without a default in values.yaml (optional hardening knobs and Helm's `global`).
OPTIONAL = {
    ("global",), ("podSecurityContext", "supplementalGroups"),
    ("podSecurityContext", "seccompProfile", "localhostProfile"),
    ("securityContext", "runAsUser"), ("securityContext", "runAsGroup"), ("securityContext", "capabilities", "add"),
    ("securityContext", "seccompProfile", "localhostProfile"),
}
# Value sets that must fail, with the message Helm gives.
# Value sets that must fail: values, Helm's message, whether lint catches it too (lint tolerates `required`).
BROKEN = {
    "misspelled-key": ({"web": {"replica": 3}}, "additional properties 'replica' not allowed", True),
    "no-redis": ({"redis": {"url": ""}}, "set redis.url or redis.existingSecret", False),
}

DRIVER = '''\
"""Lint and render a Helm chart with helm-sdkpy (Helm's Go library), outside any cluster.

`HELM_DRIVER=memory python driver.py request.json result.json`. Rendering is Helm's install action against a
loopback fake of the Kubernetes API (discovery answers, creates echoed back) with the in-memory release driver,
so the manifests are exactly what `helm install` would send.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_GROUPS: dict[str, dict[str, list[tuple[str, str, bool]]]] = {
    "": {"v1": [("configmaps", "ConfigMap", True), ("services", "Service", True), ("secrets", "Secret", True),
                ("serviceaccounts", "ServiceAccount", True), ("persistentvolumeclaims", "PersistentVolumeClaim", True),
                ("namespaces", "Namespace", False)]},
    "apps": {"v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)]},
    "batch": {"v1": [("jobs", "Job", True)]},
    "policy": {"v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)]},
    "autoscaling": {"v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)]},
    "networking.k8s.io": {"v1": [("ingresses", "Ingress", True), ("networkpolicies", "NetworkPolicy", True)]},
    "monitoring.coreos.com": {"v1": [("servicemonitors", "ServiceMonitor", True),
                                     ("prometheusrules", "PrometheusRule", True)]},
}


class FakeKubeAPI(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                       "preferredVersion": {"groupVersion": f"{g}/{next(iter(vs))}", "version": next(iter(vs))}}
                      for g, vs in API_GROUPS.items() if g]
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for group, versions in API_GROUPS.items():
            for version, resources in versions.items():
                gv = f"{group}/{version}" if group else version
                if path == (f"/apis/{gv}" if group else f"/api/{version}"):
                    return self._send(200, {
                        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                        "resources": [{"name": n, "singularName": k.lower(), "namespaced": ns, "kind": k,
                                       "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                                      for n, k, ns in resources]})
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                         "code": 404, "message": "not found"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            self._send(201, json.loads(body or b"{}"))
        except ValueError:  # protobuf bodies (release records) are not echoed
            self._send(201, {})

    do_PUT = do_POST
    do_PATCH = do_POST

    def do_DELETE(self) -> None:
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


async def run_case(
    helm: Any, case: dict[str, Any], request: dict[str, Any], kubeconfig: str, work: str
) -> dict[str, Any]:
    result: dict[str, Any] = {"name": case["name"]}
    # Lint reads the chart's values.yaml only, so lint a copy whose values.yaml holds the merged values (JSON is YAML).
    copy = os.path.join(work, "lint-" + case["name"], os.path.basename(request["chart"]))
    shutil.copytree(request["chart"], copy)
    with open(os.path.join(copy, "values.yaml"), "w") as fh:
        fh.write(json.dumps(case["merged_values"]))
    config = helm.Configuration(namespace=request["namespace"], kubeconfig=kubeconfig)
    try:
        lint = await helm.Lint(config).run(copy)
        result["lint"] = {"messages": [{"severity": m.get("Severity"), "path": m.get("Path"), "err": str(m.get("Err"))}
                                       for m in lint.get("Messages") or []],
                          "errors": len(lint.get("Errors") or [])}
    except Exception as exc:  # noqa: BLE001 - reported to the test, which asserts on it
        result["lint"] = {"failed": f"{type(exc).__name__}: {exc}"}
    # Hooks would run against the fake API (and wait for their Job): render them as plain resources instead, with
    # the hook annotations renamed so the tests still see which resources are hooks.
    rendered = os.path.join(work, "render-" + case["name"], os.path.basename(request["chart"]))
    shutil.copytree(request["chart"], rendered)
    for name in os.listdir(os.path.join(rendered, "templates")):
        path = os.path.join(rendered, "templates", name)
        with open(path) as fh:
            text = fh.read()
        with open(path, "w") as fh:
            fh.write(text.replace('"helm.sh/hook', '"test.invalid/hook'))
    config = helm.Configuration(namespace=request["namespace"], kubeconfig=kubeconfig)
    try:
        release = await helm.Install(config).run(request["release"], rendered, values=case["values"] or None,
                                                 wait=False, timeout=30)
        result["manifest"] = release.get("manifest", "")
        result["notes"] = (release.get("info") or {}).get("notes", "")
    except Exception as exc:  # noqa: BLE001
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def main() -> None:
    # Go reads the environment when the library loads: the caller must start us with the in-memory release driver.
    if os.environ.get("HELM_DRIVER") != "memory":
        sys.exit("run with HELM_DRIVER=memory")
    with open(sys.argv[1]) as fh:
        request = json.load(fh)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKubeAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as work:
        kubeconfig = os.path.join(work, "kubeconfig")
        with open(kubeconfig, "w") as fh:
            fh.write(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
            }))
        import helm_sdkpy

        results = [asyncio.run(run_case(helm_sdkpy, case, request, kubeconfig, work)) for case in request["cases"]]
    server.shutdown()
    with open(sys.argv[2], "w") as fh:
        json.dump({"helm_sdkpy": helm_sdkpy.__version__, "results": results}, fh)


if __name__ == "__main__":
    main()
'''


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing: maps merge, everything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def _ci_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def _schema_node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The schema of a key path through `properties` only (None when the path is not a declared property)."""
    node = schema
    for key in path:
        node = node.get("properties", {}).get(key)
        if node is None:
            return None
    return node


def _object_nodes(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    found = []
    if node.get("type") == "object" or (isinstance(node.get("type"), list) and "object" in node["type"]):
        found.append((path, node))
    for key, child in node.get("properties", {}).items():
        found += _object_nodes(child, path + (key,))
    if isinstance(node.get("items"), dict):
        found += _object_nodes(node["items"], path + ("[]",))
    if isinstance(node.get("additionalProperties"), dict):
        found += _object_nodes(node["additionalProperties"], path + ("*",))
    return found


def _value_paths(values: dict[str, Any], schema: dict[str, Any], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths of values.yaml that the schema declares as properties (not entries of free-form maps)."""
    paths = set()
    for key, value in values.items():
        here = path + (key,)
        paths.add(here)
        node = _schema_node(schema, here)
        if isinstance(value, dict) and node is not None and "properties" in node:
            paths |= _value_paths(value, schema, here)
    return paths


def _documented_keys(text: str) -> dict[tuple[str, ...], bool]:
    """Every mapping key of a values file (outside lists) and whether a `# --` comment block sits right above it."""
    found: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str | None]] = []
    comments: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comments = []
            continue
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        match = re.match(r"([A-Za-z0-9_./-]+):(\s|$)", stripped)
        if stripped.startswith("-"):
            stack.append((indent, None))
        elif match:
            if all(key is not None for _, key in stack):
                found[tuple(key for _, key in stack if key) + (match.group(1),)] = any(
                    c.startswith("# --") for c in comments
                )
            stack.append((indent, match.group(1)))
        comments = []
    return found


def _template_value_refs() -> set[tuple[str, ...]]:
    refs = set()
    for template in (CHART / "templates").iterdir():
        for match in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()):
            refs.add(tuple(match.group(1).strip(".").split(".")))
    return refs


# --- values, schema, documentation --------------------------------------------------------------------------------


@pytest.mark.parametrize("value_file", [None, *CI_FILES], ids=lambda p: p.name if p else "values.yaml")
def test_values_validate_against_the_schema(value_file: Path | None) -> None:
    values = _merge(_defaults(), _ci_values(value_file) if value_file else {})
    jsonschema.Draft7Validator.check_schema(_schema())
    jsonschema.Draft7Validator(_schema()).validate(values)


@pytest.mark.parametrize(
    "override",
    [{"web": {"replica": 3}}, {"replicas": 2}, {"metrics": {"serviceMonitor": {"enable": True}}},
     {"podSecurityContext": {"seccompProfile": {"typ": "RuntimeDefault"}}}, {"image": {"pullPolicy": "Sometimes"}},
     {"redis": {"url": "localhost:16379"}}, {"ingress": {"hosts": [{"host": "x", "paths": [{"path": "webhooks"}]}]}}],
)
def test_schema_rejects_misspelled_or_invalid_values(override: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(_schema()).validate(_merge(_defaults(), override))


def test_schema_closes_every_object() -> None:
    for path, node in _object_nodes(_schema()):
        assert "additionalProperties" in node, f"{'.'.join(path) or '<root>'}: additionalProperties not set"
        if node["additionalProperties"] is True:
            assert path in PASSTHROUGH, f"{'.'.join(path)} is open but not a declared pass-through"
        if "properties" in node:
            assert node["additionalProperties"] is False, ".".join(path)


def test_values_and_schema_declare_the_same_keys() -> None:
    schema = _schema()
    in_values = _value_paths(_defaults(), schema)
    missing_from_schema = {p for p in in_values if _schema_node(schema, p) is None}
    assert not missing_from_schema
    declared = {p for p, node in _walk_properties(schema)}
    assert declared - in_values == OPTIONAL


def _walk_properties(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    found = []
    for key, child in node.get("properties", {}).items():
        found.append((path + (key,), child))
        found += _walk_properties(child, path + (key,))
    return found


def test_every_value_is_documented() -> None:
    schema = _schema()
    documented = _documented_keys((CHART / "values.yaml").read_text())
    # Values are the leaves and free-form maps; sections (objects with properties) group them.
    declared = {p for p in _value_paths(_defaults(), schema) if "properties" not in (_schema_node(schema, p) or {})}
    assert declared <= documented.keys()
    assert [".".join(p) for p in sorted(declared) if not documented[p]] == []


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    schema = _schema()
    for path in _value_paths(_defaults(), schema):
        if "properties" not in (_schema_node(schema, path) or {}):
            assert f"| `{'.'.join(path)}` |" in readme, ".".join(path)


def test_templates_use_only_declared_values() -> None:
    refs = _template_value_refs()
    assert ("redis", "existingSecretKey") in refs  # the scan sees the templates
    defaults, schema = _defaults(), _schema()
    for ref in refs:
        node: Any = defaults
        for key in ref:
            assert isinstance(node, dict) and key in node, f".Values.{'.'.join(ref)} is not in values.yaml"
            node = node[key]
        assert _schema_node(schema, ref) is not None, f".Values.{'.'.join(ref)} is not in values.schema.json"


def test_settings_keys_name_real_settings() -> None:
    for path in CI_FILES:
        for key in _ci_values(path).get("config", {}).get("settings", {}):
            assert _is_setting(key), f"{path.name}: config.settings.{key} is not a gitops-bridge setting"


def _is_setting(name: str) -> bool:
    model: Any = Settings
    parts = name.lower().split("__")
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if depth < len(parts) - 1:
            model = field.annotation
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                return False
    return True


# --- helm-sdkpy: Helm's own lint and rendering ----------------------------------------------------------------------


def _helm_python() -> Path:
    """The python of `.cache/helm-venv` with helm-sdkpy, which `make install` makes (the tests never download)."""
    python, stamp = HELM_VENV / "bin" / "python", HELM_VENV / ".installed"
    if not (python.exists() and stamp.exists() and stamp.read_text().strip() == HELM_SDKPY):
        pytest.fail(f"{HELM_SDKPY} is not installed in {HELM_VENV.relative_to(ROOT)}: run `make install` "
                    "(it needs Python >= 3.12: python3.13, python3.12 or python3 on PATH, or HELM_PY=...)")
    return python


def render(work: Path, cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Lint and install (rendering only) of each named value set (merged over values.yaml) in one helm-sdkpy run:
    name -> {lint, manifest | error, notes, docs}. Other test modules render their own value sets with it."""
    defaults = _defaults()
    request = [{"name": name, "values": values, "merged_values": _merge(defaults, values)}
               for name, values in cases.items()]
    (work / "driver.py").write_text(DRIVER)
    (work / "request.json").write_text(json.dumps(
        {"chart": str(CHART), "namespace": NAMESPACE, "release": RELEASE, "cases": request}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))}
    env.update(HELM_DRIVER="memory", HELM_CACHE_HOME=str(work / "cache"), HELM_CONFIG_HOME=str(work / "config"),
               HELM_DATA_HOME=str(work / "data"))
    proc = subprocess.run(
        [str(_helm_python()), str(work / "driver.py"), str(work / "request.json"), str(work / "result.json")],
        capture_output=True, text=True, timeout=100, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["name"]: r for r in json.loads((work / "result.json").read_text())["results"]}
    for result in results.values():
        result["docs"] = [d for d in yaml.safe_load_all(result.get("manifest") or "") if d]
    return results


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Lint and install (rendering only) of every value set: name -> {lint, manifest | error, docs}."""
    cases = {p.stem: _ci_values(p) for p in CI_FILES}
    cases |= {name: values for name, (values, _, _) in BROKEN.items()}
    return render(tmp_path_factory.mktemp("helm"), cases)


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


CASES = [p.stem for p in CI_FILES]
OURS = ("web", "worker", "check-config")  # the chart's own containers (extraContainers are the user's)


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_passes(helm: dict[str, dict[str, Any]], case: str) -> None:
    lint = helm[case]["lint"]
    assert "failed" not in lint, lint
    # Severity 1 is INFO (e.g. "icon is recommended"); 2 is WARNING and 3 ERROR.
    assert [m for m in lint["messages"] if m["severity"] >= 2] == [] and lint["errors"] == 0


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_helm_rejects_broken_values(helm: dict[str, dict[str, Any]], case: str) -> None:
    _, message, lint_fails = BROKEN[case]
    result = helm[case]
    assert (result["lint"]["errors"] >= 1) is lint_fails
    assert "manifest" not in result and message in result["error"]


@pytest.mark.parametrize("case", CASES)
def test_rendered_pods_are_hardened(helm: dict[str, dict[str, Any]], case: str) -> None:
    deployments = _kind(helm[case]["docs"], "Deployment")
    assert len(deployments) == 2
    for workload in deployments + _kind(helm[case]["docs"], "Job"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in [c for c in pod["containers"] if c["name"] in OURS]:  # not the user's sidecars
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert {m["name"] for m in mounts.values()} <= volumes.keys()
            # Read-only root filesystem: everything the process writes is a volume.
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]] and not mounts["/tmp"].get("readOnly")
            assert _env(container)["HOME"]["value"] == "/tmp"
            assert mounts["/etc/gitops-bridge"]["readOnly"] is True


@pytest.mark.parametrize("case", CASES)
def test_probes_hit_the_health_endpoints(helm: dict[str, dict[str, Any]], case: str) -> None:
    docs = helm[case]["docs"]
    for deployment in _kind(docs, "Deployment"):
        (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] in OURS]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        assert live["port"] in ports and ready["port"] in ports
        if container["args"] == ["web"]:
            assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
            assert _env(container)["BRIDGE_PORT"]["value"] == str(ports["http"])
        else:
            assert container["args"] == ["worker"]
            # liveness: the loop turns (also while Redis is down); readiness: connected to Redis
            assert (live["path"], ready["path"]) == ("/healthz", "/readyz")
            assert _env(container)["BRIDGE_WORKER_METRICS_PORT"]["value"] == str(ports["metrics"])


@pytest.mark.parametrize("case", CASES)
def test_no_secret_is_rendered_inline(helm: dict[str, dict[str, Any]], case: str) -> None:
    docs = helm[case]["docs"]
    assert _kind(docs, "Secret") == []
    for deployment in _kind(docs, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for name, env in _env(container).items():
                if re.search(r"TOKEN|SECRET(?!S_DIR)|PASSWORD|BASIC", name):
                    assert "valueFrom" in env, name
                assert not re.search(r"://[^/\s]*:[^/\s]*@", str(env.get("value", ""))), name


@pytest.mark.parametrize("case", CASES)
def test_environment_names_real_settings(helm: dict[str, dict[str, Any]], case: str) -> None:
    for deployment in _kind(helm[case]["docs"], "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for name in _env(container):
                if name.startswith("BRIDGE_") and name != "BRIDGE_SECRETS_DIR":
                    assert _is_setting(name.removeprefix("BRIDGE_")), name


def test_default_release(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["default-values"]["docs"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "Job", "PodDisruptionBudget",
                     "PodDisruptionBudget", "Service", "Service", "ServiceAccount"]  # a ConfigMap + Job: the check hook
    web = _one(docs, "Deployment", f"{RELEASE}-web")["spec"]
    worker = _one(docs, "Deployment", f"{RELEASE}-worker")["spec"]
    assert web["replicas"] == 2 and worker["replicas"] == 1
    (web_container,) = web["template"]["spec"]["containers"]
    (worker_container,) = worker["template"]["spec"]["containers"]
    assert web_container["image"] == "ghcr.io/gitops-bridge/gitops-bridge:0.1.0"
    assert _env(web_container)["BRIDGE_REDIS_URL"]["value"] == "redis://redis-master:6379/0"
    assert _env(web_container)["BRIDGE_CONFIG"]["value"] == "/etc/gitops-bridge/bridge.yaml"
    assert "bridge.yaml" in _one(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    # No Secret named: nothing is mounted over the secrets directory, and NOTES says what to create.
    assert "/var/run/secrets/gitops-bridge" not in {m["mountPath"] for m in web_container["volumeMounts"]}
    assert "secrets.existingSecret is empty" in helm["default-values"]["notes"]
    repos = {m["mountPath"]: m["name"] for m in worker_container["volumeMounts"]}["/var/lib/gitops-bridge/repos"]
    volumes = {v["name"]: v for v in worker["template"]["spec"]["volumes"]}
    assert volumes[repos]["emptyDir"] == {"sizeLimit": "2Gi"}
    assert _env(worker_container)["BRIDGE_GIT__WORK_DIR"]["value"] == "/var/lib/gitops-bridge/repos"


@pytest.mark.parametrize(("case", "routes"), [("default-values", []), ("full-values", ["api-service"]),
                                               ("routing-text-values", ["web-frontend"])])
def test_routing_file_is_valid_for_the_bridge(helm: dict[str, dict[str, Any]], case: str, routes: list[str]) -> None:
    text = _one(helm[case]["docs"], "ConfigMap", f"{RELEASE}-config")["data"]["bridge.yaml"]
    assert [route.name for route in parse_routing(yaml.safe_load(text)).routes] == routes
    if case == "routing-text-values":
        assert text.startswith("# Routes kept in their own file")  # text goes in verbatim, comments included


def test_full_release(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["full-values"]["docs"]
    kinds = {d["kind"] for d in docs}
    assert {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} <= kinds
    web = _one(docs, "Deployment", f"{RELEASE}-web")["spec"]
    worker = _one(docs, "Deployment", f"{RELEASE}-worker")["spec"]
    assert "replicas" not in web  # the HPA owns it
    hpa = _one(docs, "HorizontalPodAutoscaler", f"{RELEASE}-web")["spec"]
    assert hpa["scaleTargetRef"]["name"] == f"{RELEASE}-web" and (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    (container,) = worker["template"]["spec"]["containers"]
    assert container["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert _env(container)["BRIDGE_REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "gitops-bridge-redis", "key": "url"}}
    assert _env(container)["BRIDGE_ARGOCD__URL"]["value"] == "https://argocd.example.com"
    assert _env(container)["BRIDGE_WORKER_MAX_JOBS"]["value"] == "20"
    volumes = {v["name"]: v for v in worker["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    secrets = mounts["/var/run/secrets/gitops-bridge"]
    assert secrets["readOnly"] is True and volumes[secrets["name"]]["secret"]["secretName"] == "gitops-bridge-tokens"
    claim = volumes[mounts["/var/lib/gitops-bridge/repos"]["name"]]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == "10Gi" and claim["storageClassName"] == "fast"
    known_hosts = _env(container)["BRIDGE_GIT__SSH_KNOWN_HOSTS_FILE"]["value"]
    assert os.path.dirname(known_hosts) in mounts
    assert "github.com ssh-ed25519" in _one(docs, "ConfigMap", f"{RELEASE}-ssh")["data"]["known_hosts"]
    assert _one(docs, "PodDisruptionBudget", f"{RELEASE}-worker")["spec"]["maxUnavailable"] == "50%"


def test_existing_config_release(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["existing-config-values"]["docs"]
    assert sorted(d["kind"] for d in docs) == ["Deployment", "Deployment", "Job", "Service"]
    for deployment in _kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "bridge"
        config = {v["name"]: v for v in pod["volumes"]}["config"]
        assert config["configMap"]["name"] == "gitops-bridge-routing"
        (container,) = pod["containers"]
        assert _env(container)["BRIDGE_CONFIG"]["value"] == "/etc/gitops-bridge/routing.yaml"
        assert _env(container)["BRIDGE_LOG_JSON"]["value"] == "false"
        assert deployment["metadata"]["name"].startswith("bridge-")
    # The check hook reads the existing ConfigMap too (there is no copy of a routing file the chart does not own).
    job = _one(docs, "Job", "bridge-config-check")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in job["volumes"]}["config"]["configMap"]["name"] == "gitops-bridge-routing"


@pytest.mark.parametrize("case", CASES)
def test_services_reach_their_pods(helm: dict[str, dict[str, Any]], case: str) -> None:
    docs = helm[case]["docs"]
    pods = [d["spec"]["template"] for d in _kind(docs, "Deployment")]
    for service in _kind(docs, "Service"):
        selector = service["spec"]["selector"]
        (pod,) = [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]
        names = {port["name"] for c in pod["spec"]["containers"] for port in c.get("ports", [])}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= names


def test_monitoring_scrapes_both_roles(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["full-values"]["docs"]
    monitor = _one(docs, "ServiceMonitor", RELEASE)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selected = [s for s in _kind(docs, "Service")
                if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    service_ports = {(s["metadata"]["labels"]["app.kubernetes.io/component"], p["name"])
                     for s in selected for p in s["spec"]["ports"]}
    endpoints = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert {("web", "http"), ("worker", "metrics")} <= service_ports
    assert endpoints == {"http", "metrics"}
    assert all(e["path"] == "/metrics" and e["interval"] == "15s" for e in monitor["spec"]["endpoints"])


def test_ingress_exposes_only_the_webhooks_over_tls(helm: dict[str, dict[str, Any]]) -> None:
    ingress = _one(helm["full-values"]["docs"], "Ingress", RELEASE)["spec"]
    assert ingress["ingressClassName"] == "nginx" and ingress["tls"][0]["secretName"] == "gitops-bridge-tls"
    (rule,) = ingress["rules"]
    assert rule["host"] == "gitops-bridge.example.com"
    for path in rule["http"]["paths"]:
        assert path["path"].startswith("/webhooks")
        assert path["backend"]["service"] == {"name": RELEASE, "port": {"name": "http"}}


def _exported_metric_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_grafana_dashboard_for_the_sidecar(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["full-values"]["docs"]
    configmap = _one(docs, "ConfigMap", f"{RELEASE}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "GitOps"}
    dashboard = json.loads(configmap["data"]["gitops-bridge.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "gitops-bridge.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bbridge_[a-z_]+", expr)}
    assert used <= _exported_metric_names(), used - _exported_metric_names()
    for required in ("bridge_deployments_total", "bridge_lead_time_seconds_bucket", "bridge_webhook_requests_total",
                     "bridge_enqueue_failures_total", "bridge_argocd_requests_total",
                     "bridge_azure_devops_requests_total"):
        assert required in used, required
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert "grafana_dashboard" not in str(helm["default-values"]["docs"])


# --- hooks, rollouts, extension points, policies ---------------------------------------------------------------------


def _pod(docs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    pod: dict[str, Any] = _one(docs, "Deployment", f"{RELEASE}-{role}")["spec"]["template"]
    return pod


def _ours(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] in OURS]
    return container


@pytest.mark.parametrize("case", ["default-values", "full-values", "routing-text-values"])
def test_config_check_hook_validates_the_new_values_first(helm: dict[str, dict[str, Any]], case: str) -> None:
    docs = helm[case]["docs"]
    hook_cm = _one(docs, "ConfigMap", f"{RELEASE}-config-check")
    job = _one(docs, "Job", f"{RELEASE}-config-check")
    for resource in (hook_cm, job):  # rendered with the hook annotations renamed (see DRIVER)
        annotations = resource["metadata"]["annotations"]
        assert annotations["test.invalid/hook"] == "pre-install,pre-upgrade"
        assert annotations["test.invalid/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert int(hook_cm["metadata"]["annotations"]["test.invalid/hook-weight"]) < int(
        job["metadata"]["annotations"]["test.invalid/hook-weight"])  # the routing file exists before the Job
    # The check reads exactly the routing file the pods will get, with the same settings and secrets.
    assert hook_cm["data"] == _one(docs, "ConfigMap", f"{RELEASE}-config")["data"]
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["check-config"]
    web = _ours(_pod(docs, "web"))
    assert container["env"] == [e for e in web["env"] if e["name"] != "BRIDGE_PORT" and e not in
                                (_ci_values(CHART / "ci" / f"{case}.yaml").get("web", {}).get("extraEnv") or [])]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == f"{RELEASE}-config-check"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {m["mountPath"] for m in web["volumeMounts"]}


def test_config_check_can_be_switched_off(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["extension-points-values"]["docs"]
    assert _kind(docs, "Job") == [] and [c["metadata"]["name"] for c in _kind(docs, "ConfigMap")] == [
        f"{RELEASE}-config"]


@pytest.mark.parametrize("case", ["default-values", "full-values", "routing-text-values"])
def test_pods_roll_when_the_routing_file_changes(helm: dict[str, dict[str, Any]], case: str) -> None:
    import hashlib

    docs = helm[case]["docs"]
    routing = _one(docs, "ConfigMap", f"{RELEASE}-config")["data"]["bridge.yaml"]
    for role in ("web", "worker"):
        annotations = _pod(docs, role)["metadata"]["annotations"]
        assert annotations["checksum/routing"] == hashlib.sha256(routing.rstrip("\n").encode()).hexdigest()


def test_set_file_replaces_no_table() -> None:
    """`--set-file config.routing=bridge.yaml` sets a string: Helm warns when a default table is replaced by a
    string (or a default string by a table), but not when the default is null."""
    assert _defaults()["config"]["routing"] is None
    assert isinstance(_ci_values(CHART / "ci" / "routing-text-values.yaml")["config"]["routing"], str)


@pytest.mark.parametrize("case", CASES)
def test_processes_listen_on_every_interface_in_the_pod(helm: dict[str, dict[str, Any]], case: str) -> None:
    for deployment in _kind(helm[case]["docs"], "Deployment"):
        (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] in OURS]
        assert _env(container)["BRIDGE_HOST"]["value"] == "0.0.0.0"  # the bridge's own default is 127.0.0.1


def test_web_spreads_over_nodes_by_default(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["default-values"]["docs"]
    web = _pod(docs, "web")
    (term,) = web["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert selector.items() <= web["metadata"]["labels"].items() and selector["app.kubernetes.io/component"] == "web"
    assert "affinity" not in _pod(docs, "worker")["spec"]
    hard = _pod(helm["extension-points-values"]["docs"], "web")["spec"]["affinity"]["podAntiAffinity"]
    assert list(hard) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    # An explicit affinity wins over the preset.
    assert _pod(helm["full-values"]["docs"], "worker")["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["labelSelector"] == {
        "matchLabels": {"app.kubernetes.io/component": "worker"}}


def test_web_has_a_startup_probe(helm: dict[str, dict[str, Any]]) -> None:
    default = _ours(_pod(helm["default-values"]["docs"], "web"))["startupProbe"]
    assert default == {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2, "timeoutSeconds": 3,
                       "failureThreshold": 30}
    assert _ours(_pod(helm["extension-points-values"]["docs"], "web"))["startupProbe"]["failureThreshold"] == 60


def test_extension_points_reach_the_pods(helm: dict[str, dict[str, Any]]) -> None:
    docs = helm["extension-points-values"]["docs"]
    values = _ci_values(CHART / "ci" / "extension-points-values.yaml")
    for role in ("web", "worker"):
        given = values[role]
        deployment = _one(docs, "Deployment", f"{RELEASE}-{role}")
        pod = deployment["spec"]["template"]["spec"]
        container = _ours(deployment["spec"]["template"])
        assert deployment["metadata"]["annotations"] == given["deploymentAnnotations"]
        assert deployment["spec"]["revisionHistoryLimit"] == given["revisionHistoryLimit"]
        assert container["envFrom"] == given["envFrom"]
        assert given["extraVolumes"][0] in pod["volumes"]
        assert given["extraVolumeMounts"][0] in container["volumeMounts"]
        assert [c["name"] for c in pod["containers"]] == [role, given["extraContainers"][0]["name"]]
        assert pod["initContainers"] == given["initContainers"]
        assert pod["dnsConfig"] == given["dnsConfig"] and pod["hostAliases"] == given["hostAliases"]
    default = _one(helm["default-values"]["docs"], "Deployment", f"{RELEASE}-web")
    assert default["spec"]["revisionHistoryLimit"] == 5 and "annotations" not in default["metadata"]


def test_service_monitor_options(helm: dict[str, dict[str, Any]]) -> None:
    monitor = _one(helm["extension-points-values"]["docs"], "ServiceMonitor", RELEASE)
    values = _ci_values(CHART / "ci" / "extension-points-values.yaml")["metrics"]["serviceMonitor"]
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}  # still scrapes the release's pods
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["honorLabels"] is True and endpoint["scheme"] == "https"
        assert endpoint["relabelings"] == values["relabelings"]
        assert endpoint["metricRelabelings"] == values["metricRelabelings"]
        assert endpoint["tlsConfig"] == values["tlsConfig"]
    plain = _one(helm["full-values"]["docs"], "ServiceMonitor", RELEASE)
    assert plain["metadata"]["namespace"] == NAMESPACE
    assert all(set(e) == {"port", "path", "interval", "scrapeTimeout"} for e in plain["spec"]["endpoints"])


def test_network_policies(helm: dict[str, dict[str, Any]]) -> None:
    assert _kind(helm["default-values"]["docs"], "NetworkPolicy") == []
    docs = helm["extension-points-values"]["docs"]
    policies = {p["metadata"]["name"]: p["spec"] for p in _kind(docs, "NetworkPolicy")}
    assert set(policies) == {f"{RELEASE}-web", f"{RELEASE}-worker"}
    for role, spec in (("web", policies[f"{RELEASE}-web"]), ("worker", policies[f"{RELEASE}-worker"])):
        pod = _pod(docs, role)
        assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        ports = {p["name"]: p["containerPort"] for p in _ours(pod)["ports"]}
        ingress = {(tuple(sorted(rule["from"][0]["namespaceSelector"]["matchLabels"].values())),
                    rule["ports"][0]["port"]) for rule in spec["ingress"]}
        if role == "web":
            assert (("ingress",), ports["http"]) in ingress
            assert spec["ingress"][0]["from"][0]["podSelector"] == {
                "matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}
            assert ingress == {(("ingress",), ports["http"]), (("monitoring",), ports["http"])}
        else:
            assert ingress == {(("monitoring",), ports["metrics"])}  # nothing else may reach the worker
        egress = spec["egress"]
        assert {(p["port"], p["protocol"]) for p in egress[0]["ports"]} == {(53, "UDP"), (53, "TCP")}
        assert egress[1] == {"to": [{"namespaceSelector": {}}],
                             "ports": [{"port": 6379, "protocol": "TCP"}, {"port": 26379, "protocol": "TCP"}]}
        assert egress[2] == {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
        assert [p["port"] for p in egress[3]["ports"]] == [22, 8443]
        assert egress[4]["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_default_external_egress_is_443_anywhere() -> None:
    assert _defaults()["networkPolicy"]["external"] == [{"cidrs": ["0.0.0.0/0", "::/0"], "ports": [443]}]


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://") and chart["icon"].startswith("https://")
    assert chart["maintainers"] and all(m["name"] for m in chart["maintainers"])
