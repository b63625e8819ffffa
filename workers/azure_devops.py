"""The Azure DevOps client (report-back, build look-ups, service hooks) and the build → BuildEvent converter.

Every method takes a configured `bridge.organizations.Organization` (never a URL string: no request can be addressed
with a payload field) and, where the API is project-scoped, the project (id or name). Each request carries that
organization's own credential, and only to its configured URL. Errors are translated at the boundary:

    203 + HTML sign-in page, 401, 403   → AuthError           (a missing, expired or under-scoped token)
    404                                 → NotFound
    408, 429, 5xx, timeouts, no network → UpstreamUnavailable (retry_after from Retry-After)
    any other 4xx                       → PermanentError      (the message ADO sent, truncated)

Real Azure DevOps answers a request without a valid PAT with **203 Non-Authoritative Information and an HTML sign-in
page**, not 401, so a 2xx that is not JSON is an authentication failure too.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import json
import logging
import time
from typing import Any
from urllib.parse import quote

import httpx

from bridge import metrics, organizations
from bridge.errors import AuthError, InvalidBuild, NotFound, PermanentError, UpstreamUnavailable
from bridge.events import BUILD_COMPLETE, SHA, BuildEvent, Repo
from bridge.organizations import Organization
from bridge.settings import Settings

log = logging.getLogger(__name__)

SYSTEM = "Azure DevOps"
JSON_PATCH = "application/json-patch+json"
MAX_PAGES = 20


def org_base(url: str) -> str:
    """`https://dev.azure.com/org` → `https://dev.azure.com/org/` (every path is appended to it)."""
    return url if url.endswith("/") else url + "/"


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return f"HTTP {response.status_code}"


class AzureDevOpsClient:
    """One httpx.AsyncClient with explicit timeouts for the configured organizations; `enabled` is False when none
    has a token (reports and look-ups are then skipped)."""

    def __init__(
        self,
        organizations: list[Organization],
        *,
        auth: str = "pat",
        api_version: str = "7.1",
        timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.organizations = [o for o in organizations if o.has_token]
        self.enabled = bool(self.organizations)
        self.auth = auth
        self.api_version = api_version
        self._http = httpx.AsyncClient(
            headers={"Accept": "application/json", "User-Agent": "gitops-bridge"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureDevOpsClient:
        ado = settings.azure_devops
        info = organizations.summary(ado)
        if info:
            log.info(info)
        for warning in organizations.warnings(ado):
            log.warning(warning)
        return cls(organizations.configured(ado), auth=ado.auth, api_version=ado.api_version,
                   timeout=ado.timeout_seconds)

    def organization(self, name: str | None) -> Organization | None:
        """The configured organization of that name that has a credential, or None."""
        return next((o for o in self.organizations if o.name == (name or "").lower()), None)

    def resolve(
        self, name: str | None, url: str | None = None, collection_id: str | None = None
    ) -> Organization | None:
        """By name; for records and jobs from before organizations were configuration (no name), by matching the URL
        they stored against the configured organizations. Never an organization that is not configured."""
        if name is not None:
            return self.organization(name)
        if url is None and collection_id is None and len(self.organizations) == 1:
            return self.organizations[0]  # records of the single-organization era that stored no URL
        return organizations.match(self.organizations, url, collection_id)

    def _authorization(self, org: Organization) -> str:
        token = org.token.get_secret_value() if org.token is not None else ""
        if self.auth == "bearer":
            return f"Bearer {token}"
        return "Basic " + base64.b64encode(f":{token}".encode()).decode()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport -------------------------------------------------------------------------------------------------

    async def _request(
        self,
        operation: str,
        method: str,
        org: Organization,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> httpx.Response:
        if org not in self.organizations:  # the credential of a configured organization goes to its URL, only
            metrics.ADO_REQUESTS.labels(operation=operation, outcome="auth").inc()
            raise AuthError(SYSTEM, f"organization {org.name!r} is not configured with a token "
                                    f"(BRIDGE_AZURE_DEVOPS__TOKENS__{org.name.upper()})")
        configured = next(o for o in self.organizations if o == org)
        url = org_base(configured.url) + path
        query = {"api-version": self.api_version, **{k: v for k, v in (params or {}).items() if v is not None}}
        headers = {"Authorization": self._authorization(configured)}
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type or "application/json"
        try:
            response = await self._http.request(method, url, params=query, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            metrics.ADO_REQUESTS.labels(operation=operation, outcome="unavailable").inc()
            raise UpstreamUnavailable(SYSTEM, f"{operation}: timed out") from exc
        except httpx.TransportError as exc:
            metrics.ADO_REQUESTS.labels(operation=operation, outcome="unavailable").inc()
            raise UpstreamUnavailable(SYSTEM, f"{operation}: {type(exc).__name__}") from exc
        self._check(operation, what, response)
        metrics.ADO_REQUESTS.labels(operation=operation, outcome="ok").inc()
        return response

    def _check(self, operation: str, what: str, response: httpx.Response) -> None:
        status = response.status_code
        ctype = response.headers.get("content-type", "")
        outcome = "error"
        try:
            if status == 203 or (200 <= status < 300 and "html" in ctype):
                outcome = "auth"
                raise AuthError(SYSTEM, f"{operation}: answered {status} with a sign-in page "
                                        "(token missing, expired or invalid)")
            if 200 <= status < 300:
                return
            if status in (401, 403):
                outcome = "auth"
                raise AuthError(SYSTEM, f"{operation}: {status} {_message(response)}")
            if status == 404:
                outcome = "not_found"
                raise NotFound(SYSTEM, what)
            if status in (408, 429) or status >= 500:
                outcome = "unavailable"
                raise UpstreamUnavailable(SYSTEM, f"{operation}: HTTP {status}", status=status,
                                          retry_after=_retry_after(response.headers.get("retry-after")))
            raise PermanentError(f"{SYSTEM}: {operation} rejected ({status}): {_message(response)}")
        finally:
            if not 200 <= status < 300 or outcome == "auth":
                metrics.ADO_REQUESTS.labels(operation=operation, outcome=outcome).inc()

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamUnavailable(SYSTEM, "answer is not JSON") from exc

    @staticmethod
    def _project_path(project: str) -> str:
        return f"{_seg(project)}/_apis/"

    # -- builds ----------------------------------------------------------------------------------------------------

    async def get_build(self, org: Organization, project: str, build_id: int) -> dict[str, Any]:
        path = f"{self._project_path(project)}build/builds/{int(build_id)}"
        response = await self._request("get_build", "GET", org, path, what=f"build {build_id} in project {project}")
        build: dict[str, Any] = self._json(response)
        return build

    async def list_builds(
        self,
        org: Organization,
        project: str,
        *,
        definitions: list[int] | None = None,
        min_time: str | None = None,
        status: str = "completed",
        query_order: str = "finishTimeAscending",
        top: int = 100,
        max_pages: int = MAX_PAGES,
    ) -> list[dict[str, Any]]:
        """Builds in `query_order`, following `x-ms-continuationtoken` for at most `max_pages` pages."""
        path = f"{self._project_path(project)}build/builds"
        params: dict[str, Any] = {
            "statusFilter": status,
            "minTime": min_time,
            "queryOrder": query_order,
            "$top": top,
            "definitions": ",".join(str(d) for d in definitions) if definitions else None,
        }
        builds: list[dict[str, Any]] = []
        for _ in range(max_pages):
            response = await self._request("list_builds", "GET", org, path, params=params, what=f"project {project}")
            body = self._json(response)
            builds.extend(b for b in body.get("value", []) if isinstance(b, dict))
            token = response.headers.get("x-ms-continuationtoken")
            if not token:
                break
            params["continuationToken"] = token
        return builds

    async def get_build_tags(self, org: Organization, project: str, build_id: int) -> list[str]:
        path = f"{self._project_path(project)}build/builds/{int(build_id)}/tags"
        tags: list[str] = self._json(await self._request("tags", "GET", org, path, what=f"build {build_id}"))
        return tags

    async def add_build_tags(self, org: Organization, project: str, build_id: int, tags: list[str]) -> list[str]:
        """POST a JSON array (path-segment tag APIs break on special characters); returns every tag of the build."""
        path = f"{self._project_path(project)}build/builds/{int(build_id)}/tags"
        response = await self._request("tags", "POST", org, path, body=list(tags), what=f"build {build_id}")
        result: list[str] = self._json(response)
        return result

    async def update_build_tags(
        self, org: Organization, project: str, build_id: int, *, add: list[str], remove: list[str]
    ) -> list[str]:
        """Add and remove tags in one request (PATCH with tagsToAdd/tagsToRemove); returns every tag of the build."""
        path = f"{self._project_path(project)}build/builds/{int(build_id)}/tags"
        body = {"tagsToAdd": list(add), "tagsToRemove": list(remove)}
        response = await self._request("tags", "PATCH", org, path, body=body, what=f"build {build_id}")
        result: list[str] = self._json(response)
        return result

    async def get_build_properties(self, org: Organization, project: str, build_id: int) -> dict[str, Any]:
        """Properties as plain values (`$value` unwrapped)."""
        path = f"{self._project_path(project)}build/builds/{int(build_id)}/properties"
        body = self._json(await self._request("properties", "GET", org, path, what=f"build {build_id}"))
        return _unwrap_properties(body)

    async def update_build_properties(
        self, org: Organization, project: str, build_id: int, patch: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply a JSON Patch document (`application/json-patch+json`); returns the properties as plain values."""
        path = f"{self._project_path(project)}build/builds/{int(build_id)}/properties"
        response = await self._request("properties", "PATCH", org, path, body=patch, content_type=JSON_PATCH,
                                       what=f"build {build_id}")
        return _unwrap_properties(self._json(response))

    async def get_definition(self, org: Organization, project: str, definition_id: int) -> dict[str, Any]:
        path = f"{self._project_path(project)}build/definitions/{int(definition_id)}"
        definition: dict[str, Any] = self._json(
            await self._request("definitions", "GET", org, path,
                                what=f"definition {definition_id} in project {project}")
        )
        return definition

    async def get_project(self, org: Organization, project: str) -> dict[str, Any]:
        path = f"_apis/projects/{_seg(project)}"
        found: dict[str, Any] = self._json(await self._request("projects", "GET", org, path, what=f"project {project}"))
        return found

    # -- commit statuses -------------------------------------------------------------------------------------------

    def _statuses_path(self, project: str, repository_id: str, commit: str) -> str:
        return (f"{self._project_path(project)}git/repositories/{_seg(repository_id)}"
                f"/commits/{_seg(commit)}/statuses")

    async def list_commit_statuses(
        self, org: Organization, project: str, repository_id: str, commit: str, *, latest_only: bool = True
    ) -> list[dict[str, Any]]:
        path = self._statuses_path(project, repository_id, commit)
        response = await self._request("commit_status", "GET", org, path,
                                       params={"latestOnly": str(latest_only).lower()},
                                       what=f"commit {commit[:12]} in repository {repository_id}")
        statuses: list[dict[str, Any]] = self._json(response).get("value", [])
        return statuses

    async def create_commit_status(
        self,
        org: Organization,
        project: str,
        repository_id: str,
        commit: str,
        *,
        state: str,
        description: str,
        target_url: str | None,
        context_name: str,
        context_genre: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "state": state,
            "description": description,
            "context": {"name": context_name, **({"genre": context_genre} if context_genre else {})},
        }
        if target_url:
            body["targetUrl"] = target_url
        path = self._statuses_path(project, repository_id, commit)
        created: dict[str, Any] = self._json(await self._request(
            "commit_status", "POST", org, path, body=body, what=f"commit {commit[:12]} in repository {repository_id}"
        ))
        return created

    # -- service hooks ---------------------------------------------------------------------------------------------

    async def list_subscriptions(
        self,
        org: Organization,
        *,
        publisher_id: str | None = None,
        event_type: str | None = None,
        consumer_id: str | None = None,
        consumer_action_id: str | None = None,
    ) -> list[dict[str, Any]]:
        path = "_apis/hooks/subscriptions"
        params = {"publisherId": publisher_id, "eventType": event_type, "consumerId": consumer_id,
                  "consumerActionId": consumer_action_id}
        body = self._json(await self._request("hooks", "GET", org, path, params=params, what="subscriptions"))
        subs: list[dict[str, Any]] = body.get("value", [])
        return subs

    async def query_subscriptions(self, org: Organization, query: dict[str, Any]) -> list[dict[str, Any]]:
        path = "_apis/hooks/subscriptionsquery"
        body = self._json(await self._request("hooks", "POST", org, path, body=query, what="subscriptions"))
        results: list[dict[str, Any]] = body.get("results") or []
        return results

    async def create_subscription(self, org: Organization, subscription: dict[str, Any]) -> dict[str, Any]:
        path = "_apis/hooks/subscriptions"
        created: dict[str, Any] = self._json(
            await self._request("hooks", "POST", org, path, body=subscription, what="subscriptions")
        )
        return created

    async def replace_subscription(
        self, org: Organization, subscription_id: str, subscription: dict[str, Any]
    ) -> dict[str, Any]:
        path = f"_apis/hooks/subscriptions/{_seg(subscription_id)}"
        replaced: dict[str, Any] = self._json(
            await self._request("hooks", "PUT", org, path, body=subscription, what=f"subscription {subscription_id}")
        )
        return replaced

    async def delete_subscription(self, org: Organization, subscription_id: str) -> None:
        path = f"_apis/hooks/subscriptions/{_seg(subscription_id)}"
        await self._request("hooks", "DELETE", org, path, what=f"subscription {subscription_id}")


