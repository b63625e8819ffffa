"""bridge.routing: matching tables and the errors of a bad routing file (they name file, route and field)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import ConfigError
from bridge.routing import load_routing, match_build, parse_routing

PROJECT_ID = "33dd33dd-ee44-ff55-aa66-77bb77bb77bb"
CONFIG: dict[str, Any] = {
    "repositories": {
        "gitops": {"url": "https://git.example.invalid/gitops.git"},
        "gh": {"url": "https://github.com/acme/gitops.git", "github": "acme/gitops"},
    },
    "routes": [
        {
            "name": "chat",
            "match": {"project": "FabrikamFiberChat", "definition": "MainRepo (1)",
                      "branches": ["refs/heads/main", "refs/heads/release/*"]},
            "environments": [
                {"name": "dev", "repository": "gitops", "file": "chat/dev.yaml"},
                {"name": "hotfix", "repository": "gitops", "file": "chat/hotfix.yaml",
                 "branches": ["refs/heads/release/*"]},
                {"name": "prod", "repository": "gh", "file": "chat/prod.yaml", "after": "dev",
                 "promotion": "pull-request"},
            ],
        },
        {
            "name": "by-id",
            "match": {"project": PROJECT_ID, "definition": "4658", "results": ["succeeded", "partiallySucceeded"]},
            "environments": [{"name": "qa", "repository": "gitops", "file": "id/qa.yaml", "keys": ["a.b", "c"]}],
        },
    ],
}


def targets(**build: Any) -> list[tuple[str, str]]:
    args: dict[str, Any] = {"project_id": PROJECT_ID, "project_name": "FabrikamFiberChat", "definition_id": 4658,
                            "definition_name": "MainRepo (1)", "branch": "refs/heads/main", "result": "succeeded"}
    args.update(build)
    return [t.key for t in match_build(parse_routing(CONFIG), **args)]


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        ({}, [("chat", "dev"), ("by-id", "qa")]),
        ({"branch": "refs/heads/release/1.2"}, [("chat", "dev"), ("chat", "hotfix"), ("by-id", "qa")]),
        ({"branch": "refs/heads/feature/x"}, [("by-id", "qa")]),
        ({"result": "partiallySucceeded"}, [("by-id", "qa")]),
        ({"result": "failed"}, []),
        ({"project_name": "fabrikamfiberchat", "definition_name": "mainrepo (1)"},   # names: case-insensitive
         [("chat", "dev"), ("by-id", "qa")]),
        ({"project_id": PROJECT_ID.upper()}, [("chat", "dev"), ("by-id", "qa")]),
        ({"project_name": "Other", "project_id": "00000000-0000-0000-0000-000000000001"}, []),
        ({"definition_id": 1, "definition_name": "Other"}, []),
        # branch unknown (run-state events): branch checks are skipped, the worker re-checks
        ({"branch": None}, [("chat", "dev"), ("chat", "hotfix"), ("by-id", "qa")]),
        # project name unknown (run-state events carry only the id): a route naming the project by name may match,
        # a route naming a different id may not
        ({"project_name": None, "branch": None}, [("chat", "dev"), ("chat", "hotfix"), ("by-id", "qa")]),
        ({"project_name": None, "project_id": "00000000-0000-0000-0000-000000000001", "branch": None},
         [("chat", "dev"), ("chat", "hotfix")]),
        ({"definition_name": None, "definition_id": 1}, [("chat", "dev")]),
        ({"branch": "refs/heads/main/../x"}, [("by-id", "qa")]),
    ],
)
def test_match_build(build: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert targets(**build) == expected


def test_after_environments_are_not_started_by_the_build() -> None:
    assert ("chat", "prod") not in targets()


def broken(path: str, value: Any) -> dict[str, Any]:
    config = copy.deepcopy(CONFIG)
    *parents, last = path.split(".")
    node: Any = config
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is ...:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (broken("routes.0.environments.0.file", "/abs.yaml"),
         "bridge.yaml: routes[0] (chat): environments[0].file: must be a relative path inside the repository"),
        (broken("routes.0.environments.0.file", "../x.yaml"), "must not escape the repository"),
        (broken("routes.0.environments.0.file", "x.json"), "must be a .yaml or .yml file"),
        (broken("routes.0.environments.0.repository", "nope"),
         "routes[0] (chat): environments[0].repository: unknown repository 'nope' (known: gh, gitops)"),
        (broken("routes.0.environments.2.repository", "gitops"),
         "environments[2].promotion: pull-request needs repositories.gitops.github"),
        (broken("routes.0.match.branches", ["refs/heads/[main"]), "unbalanced brackets"),
        (broken("routes.0.match.results", ["done"]), "routes[0] (chat): match.results[0]"),
        (broken("routes.0.name", "Chat_1"), "routes[0] (Chat_1): name: must be lower-case"),
        (broken("routes.1.name", "chat"), "routes[1] (chat): name: duplicate route name (also routes[0])"),
        (broken("routes.0.environments.2.after", "staging"), "after: unknown environment 'staging'"),
        (broken("routes.0.tag", "{build.nope}"), "unknown placeholder"),
        (broken("routes.0.environments.0.colour", "blue"), "environments[0].colour: unknown key"),
        (broken("routes.0.environments", []), "environments"),
        (broken("routes.1.environments.0.keys", ["a", "a"]), "duplicate key"),
        (broken("routes.1.environments.0", {"name": "qa", "repository": "gitops", "file": "chat/dev.yaml"}),
         "routes[1] (by-id): environments[0].keys: duplicate target chat/dev.yaml:image.tag (also chat/dev)"),
        (broken("repositories.gh.github", "not a repo"), "must be 'owner/name'"),
        (broken("routes", ...), "routes"),
        ([], "(top level): must be a mapping"),
    ],
)
def test_config_errors_name_file_route_and_field(config: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_routing(config)
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_every_problem_is_listed() -> None:
    config = broken("routes.0.environments.0.file", "/abs.yaml")
    config = broken("routes.1.name", "Bad Name") | {"routes": config["routes"]}
    config["routes"][1]["name"] = "Bad Name"
    with pytest.raises(ConfigError) as info:
        parse_routing(config)
    assert len(info.value.problems) == 2


def test_load_routing_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read routing file"):
        load_routing(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_routing(bad)
    good = tmp_path / "good.yaml"
    good.write_text("repositories: {r: {url: u}}\nroutes:\n  - name: a\n    match: {project: p, definition: d}\n"
                    "    environments: [{name: dev, repository: r, file: v.yaml}]\n")
    assert load_routing(good).route("a").environment("dev").keys == ["image.tag"]
