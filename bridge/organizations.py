"""The Azure DevOps organizations the bridge serves: configuration, never input (pure, no network).

An event names its organization in payload fields (`resourceContainers.collection.baseUrl`/`id`, `account`, links).
Those fields are only *compared* with the configured organizations; every outbound call takes the URL and the
credential of the configured organization the event matched. `match` maps an event to one:

- by normalised URL: `https://dev.azure.com/<org>/` and `https://<org>.visualstudio.com/` are one organization; an
  Azure DevOps Server collection URL (`https://tfs.example.com/tfs/Main/`) matches itself, ignoring case, scheme,
  default ports and slashes;
- by collection GUID when one is configured (`id`): it must then equal the event's (it pins the URL further).

With no organization configured at all, every event is accepted under a deterministic fallback identity (its
normalised URL), and nothing outbound is possible (no credential).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import SecretStr

from bridge.events import BuildEvent
from bridge.settings import AzureDevOpsSettings

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CLOUD_HOST = "dev.azure.com"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Organization:
    """A configured organization: `name` is its identity (build keys, records), `url` where calls go."""

    name: str
    url: str  # as configured, ends with '/'
    id: str | None = None  # collection GUID, lower case
    token: SecretStr | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str | None:
        return url_key(self.url)

    @property
    def has_token(self) -> bool:
        return self.token is not None and bool(self.token.get_secret_value())


@functools.lru_cache(maxsize=1024)  # pure; each event and each configured organization asks (bounded: hostile URLs)
def url_key(url: str | None) -> str | None:
    """The normalised identity of an organization URL, or None for anything that is not an http(s) URL.

    `https://dev.azure.com/Fabrikam/` and `https://fabrikam.visualstudio.com/` → `dev.azure.com/fabrikam`;
    `https://TFS.example.com:443/tfs/Main//` → `tfs.example.com/tfs/main`.
    """
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    segments = [s.lower() for s in parts.path.split("/") if s]
    if host == CLOUD_HOST:
        return f"{CLOUD_HOST}/{segments[0]}" if segments else None
    if host.endswith(".visualstudio.com") and host.count(".") == 2:
        return f"{CLOUD_HOST}/{host.split('.', 1)[0]}"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return "/".join([host, *segments])


def _name_from_url(url: str) -> str:
    """`https://dev.azure.com/Fabrikam/` → `fabrikam`; a Server collection URL → its last path segment (or host)."""
    key = url_key(url) or url.lower()
    return key.rstrip("/").rsplit("/", 1)[-1]


def configured(settings: AzureDevOpsSettings) -> list[Organization]:
    """The organizations from the settings: `organizations` (one token each, `tokens.<name>`; `token` serves the
    only one when there is just one), else the legacy `organization_url` + `token` as a one-entry list."""
    tokens = {name.lower(): value for name, value in settings.tokens.items()}
    if settings.organizations:
        single = len(settings.organizations) == 1
        return [
            Organization(
                name=o.name.lower(),
                url=o.url if o.url.endswith("/") else o.url + "/",
                id=o.id.lower() if o.id else None,
                token=tokens.get(o.name.lower()) or (settings.token if single else None),
            )
            for o in settings.organizations
        ]
    if settings.organization_url:
        url = settings.organization_url if settings.organization_url.endswith("/") else settings.organization_url + "/"
        name = _name_from_url(url)
        return [Organization(name=name, url=url, token=tokens.get(name) or settings.token)]
    return []


def fallback_identity(base_url: str | None, collection_id: str | None) -> str:
    """The organization identity when none is configured: the normalised URL, else the collection id."""
    return url_key(base_url) or (collection_id or "default").lower()


def match(
    organizations: list[Organization], base_url: str | None, collection_id: str | None
) -> Organization | None:
    """The configured organization an event names (by its base URL and collection GUID), or None."""
    key = url_key(base_url)
    guid = collection_id.lower() if collection_id and GUID.fullmatch(collection_id.lower()) else None
    for org in organizations:
        if key is not None:
            if org.key != key:
                continue
            if org.id is not None and guid != org.id:
                continue
            return org
        if org.id is not None and guid == org.id:
            return org
    return None


def problems(settings: AzureDevOpsSettings) -> list[str]:
    """Configuration errors in the organizations (check-config and start-up refuse them)."""
    found = []
    orgs = configured(settings)
    names = [o.name for o in orgs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        found.append(f"settings: azure_devops.organizations: name {name!r} is listed more than once")
    keys = [o.key for o in orgs]
    for org in orgs:
        if org.key is None:
            found.append(f"settings: azure_devops.organizations: {org.name}: url must be an http(s) URL")
        elif keys.count(org.key) > 1 and org.id is None:
            found.append(f"settings: azure_devops.organizations: {org.name}: another organization has the same URL; "
                         "give each an id (collection GUID)")
    unused = sorted(set(n.lower() for n in settings.tokens) - set(names))
    for name in unused:
        found.append(f"settings: azure_devops.tokens.{name}: no organization of that name "
                     f"(BRIDGE_AZURE_DEVOPS__TOKENS__{name.upper()})")
    return found


def token_without_organization(settings: AzureDevOpsSettings) -> str | None:
    """Before organizations were configuration, a token alone sent reports to the URL the event named; now it needs
    an organization to go to (check-config refuses it; the processes start with report-back off and say so)."""
    if configured(settings) or not (settings.token or settings.tokens):
        return None
    return ("settings: azure_devops: a token is set but no organization: set BRIDGE_AZURE_DEVOPS__ORGANIZATIONS (or "
            "BRIDGE_AZURE_DEVOPS__ORGANIZATION_URL); report-back and look-ups go only to a configured organization")


def warnings(settings: AzureDevOpsSettings) -> list[str]:
    """What a process says at start-up, and check-config warns, about outbound Azure DevOps being off (no secrets)."""
    orgs = configured(settings)
    if not orgs:
        return [token_without_organization(settings) or "no Azure DevOps organization configured: events from any "
                "organization are accepted; report-back, build look-ups and the reconciler are off"]
    return [f"Azure DevOps organization {org.name}: no token (BRIDGE_AZURE_DEVOPS__TOKENS__{org.name.upper()}); "
            "report-back and look-ups are off for it" for org in orgs if not org.has_token]


def summary(settings: AzureDevOpsSettings) -> str | None:
    orgs = configured(settings)
    if not orgs:
        return None
    return (f"Azure DevOps organizations: {', '.join(f'{o.name} ({o.url})' for o in orgs)}; events from any other "
            "organization are ignored")


def assign(organizations: list[Organization], event: BuildEvent) -> BuildEvent | None:
    """The event with its organization set from configuration, or None when it comes from an organization that is not
    configured (with none configured: the fallback identity). `base_url` stays what the payload claimed: it is shown,
    and compared, never used as an address."""
    if not organizations:
        return event.with_organization(fallback_identity(event.base_url, event.collection_id))
    org = match(organizations, event.base_url, event.collection_id)
    if org is None:
        return None
    return event.with_organization(org.name)