def _unwrap_properties(body: Any) -> dict[str, Any]:
    values = body.get("value", {}) if isinstance(body, dict) else {}
    return {k: (v.get("$value") if isinstance(v, dict) and "$value" in v else v) for k, v in values.items()}


# -- builds as events ----------------------------------------------------------------------------------------------

def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def build_event_from_api(org: Organization, build: dict[str, Any], *, source: str = "reconciler") -> BuildEvent:
    """A `GET _apis/build/builds/{id}` answer of `org` as the BuildEvent the webhook would have produced (same
    build_key: the organization's name, the project id, the build id)."""
    base = org_base(org.url)
    build_id = build.get("id")
    if not isinstance(build_id, int) or isinstance(build_id, bool):
        raise InvalidBuild("Azure DevOps build without an integer id")
    project = _obj(build.get("project"))
    definition = _obj(build.get("definition"))
    repo_raw = build.get("repository")
    repo = None
    if isinstance(repo_raw, dict):
        repo = Repo(_s(repo_raw.get("id")), _s(repo_raw.get("type")), _s(repo_raw.get("name")),
                    _s(repo_raw.get("url")))
    version = _s(build.get("sourceVersion"))
    version = version.lower() if version and SHA.fullmatch(version.lower()) else None
    project_id = _s(project.get("id"))
    web = _s(_obj(_obj(build.get("_links")).get("web")).get("href"))
    if web is None and project_id:
        web = f"{base}{project_id}/_build/results?buildId={build_id}"
    def_id = definition.get("id")
    return BuildEvent(
        event_type=BUILD_COMPLETE,
        event_id=None,
        subscription_id=None,
        notification_id=None,
        collection_id=org.id or base,
        base_url=base,
        project_id=project_id,
        project_name=_s(project.get("name")),
        build_id=build_id,
        build_number=_s(build.get("buildNumber")),
        definition_id=def_id if isinstance(def_id, int) and not isinstance(def_id, bool) else None,
        definition_name=_s(definition.get("name")),
        result=_s(build.get("result")) or "none",
        source_branch=_s(build.get("sourceBranch")),
        source_version=version,
        repository=repo,
        web_url=web,
        finish_time=_s(build.get("finishTime")),
        queue_time=_s(build.get("queueTime")),
        extra={"source": source},
        organization=org.name,
    )


