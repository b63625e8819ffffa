"""What `check-config` finds in the settings and the routing file (pure: no network, no git).

`findings` returns problems (check-config exits 2) and warnings (printed, exit 0). `startup_problems` is the part
that also stops `web`, `worker` and `serve` from starting: configurations that would silently do the wrong thing.

Credentials go only where configuration says: each outbound credential has one configured destination, and over
`http://` only with `allow_insecure_http` (one global switch, off by default; tests and the demo set it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bridge import organizations
from bridge.errors import ConfigError
from bridge.routing import RoutingConfig
from bridge.settings import Settings

INSECURE = "set BRIDGE_ALLOW_INSECURE_HTTP=true only for tests and demos"


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _scheme(url: str) -> str:
    try:
        return urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return ""


def _has_userinfo(url: str) -> bool:
    """An http(s) URL that carries a user or password (`https://token@host/...`); ssh `git@host:` is not one."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and (parts.username is not None or parts.password is not None)


def _webhook(settings: Settings) -> list[str]:
    found = []
    webhook = settings.webhook
    if not webhook.tokens and not webhook.basic and not webhook.allow_unauthenticated:
        found.append("settings: webhook: no credentials configured (BRIDGE_WEBHOOK__TOKENS or "
                     "BRIDGE_WEBHOOK__BASIC); set BRIDGE_WEBHOOK__ALLOW_UNAUTHENTICATED=true to run open")
    for pair in webhook.basic:
        if ":" not in pair.get_secret_value():
            found.append("settings: webhook.basic: each entry must be 'user:password'")
    return found


def _argocd_named_without_url(settings: Settings, routing: RoutingConfig) -> list[str]:
    urls = settings.argocd.instance_urls()
    found = []
    for route in routing.routes:
        for env in route.environments:
            if env.argocd is None:
                continue
            where = f"{settings.config}: route {route.name}: environments.{env.name}.argocd"
            if not urls:
                found.append(f"{where}: names Argo CD app {(env.argocd.app or env.argocd.describe())!r} but "
                             "BRIDGE_ARGOCD__URL is unset (the deployment could never be verified)")
            elif env.argocd.instance is not None and env.argocd.instance not in urls:
                found.append(f"{where}.instance: {env.argocd.instance!r} is not a configured Argo CD instance "
                             f"(BRIDGE_ARGOCD__INSTANCES: {', '.join(sorted(urls))})")
            elif env.argocd.instance is None and settings.argocd.default_instance() is None:
                found.append(f"{where}: several Argo CD instances are configured ({', '.join(sorted(urls))}); "
                             "name one with `instance`")
    return found


def _route_organizations(settings: Settings, routing: RoutingConfig) -> list[str]:
    names = {o.name for o in organizations.configured(settings.azure_devops)}
    return [f"{settings.config}: route {route.name}: match.organization: {route.match.organization!r} is not a "
            "configured Azure DevOps organization (BRIDGE_AZURE_DEVOPS__ORGANIZATIONS)"
            for route in routing.routes
            if route.match.organization is not None and route.match.organization.lower() not in names]


def _insecure(settings: Settings, routing: RoutingConfig) -> list[str]:
    """http:// where a credential would travel."""
    if settings.allow_insecure_http:
        return []
    found = []
    if settings.argocd.token and settings.argocd.url and _scheme(settings.argocd.url) == "http":
        found.append(f"settings: argocd.url: http:// would send the Argo CD token in clear text; {INSECURE}")
    for inst in settings.argocd.instances:
        if _scheme(inst.url) == "http" and (inst.name.lower() in {n.lower() for n in settings.argocd.tokens}
                                            or (settings.argocd.token and len(settings.argocd.instance_urls()) == 1)):
            found.append(f"settings: argocd.instances: {inst.name}: http:// would send its token in clear text; "
                         f"{INSECURE}")
    if settings.github.token and _scheme(settings.github.api_url) == "http":
        found.append(f"settings: github.api_url: http:// would send the GitHub token in clear text; {INSECURE}")
    for org in organizations.configured(settings.azure_devops):
        if org.has_token and _scheme(org.url) == "http":
            found.append(f"settings: azure_devops.organizations: {org.name}: http:// would send its token in clear "
                         f"text; {INSECURE}")
    for name, repo in routing.repositories.items():
        credentialed = settings.git.token is not None or _has_userinfo(repo.url)
        if credentialed and _scheme(repo.url) == "http":
            found.append(f"{settings.config}: repositories.{name}.url: http:// would send git credentials in clear "
                         f"text; {INSECURE}")
    return found


def _warnings(settings: Settings, routing: RoutingConfig) -> list[str]:
    found = []
    for name, repo in routing.repositories.items():
        if _has_userinfo(repo.url):
            found.append(f"{settings.config}: repositories.{name}.url: embeds a credential, which ends up in every "
                         "clone's .git/config and in logs; use BRIDGE_GIT__TOKEN (sent only to this remote)")
    found.extend(w for w in organizations.warnings(settings.azure_devops)
                 if w != organizations.token_without_organization(settings.azure_devops))  # a problem already
    return found


def startup_problems(settings: Settings, routing: RoutingConfig) -> list[str]:
    """What stops `web`, `worker` and `serve` from starting (a subset of `findings`)."""
    return [*_argocd_named_without_url(settings, routing), *_route_organizations(settings, routing),
            *organizations.problems(settings.azure_devops)]


def check_startup(settings: Settings, routing: RoutingConfig) -> None:
    """Raise ConfigError listing the start-up problems, if any."""
    problems = startup_problems(settings, routing)
    if problems:
        raise ConfigError(problems)


def findings(settings: Settings, routing: RoutingConfig) -> Findings:
    problems = _webhook(settings)
    if any(e.promotion == "pull-request" for r in routing.routes for e in r.environments) and not settings.github.token:
        problems.append("settings: github.token: routes use pull-request promotion but BRIDGE_GITHUB__TOKEN is unset")
    problems += _argocd_named_without_url(settings, routing)
    problems += organizations.problems(settings.azure_devops)
    lone_token = organizations.token_without_organization(settings.azure_devops)
    problems += [lone_token] if lone_token else []
    problems += _route_organizations(settings, routing)
    problems += _insecure(settings, routing)
    return Findings(problems, _warnings(settings, routing))
