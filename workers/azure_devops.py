"""The Azure DevOps client (report-back, build look-ups, service hooks) and the build → BuildEvent converter.

Every method takes the organization base URL (`https://dev.azure.com/org/`, as stored on the deployment record) and,
where the API is project-scoped, the project (id or name). Errors are translated at the boundary:

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

from bridge import metrics
from bridge.errors import AuthError, InvalidBuild, NotFound, PermanentError, UpstreamUnavailable
from bridge.events import BUILD_COMPLETE, SHA, BuildEvent, Repo
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
    """One httpx.AsyncClient with explicit timeouts; `enabled` is False without a token (reports are then skipped)."""

    def __init__(
        self,
        token: str | None,
        *,
        auth: str = "pat",
        api_version: str = "7.1",
        timeout: float = 15.0,
        organization_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.enabled = bool(token)
        self.api_version = api_version
        self.organization_url = org_base(organization_url) if organization_url else None
        headers = {"Accept": "application/json", "User-Agent": "gitops-bridge"}
        if token:
            if auth == "bearer":
                headers["Authorization"] = f"Bearer {token}"
            else:
                headers["Authorization"] = "Basic " + base64.b64encode(f":{token}".encode()).decode()
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AzureDevOpsClient:
        ado = settings.azure_devops
        return cls(
            ado.token.get_secret_value() if ado.token else None,
            auth=ado.auth,
            api_version=ado.api_version,
            timeout=ado.timeout_seconds,
            organization_url=ado.organization_url,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport -------------------------------------------------------------------------------------------------

    async def _request(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> httpx.Response:
        if not self.enabled:
            metrics.ADO_REQUESTS.labels(operation=operation, outcome="auth").inc()
            raise AuthError(SYSTEM, "no token configured (BRIDGE_AZURE_DEVOPS__TOKEN)")
        query = {"api-version": self.api_version, **{k: v for k, v in (params or {}).items() if v is not None}}
        headers = {}
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

    def _project_url(self, org_url: str, project: str) -> str:
        return f"{org_base(org_url)}{_seg(project)}/_apis/"

    # -- builds ----------------------------------------------------------------------------------------------------

    async def get_build(self, org_url: str, project: str, build_id: int) -> dict[str, Any]:
        url = f"{self._project_url(org_url, project)}build/builds/{int(build_id)}"
        response = await self._request("get_build", "GET", url, what=f"build {build_id} in project {project}")
        build: dict[str, Any] = self._json(response)
        return build

    async def list_builds(
        self,
        org_url: str,
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
        url = f"{self._project_url(org_url, project)}build/builds"
        params: dict[str, Any] = {
            "statusFilter": status,
            "minTime": min_time,
            "queryOrder": query_order,
            "$top": top,
            "definitions": ",".join(str(d) for d in definitions) if definitions else None,
        }
        builds: list[dict[str, Any]] = []
        for _ in range(max_pages):
            response = await self._request("list_builds", "GET", url, params=params, what=f"project {project}")
            body = self._json(response)
            builds.extend(b for b in body.get("value", []) if isinstance(b, dict))
            token = response.headers.get("x-ms-continuationtoken")
            if not token:
                break
            params["continuationToken"] = token
        return builds

    async def get_build_tags(self, org_url: str, project: str, build_id: int) -> list[str]:
        url = f"{self._project_url(org_url, project)}build/builds/{int(build_id)}/tags"
        tags: list[str] = self._json(await self._request("tags", "GET", url, what=f"build {build_id}"))
        return tags

    async def add_build_tags(self, org_url: str, project: str, build_id: int, tags: list[str]) -> list[str]:
        """POST a JSON array (path-segment tag APIs break on special characters); returns every tag of the build."""
        url = f"{self._project_url(org_url, project)}build/builds/{int(build_id)}/tags"
        response = await self._request("tags", "POST", url, body=list(tags), what=f"build {build_id}")
        result: list[str] = self._json(response)
        return result

    async def update_build_tags(
        self, org_url: str, project: str, build_id: int, *, add: list[str], remove: list[str]
    ) -> list[str]:
        """Add and remove tags in one request (PATCH with tagsToAdd/tagsToRemove); returns every tag of the build."""
        url = f"{self._project_url(org_url, project)}build/builds/{int(build_id)}/tags"
        body = {"tagsToAdd": list(add), "tagsToRemove": list(remove)}
        result: list[str] = self._json(await self._request("tags", "PATCH", url, body=body, what=f"build {build_id}"))
        return result

    async def get_build_properties(self, org_url: str, project: str, build_id: int) -> dict[str, Any]:
        """Properties as plain values (`$value` unwrapped)."""
        url = f"{self._project_url(org_url, project)}build/builds/{int(build_id)}/properties"
        body = self._json(await self._request("properties", "GET", url, what=f"build {build_id}"))
        return _unwrap_properties(body)

    async def update_build_properties(
        self, org_url: str, project: str, build_id: int, patch: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply a JSON Patch document (`application/json-patch+json`); returns the properties as plain values."""
        url = f"{self._project_url(org_url, project)}build/builds/{int(build_id)}/properties"
        response = await self._request("properties", "PATCH", url, body=patch, content_type=JSON_PATCH,
                                       what=f"build {build_id}")
        return _unwrap_properties(self._json(response))

    async def get_definition(self, org_url: str, project: str, definition_id: int) -> dict[str, Any]:
        url = f"{self._project_url(org_url, project)}build/definitions/{int(definition_id)}"
        definition: dict[str, Any] = self._json(
            await self._request("definitions", "GET", url, what=f"definition {definition_id} in project {project}")
        )
        return definition

    async def get_project(self, org_url: str, project: str) -> dict[str, Any]:
        url = f"{org_base(org_url)}_apis/projects/{_seg(project)}"
        found: dict[str, Any] = self._json(await self._request("projects", "GET", url, what=f"project {project}"))
        return found

    # -- commit statuses -------------------------------------------------------------------------------------------

    def _statuses_url(self, org_url: str, project: str, repository_id: str, commit: str) -> str:
        return (f"{self._project_url(org_url, project)}git/repositories/{_seg(repository_id)}"
                f"/commits/{_seg(commit)}/statuses")

    async def list_commit_statuses(
        self, org_url: str, project: str, repository_id: str, commit: str, *, latest_only: bool = True
    ) -> list[dict[str, Any]]:
        url = self._statuses_url(org_url, project, repository_id, commit)
        response = await self._request("commit_status", "GET", url, params={"latestOnly": str(latest_only).lower()},
                                       what=f"commit {commit[:12]} in repository {repository_id}")
        statuses: list[dict[str, Any]] = self._json(response).get("value", [])
        return statuses

    async def create_commit_status(
        self,
        org_url: str,
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
        url = self._statuses_url(org_url, project, repository_id, commit)
        created: dict[str, Any] = self._json(await self._request(
            "commit_status", "POST", url, body=body, what=f"commit {commit[:12]} in repository {repository_id}"
        ))
        return created

    # -- service hooks ---------------------------------------------------------------------------------------------

    async def list_subscriptions(
        self,
        org_url: str,
        *,
        publisher_id: str | None = None,
        event_type: str | None = None,
        consumer_id: str | None = None,
        consumer_action_id: str | None = None,
    ) -> list[dict[str, Any]]:
        url = f"{org_base(org_url)}_apis/hooks/subscriptions"
        params = {"publisherId": publisher_id, "eventType": event_type, "consumerId": consumer_id,
                  "consumerActionId": consumer_action_id}
        body = self._json(await self._request("hooks", "GET", url, params=params, what="subscriptions"))
        subs: list[dict[str, Any]] = body.get("value", [])
        return subs

    async def query_subscriptions(self, org_url: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        url = f"{org_base(org_url)}_apis/hooks/subscriptionsquery"
        body = self._json(await self._request("hooks", "POST", url, body=query, what="subscriptions"))
        results: list[dict[str, Any]] = body.get("results") or []
        return results

    async def create_subscription(self, org_url: str, subscription: dict[str, Any]) -> dict[str, Any]:
        url = f"{org_base(org_url)}_apis/hooks/subscriptions"
        created: dict[str, Any] = self._json(
            await self._request("hooks", "POST", url, body=subscription, what="subscriptions")
        )
        return created

    async def replace_subscription(
        self, org_url: str, subscription_id: str, subscription: dict[str, Any]
    ) -> dict[str, Any]:
        url = f"{org_base(org_url)}_apis/hooks/subscriptions/{_seg(subscription_id)}"
        replaced: dict[str, Any] = self._json(
            await self._request("hooks", "PUT", url, body=subscription, what=f"subscription {subscription_id}")
        )
        return replaced

    async def delete_subscription(self, org_url: str, subscription_id: str) -> None:
        url = f"{org_base(org_url)}_apis/hooks/subscriptions/{_seg(subscription_id)}"
        await self._request("hooks", "DELETE", url, what=f"subscription {subscription_id}")


def _unwrap_properties(body: Any) -> dict[str, Any]:
    values = body.get("value", {}) if isinstance(body, dict) else {}
    return {k: (v.get("$value") if isinstance(v, dict) and "$value" in v else v) for k, v in values.items()}


# -- builds as events ----------------------------------------------------------------------------------------------

def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def build_event_from_api(org_url: str, build: dict[str, Any], *, source: str = "reconciler") -> BuildEvent:
    """A `GET _apis/build/builds/{id}` answer as the BuildEvent the webhook would have produced (same build_key)."""
    base = org_base(org_url)
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
        collection_id=base,
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
        extra={"source": source},
    )


async def lookup_build(ado: AzureDevOpsClient, event: BuildEvent) -> BuildEvent:
    """Fill what a minimal or run-state-changed event lacks from `GET _apis/build/builds/{id}`.

    The event's identity (base_url, collection_id, project_id when known) is kept, so `build_key` only changes when
    the event had no project id at all. Raises AuthError/NotFound/UpstreamUnavailable from the client, InvalidBuild
    when neither the event nor the settings name the organization or the project.
    """
    org = event.base_url or ado.organization_url
    project = event.project_id or event.project_name
    if not org:
        raise InvalidBuild(
            f"build {event.build_id}: organization URL unknown (set BRIDGE_AZURE_DEVOPS__ORGANIZATION_URL)"
        )
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
    )
