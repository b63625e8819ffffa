"""Organizations are configuration: settings shapes, URL normalisation and the pure matcher (tables, no I/O)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge import organizations
from bridge.events import BuildEvent, parse_event
from bridge.organizations import Organization, assign, configured, match, url_key
from bridge.settings import AzureDevOpsSettings, Settings, load_settings

EVENTS = Path(__file__).resolve().parent / "data" / "azure-devops-events"
GUID = "b1b1b1b1-cccc-dddd-eeee-f2f2f2f2f2f2"


@pytest.mark.parametrize(("url", "key"), [
    ("https://dev.azure.com/Fabrikam/", "dev.azure.com/fabrikam"),
    ("https://dev.azure.com/fabrikam", "dev.azure.com/fabrikam"),
    ("https://DEV.azure.com//fabrikam//", "dev.azure.com/fabrikam"),
    ("https://fabrikam.visualstudio.com/", "dev.azure.com/fabrikam"),
    ("https://Fabrikam.VisualStudio.com/DefaultCollection/", "dev.azure.com/fabrikam"),
    ("http://dev.azure.com/fabrikam/", "dev.azure.com/fabrikam"),
    ("https://dev.azure.com/fabrikam/Project/_apis/build", "dev.azure.com/fabrikam"),
    ("https://tfs.example.com/tfs/Main/", "tfs.example.com/tfs/main"),
    ("https://TFS.example.com:443/tfs//Main", "tfs.example.com/tfs/main"),
    ("https://tfs.example.com:8443/tfs/Main/", "tfs.example.com:8443/tfs/main"),
    ("https://dev.azure.com/", None),
    ("ftp://dev.azure.com/fabrikam/", None),
    ("azure-devops:///fabrikam", None),
    ("not a url", None),
    ("https://[::1/x", None),
    ("", None),
    (None, None),
])
def test_url_key(url: str | None, key: str | None) -> None:
    assert url_key(url) == key


FABRIKAM = Organization("fabrikam", "https://dev.azure.com/fabrikam/")
PINNED = Organization("pinned", "https://dev.azure.com/pinned/", id=GUID)
SERVER = Organization("main", "https://tfs.example.com/tfs/Main/")


@pytest.mark.parametrize(("base_url", "collection", "expected"), [
    ("https://dev.azure.com/fabrikam/", None, FABRIKAM),
    ("https://fabrikam.visualstudio.com/", "11111111-2222-3333-4444-555555555555", FABRIKAM),
    ("https://dev.azure.com/FABRIKAM", None, FABRIKAM),
    ("https://dev.azure.com/fabrikam.evil.example/", None, None),
    ("https://fabrikam.visualstudio.com.evil.example/", None, None),
    ("https://evil.example/fabrikam/", None, None),
    ("https://dev.azure.com/other/", None, None),
    ("https://dev.azure.com/pinned/", GUID, PINNED),
    ("https://dev.azure.com/pinned/", GUID.upper(), PINNED),
    ("https://dev.azure.com/pinned/", "11111111-2222-3333-4444-555555555555", None),  # pinned: GUID must agree
    ("https://dev.azure.com/pinned/", None, None),
    (None, GUID, PINNED),  # no URL in the payload: the configured GUID alone identifies it
    ("https://evil.example/", GUID, None),  # a URL that names another organization wins over a copied GUID
    (None, None, None),
    ("https://tfs.example.com/TFS/main/", None, SERVER),
    ("https://tfs.example.com/tfs/other/", None, None),
])
def test_match(base_url: str | None, collection: str | None, expected: Organization | None) -> None:
    assert match([FABRIKAM, PINNED, SERVER], base_url, collection) == expected


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def test_assign_sets_the_configured_name_and_ignores_others() -> None:
    event = parse_event(sample("build.complete.2-full.json"))
    assert isinstance(event, BuildEvent)
    fiber = Organization("fiber", "https://fabrikamfiber.visualstudio.com")
    known = assign([fiber], event)
    assert known is not None and known.organization == "fiber"
    assert known.build_key == f"fiber:{event.project_id}:{event.build_id}"
    assert known.base_url == event.base_url  # what the payload claimed stays: shown, never an address
    assert assign([FABRIKAM], event) is None
    fallback = assign([], event)
    assert fallback is not None and fallback.organization == "dev.azure.com/fabrikamfiber"
    assert fallback.build_key == event.legacy_build_key  # no organization configured: the keys of before


def test_both_spellings_give_one_build_key() -> None:
    body = sample("build.complete.2-full.json")
    other = json.loads(json.dumps(body))
    other["resourceContainers"]["collection"]["baseUrl"] = "https://fabrikamfiber.visualstudio.com/"
    one, two = parse_event(body), parse_event(other)
    assert isinstance(one, BuildEvent) and isinstance(two, BuildEvent)
    assert one.legacy_build_key != two.legacy_build_key  # the bug of before
    orgs = [Organization("fiber", "https://dev.azure.com/FabrikamFiber/")]
    a, b = assign(orgs, one), assign(orgs, two)
    assert a is not None and b is not None and a.build_key == b.build_key
    a, b = assign([], one), assign([], two)  # also without configuration
    assert a is not None and b is not None and a.build_key == b.build_key


def test_legacy_settings_are_the_one_entry_case() -> None:
    ado = AzureDevOpsSettings(organization_url="https://dev.azure.com/Fabrikam", token="pat-1")  # type: ignore[arg-type]
    [org] = configured(ado)
    assert (org.name, org.url, org.has_token) == ("fabrikam", "https://dev.azure.com/Fabrikam/", True)
    server = configured(AzureDevOpsSettings(organization_url="https://tfs.example.com/tfs/Main"))
    assert [(o.name, o.has_token) for o in server] == [("main", False)]
    assert configured(AzureDevOpsSettings(token="pat-1")) == []  # type: ignore[arg-type]


def test_organizations_and_tokens_from_environment_and_secrets_dir(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_AZURE_DEVOPS__ORGANIZATIONS", json.dumps([
        {"name": "Fabrikam", "url": "https://dev.azure.com/fabrikam/"},
        {"name": "contoso", "url": "https://contoso.visualstudio.com", "id": GUID},
        {"name": "tokenless", "url": "https://dev.azure.com/tokenless/"},
    ]))
    monkeypatch.setenv("BRIDGE_AZURE_DEVOPS__TOKENS__CONTOSO", "env-token-1")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "azure_devops__tokens__fabrikam").write_text("file-token-2")
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(secrets))
    settings = load_settings()
    orgs = configured(settings.azure_devops)
    assert [(o.name, o.id) for o in orgs] == [("fabrikam", None), ("contoso", GUID), ("tokenless", None)]
    assert [o.token.get_secret_value() if o.token else None for o in orgs] == ["file-token-2", "env-token-1", None]
    assert {"env-token-1", "file-token-2"} <= set(settings.secret_values())  # scrubbed from logs
    assert "env-token-1" not in repr(orgs)
    assert organizations.warnings(settings.azure_devops) == [
        "Azure DevOps organization tokenless: no token (BRIDGE_AZURE_DEVOPS__TOKENS__TOKENLESS); report-back and "
        "look-ups are off for it"]


def test_a_single_organization_may_use_the_plain_token() -> None:
    ado = AzureDevOpsSettings.model_validate({"organizations": [{"name": "a", "url": "https://dev.azure.com/a/"}],
                                              "token": "pat-1"})
    assert configured(ado)[0].has_token
    two = AzureDevOpsSettings.model_validate({"organizations": [{"name": "a", "url": "https://dev.azure.com/a/"},
                                                                {"name": "b", "url": "https://dev.azure.com/b/"}],
                                              "token": "pat-1"})
    assert [o.has_token for o in configured(two)] == [False, False]  # which one? neither: say so


@pytest.mark.parametrize(("ado", "problem"), [
    ({"organizations": [{"name": "a", "url": "https://dev.azure.com/a/"},
                        {"name": "A", "url": "https://dev.azure.com/b/"}]}, "name 'a' is listed more than once"),
    ({"organizations": [{"name": "a", "url": "https://dev.azure.com/a/"},
                        {"name": "b", "url": "https://a.visualstudio.com/"}]}, "b: another organization has the same"),
    ({"organizations": [{"name": "a", "url": "dev.azure.com/a"}]}, "a: url must be an http(s) URL"),
    ({"organizations": [{"name": "a", "url": "https://dev.azure.com/a/"}], "tokens": {"typo": "x"}},
     "azure_devops.tokens.typo: no organization of that name"),
])
def test_problems(ado: dict[str, Any], problem: str) -> None:
    found = organizations.problems(AzureDevOpsSettings.model_validate(ado))
    assert any(problem in p for p in found), found


def test_token_without_organization_is_named() -> None:
    lone = Settings(azure_devops={"token": "pat-1"})
    assert "a token is set but no organization" in (organizations.token_without_organization(lone.azure_devops) or "")
    assert organizations.token_without_organization(Settings().azure_devops) is None
    assert "no Azure DevOps organization configured" in organizations.warnings(Settings().azure_devops)[0]


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 65, "-lead"])
def test_organization_names_are_validated(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        AzureDevOpsSettings.model_validate({"organizations": [{"name": name, "url": "https://dev.azure.com/a/"}]})
