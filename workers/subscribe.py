"""`gitops-bridge subscribe`: create or update, idempotently, the Azure DevOps service-hook subscriptions that send
`build.complete` (resourceVersion 2.0) for every routed (project, definition) to the bridge's webhook.

One subscription per (project id, definition name): Web Hooks consumer `webHooks`/`httpRequest`, the webhook's basic
credentials and/or secret header (the first configured value of each), messages "none". Found by (project,
definition, target URL): created when missing, replaced when different, deleted and created again when
`disabledBySystem` (replacing does not revive it). Azure DevOps masks the basic-auth password in its answers, so a
subscription that carries secrets is always replaced: that is how a rotated secret reaches it.

Runs for every configured organization (`azure_devops.organizations`, or `organization_url`), with its own token and
at its configured URL only; a route that names an organization is subscribed in that one only.

`--dry-run` prints the request bodies (secrets masked) and writes nothing; `--check` lists the subscriptions that
target the bridge with their status (probation included) and exits 1 when one is missing or not enabled.
Exit codes: 0 fine, 1 something to fix or an API error, 2 configuration missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TextIO

from bridge import organizations
from bridge.errors import BridgeError
from bridge.organizations import Organization
from bridge.routing import RoutingConfig
from bridge.settings import Settings
from workers.azure_devops import AzureDevOpsClient, org_base

WEBHOOK_PATH = "/webhooks/azure-devops"
MASK = "********"
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
FILTER = {"publisher_id": "tfs", "event_type": "build.complete", "consumer_id": "webHooks"}


@dataclass(frozen=True)
class Wanted:
    project: str          # as the routing file names it
    project_id: str
    definition_name: str
    body: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.project}/{self.definition_name}"


def webhook_url(public_url: str) -> str:
    url = public_url.rstrip("/")
    return url if url.endswith(WEBHOOK_PATH) else url + WEBHOOK_PATH


def subscription_body(settings: Settings, url: str, project_id: str, definition_name: str) -> dict[str, Any]:
    inputs: dict[str, str] = {
        "url": url,
        "resourceDetailsToSend": "",
        "messagesToSend": "none",
        "detailedMessagesToSend": "none",
    }
    if settings.webhook.tokens:
        inputs["httpHeaders"] = f"{settings.webhook.header_name}:{settings.webhook.tokens[0].get_secret_value()}"
    if settings.webhook.basic:
        user, _, password = settings.webhook.basic[0].get_secret_value().partition(":")
        inputs["basicAuthUsername"] = user
        inputs["basicAuthPassword"] = password
    return {
        "publisherId": "tfs",
        "eventType": "build.complete",
        "resourceVersion": "2.0",
        "consumerId": "webHooks",
        "consumerActionId": "httpRequest",
        "publisherInputs": {"projectId": project_id, "definitionName": definition_name, "buildStatus": ""},
        "consumerInputs": inputs,
    }


def masked(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(body))
    inputs = out.get("consumerInputs", {})
    if inputs.get("basicAuthPassword"):
        inputs["basicAuthPassword"] = MASK
    if inputs.get("httpHeaders"):
        inputs["httpHeaders"] = "\n".join(line.split(":", 1)[0] + ":" + MASK
                                          for line in inputs["httpHeaders"].splitlines())
    return out


def _has_secrets(body: dict[str, Any]) -> bool:
    inputs = body["consumerInputs"]
    return bool(inputs.get("basicAuthPassword") or inputs.get("httpHeaders"))


def _differs(existing: dict[str, Any], body: dict[str, Any]) -> bool:
    if existing.get("status") != "enabled" or existing.get("resourceVersion") != body["resourceVersion"]:
        return True
    pub = existing.get("publisherInputs") or {}
    if any(pub.get(k, "") != v for k, v in body["publisherInputs"].items()):
        return True
    con = existing.get("consumerInputs") or {}
    return any(con.get(k, "") != v for k, v in body["consumerInputs"].items()
               if k not in ("basicAuthPassword", "httpHeaders")) or _has_secrets(body)


def _matches(existing: dict[str, Any], want: Wanted, url: str) -> bool:
    pub = existing.get("publisherInputs") or {}
    return (
        (existing.get("consumerInputs") or {}).get("url") == url
        and str(pub.get("projectId", "")).lower() == want.project_id.lower()
        and pub.get("definitionName", "") == want.definition_name
    )


def _status_line(sub: dict[str, Any]) -> str:
    pub = sub.get("publisherInputs") or {}
    line = (f"{sub.get('id')}  {sub.get('status')}  project={pub.get('projectId')} "
            f"definition={pub.get('definitionName') or '*'} resourceVersion={sub.get('resourceVersion')}")
    if sub.get("status") != "enabled":
        retries = sub.get("probationRetries")
        if retries:
            line += f" probationRetries={retries}"
        if sub.get("lastProbationRetryDate"):
            line += f" lastProbationRetryDate={sub['lastProbationRetryDate']}"
        advice = {
            "onProbation": "deliveries are failing; new events are being lost (the reconciler recovers them)",
            "disabledBySystem": "disabled after failed deliveries; run `gitops-bridge subscribe` to recreate it",
            "disabledByInactiveIdentity": "its owner is inactive or lacks permission; recreate it as another user",
            "disabledByUser": "disabled by a user; run `gitops-bridge subscribe` to enable it",
        }.get(str(sub.get("status")))
        if advice:
            line += f"  ({advice})"
    return line


async def _wanted(ado: AzureDevOpsClient | None, settings: Settings, routing: RoutingConfig, org: Organization,
                  url: str) -> list[Wanted]:
    out: dict[tuple[str, str], Wanted] = {}
    ids: dict[str, str] = {}
    for route in routing.routes:
        if route.match.organization is not None and route.match.organization.lower() != org.name:
            continue
        project, definition = route.match.project, route.match.definition
        if project.lower() not in ids:
            if GUID.match(project):
                ids[project.lower()] = project
            elif ado is not None:
                ids[project.lower()] = str((await ado.get_project(org, project))["id"])
            else:
                ids[project.lower()] = f"<id of project {project}>"
        project_id = ids[project.lower()]
        if definition.isdigit() and ado is not None:
            definition = str((await ado.get_definition(org, project, int(definition)))["name"])
        key = (project_id.lower(), definition)
        if key not in out:
            out[key] = Wanted(project, project_id, definition, subscription_body(settings, url, project_id,
                                                                                 definition))
    return list(out.values())


async def subscribe(
    settings: Settings,
    routing: RoutingConfig,
    *,
    public_url: str | None,
    dry_run: bool = False,
    check: bool = False,
    out: TextIO,
) -> int:
    """Create/update (default), print (`dry_run`) or inspect (`check`) the subscriptions of every configured
    organization; returns the exit code (the worst of them)."""
    orgs = organizations.configured(settings.azure_devops)
    base = public_url or settings.public_url
    if not orgs:
        print("error: set BRIDGE_AZURE_DEVOPS__ORGANIZATIONS (or BRIDGE_AZURE_DEVOPS__ORGANIZATION_URL, e.g. "
              "https://dev.azure.com/org/)", file=out)
        return 2
    if not base:
        print("error: pass --url or set BRIDGE_PUBLIC_URL (the bridge's external HTTPS address)", file=out)
        return 2
    missing = [o.name for o in orgs if not o.has_token]
    if missing and not dry_run:
        print(f"error: no token for {', '.join(missing)}: set BRIDGE_AZURE_DEVOPS__TOKENS__<NAME> (or "
              "BRIDGE_AZURE_DEVOPS__TOKEN for the only one; a PAT with vso.hooks_write and vso.build scopes)", file=out)
        return 2
    url = webhook_url(base)
    if not url.startswith("https://"):
        print(f"warning: {url} is not HTTPS; Azure DevOps refuses basic authentication over plain HTTP", file=out)
    client = AzureDevOpsClient.from_settings(settings)
    code = 0
    try:
        for org in orgs:
            if len(orgs) > 1:
                print(f"organization {org.name} ({org_base(org.url)}):", file=out)
            ado = client if org.has_token else None
            try:
                wanted = await _wanted(ado, settings, routing, org, url)
                existing = await ado.list_subscriptions(org, **FILTER) if ado is not None else []
                if check:
                    code = max(code, _check(wanted, existing, url, out))
                else:
                    code = max(code, await _apply(ado, org, wanted, existing, url, dry_run, out))
            except BridgeError as exc:
                print(f"error: {exc}", file=out)
                code = max(code, 1)
    finally:
        await client.aclose()
    return code


def _check(wanted: list[Wanted], existing: list[dict[str, Any]], url: str, out: TextIO) -> int:
    ours = [s for s in existing if (s.get("consumerInputs") or {}).get("url") == url]
    print(f"subscriptions sending build.complete to {url}: {len(ours)}", file=out)
    for sub in ours:
        print("  " + _status_line(sub), file=out)
    problems = 0
    for want in wanted:
        found = [s for s in ours if _matches(s, want, url)]
        if not found:
            problems += 1
            print(f"missing: {want.label} (run `gitops-bridge subscribe`)", file=out)
        elif found[0].get("status") != "enabled":
            problems += 1
            print(f"not enabled: {want.label} is {found[0].get('status')}", file=out)
    return 1 if problems else 0


async def _apply(ado: AzureDevOpsClient | None, org: Organization, wanted: list[Wanted], existing: list[dict[str, Any]],
                 url: str, dry_run: bool, out: TextIO) -> int:
    for want in wanted:
        found = [s for s in existing if _matches(s, want, url)]
        current = found[0] if found else None
        if len(found) > 1:
            print(f"warning: {want.label}: {len(found)} identical subscriptions; only {current and current.get('id')} "
                  "is managed, delete the others", file=out)
        if current is None:
            action, method = "create", f"POST {org_base(org.url)}_apis/hooks/subscriptions"
        elif current.get("status") == "disabledBySystem":
            action, method = "recreate", f"DELETE+POST {org_base(org.url)}_apis/hooks/subscriptions/{current.get('id')}"
        elif _differs(current, want.body):
            action, method = "replace", f"PUT {org_base(org.url)}_apis/hooks/subscriptions/{current.get('id')}"
        else:
            print(f"unchanged: {want.label} ({current.get('id')})", file=out)
            continue
        if dry_run or ado is None:
            print(f"would {action}: {want.label}\n{method}", file=out)
            print(json.dumps(masked(want.body), indent=2), file=out)
            continue
        if current is None:
            result = await ado.create_subscription(org, want.body)
        elif action == "recreate":
            await ado.delete_subscription(org, str(current["id"]))
            result = await ado.create_subscription(org, want.body)
        else:
            result = await ado.replace_subscription(org, str(current["id"]), {**want.body, "status": "enabled"})
        done = {"create": "created", "recreate": "recreated", "replace": "updated"}[action]
        print(f"{done}: {want.label} ({result.get('id')}, {result.get('status')})", file=out)
    return 0
