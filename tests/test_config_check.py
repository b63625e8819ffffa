"""check-config's findings (pure) and the start-up refusals of web and worker."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bridge.app import create_app
from bridge.config_check import check_startup, findings
from bridge.errors import ConfigError
from bridge.routing import RoutingConfig, parse_routing
from bridge.settings import Settings
from bridge.tags import SAMPLES, render_tag, template_problem
from workers.main import build_worker

BASE: dict[str, Any] = {
    "repositories": {"gitops": {"url": "https://git.example.com/gitops.git"}},
    "routes": [{"name": "api", "match": {"project": "P", "definition": "1"},
                "environments": [{"name": "dev", "repository": "gitops", "file": "api/dev.yaml",
                                  "argocd": {"app": "api-dev"}}]}],
}
OK = {"webhook": {"tokens": ["hook-token-1"]}, "argocd": {"url": "https://argocd.example.com"}}


def routing(**changes: Any) -> RoutingConfig:
    doc = copy.deepcopy(BASE)
    for path, value in changes.items():
        target: Any = doc
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value
    return parse_routing(doc, "bridge.yaml")


def settings(**groups: Any) -> Settings:
    merged: dict[str, Any] = copy.deepcopy(OK)
    for name, value in groups.items():
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return Settings(config=Path("bridge.yaml"), redis_url="redis://127.0.0.1:1/0", **merged)


def test_a_sound_configuration_has_no_problems() -> None:
    found = findings(settings(), routing())
    assert found.problems == []
    assert found.warnings == ["no Azure DevOps organization configured: events from any organization are accepted; "
                              "report-back, build look-ups and the reconciler are off"]


def test_argocd_app_without_argocd_url_is_a_problem_everywhere(tmp_path: Path) -> None:
    s = settings(argocd={"url": None})
    problem = ("bridge.yaml: route api: environments.dev.argocd: names Argo CD app 'api-dev' but BRIDGE_ARGOCD__URL "
               "is unset (the deployment could never be verified)")
    assert problem in findings(s, routing()).problems
    with pytest.raises(ConfigError) as info:
        check_startup(s, routing())
    assert info.value.problems == [problem]
    with pytest.raises(ConfigError, match="BRIDGE_ARGOCD__URL is unset"):
        create_app(s, routing())
    with pytest.raises(ConfigError, match="BRIDGE_ARGOCD__URL is unset"):
        build_worker(s.model_copy(update={"git": s.git.model_copy(update={"work_dir": tmp_path})}), routing())
    no_app = routing(routes__0__environments__0__argocd=None)
    assert findings(s, no_app).problems == []


@pytest.mark.parametrize(("groups", "field"), [
    ({"argocd": {"url": "http://argocd.internal", "token": "argo-token-1"}}, "settings: argocd.url: http://"),
    ({"github": {"api_url": "http://ghe.internal/api/v3", "token": "gh-token-1"}}, "settings: github.api_url: http://"),
    ({"azure_devops": {"organization_url": "http://tfs.internal/tfs/main", "token": "ado-token-1"}},
     "settings: azure_devops.organizations: main: http://"),
    ({"git": {"token": "git-token-1"}}, "bridge.yaml: repositories.gitops.url: http://"),
])
def test_http_for_credentials_is_refused_unless_allowed(groups: dict[str, Any], field: str) -> None:
    cfg = routing(repositories={"gitops": {"url": "http://git.internal/gitops.git"}})
    found = findings(settings(**groups), cfg)
    [problem] = [p for p in found.problems if p.startswith(field)]
    assert "BRIDGE_ALLOW_INSECURE_HTTP" in problem
    for secret in ("argo-token-1", "gh-token-1", "ado-token-1", "git-token-1"):
        assert secret not in problem
    assert not [p for p in findings(settings(allow_insecure_http=True, **groups), cfg).problems
                if p.startswith(field)]


def test_http_without_a_credential_is_fine() -> None:
    cfg = routing(repositories={"gitops": {"url": "http://git.internal/gitops.git"}})
    assert findings(settings(argocd={"url": "http://argocd.internal"}), cfg).problems == []


def test_credential_in_a_repository_url_is_warned_and_refused_over_http() -> None:
    cfg = routing(repositories={"gitops": {"url": "https://x-access-token:ghp_secret@github.com/o/r.git"}})
    found = findings(settings(), cfg)
    assert found.problems == []
    [warning] = [w for w in found.warnings if "repositories.gitops.url" in w]
    assert "embeds a credential" in warning and "ghp_secret" not in warning
    plain = routing(repositories={"gitops": {"url": "http://token@git.internal/o/r.git"}})
    problems = findings(settings(), plain).problems
    assert any(p.startswith("bridge.yaml: repositories.gitops.url: http://") for p in problems)
    ssh = routing(repositories={"gitops": {"url": "git@github.com:o/r.git"}})
    assert not [w for w in findings(settings(), ssh).warnings if "embeds" in w]


def test_organization_problems() -> None:
    lone = findings(settings(azure_devops={"token": "ado-token-1"}), routing())
    assert any("a token is set but no organization" in p for p in lone.problems)
    unknown = routing(routes__0__match={"project": "P", "definition": "1", "organization": "nope"})
    orgs = {"organizations": [{"name": "fabrikam", "url": "https://dev.azure.com/fabrikam/"}]}
    found = findings(settings(azure_devops=orgs), unknown)
    assert ("bridge.yaml: route api: match.organization: 'nope' is not a configured Azure DevOps organization "
            "(BRIDGE_AZURE_DEVOPS__ORGANIZATIONS)") in found.problems
    with pytest.raises(ConfigError, match="match.organization"):
        check_startup(settings(azure_devops=orgs), unknown)
    known = routing(routes__0__match={"project": "P", "definition": "1", "organization": "Fabrikam"})
    assert findings(settings(azure_devops=orgs), known).problems == []


# -- tag templates ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [
    "a: {build.id}", "#{build.id}", "$(Rev){build.id}", "é{build.id}", "v{build.id}\n", "x" * 200 + "{build.id}",
    ".{build.id}", "-{build.id}", "{build.id}/{commit7}", "{build.id} ", "",
])
def test_templates_that_can_never_form_a_tag(template: str) -> None:
    problem = template_problem(template)
    assert problem is not None and problem.startswith("cannot form a valid OCI tag"), problem
    with pytest.raises(ConfigError) as info:
        routing(routes__0__tag=template)
    [line] = info.value.problems
    assert line.startswith("bridge.yaml: routes[0] (api): tag: cannot form a valid OCI tag"), line


@pytest.mark.parametrize("template", [
    "{build.id}", "v{build.number}", "{branch}-{commit7}", "{commit}", "build_{definition.id}.{build.id}",
    "_{build.id}", "release-{build.number}-{commit7}",
])
def test_templates_that_form_a_tag(template: str) -> None:
    assert template_problem(template) is None
    render_tag(template, SAMPLES)
    routing(routes__0__tag=template)


@pytest.mark.parametrize(("template", "message"), [
    ("{bogus}", "unknown placeholder(s) {bogus}"),
    ("{build.id", "malformed template"),
    ("{build.id:>10}", "format specs are not supported"),
])
def test_malformed_templates(template: str, message: str) -> None:
    assert message in (template_problem(template) or "")