async def lookup_build(ado: AzureDevOpsClient, event: BuildEvent) -> BuildEvent:
    """Fill what a minimal or run-state-changed event lacks from `GET _apis/build/builds/{id}`.

    The request goes to the configured organization the event was matched to (never to a URL of the payload). The
    event's identity (organization, project_id when known) is kept, so `build_key` only changes when the event had no
    project id at all. Raises AuthError/NotFound/UpstreamUnavailable from the client, InvalidBuild when the
    organization is not configured with a token or the event names no project.
    """
    org = ado.resolve(event.organization, event.base_url, event.collection_id)
    project = event.project_id or event.project_name
    if org is None:
        raise InvalidBuild(f"build {event.build_id}: organization {event.organization or event.base_url!r} is not "
                           "configured with a token; cannot look the build up")
    if not project:
        raise InvalidBuild(f"build {event.build_id}: the event names no project; cannot look the build up")
    api = build_event_from_api(org, await ado.get_build(org, project, event.build_id))
    return dataclasses.replace(
        event,
        base_url=event.base_url or api.base_url,
        project_id=event.project_id or api.project_id,
        project_name=event.project_name or api.project_name,
        build_number=event.build_number or api.build_number,
        definition_id=event.definition_id if event.definition_id is not None else api.definition_id,
        definition_name=event.definition_name or api.definition_name,
        source_branch=api.source_branch or event.source_branch,
        source_version=api.source_version or event.source_version,
        repository=api.repository or event.repository,
        web_url=event.web_url or api.web_url,
        finish_time=event.finish_time or api.finish_time,
        queue_time=api.queue_time or event.queue_time,
    )
