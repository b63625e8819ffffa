"""The Argo CD REST client: read an Application, refresh it, start a sync. Errors become `bridge.errors` types.

    401                                   → AuthError
    403 (no `project` sent)               → AuthError "permission denied, or the application does not exist"
    403 (with `project`)                  → AuthError "permission denied"
    404 (with `project`)                  → NotFound "application <name> in project <project>"
    400 code 9 on sync                    → SyncBusy (another operation is in progress: wait, do not fail)
    other 4xx                             → ArgoCDRejected (permanent, carries Argo CD's message)
    429, 5xx, timeouts, connection errors → UpstreamUnavailable (retry_after from `Retry-After`)

Always send `project`: Argo CD hides whether an app exists unless it is given (reference README §3).
`?refresh=normal` blocks until the controller reconciles and has no server-side timeout, so `refresh` bounds it and
falls back to a plain GET. Non-GET requests carry exactly `Content-Type: application/json` (anything else is 415).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from bridge import metrics
from bridge.errors import AuthError, NotFound, PermanentError, UpstreamUnavailable
from bridge.settings import DEFAULT_ARGOCD, Settings

log = logging.getLogger("gitops_bridge.argocd")
SYSTEM = "Argo CD"
ANOTHER_OPERATION = 9  # gRPC FailedPrecondition, "another operation is already in progress"


class ArgoCDRejected(PermanentError):
    """Argo CD refused the request (4xx other than auth/not-found), e.g. a revision on an auto-sync app."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{SYSTEM} rejected the request ({status}): {message}")


@dataclass(frozen=True)
class Refreshed:
    application: dict[str, Any]
    refreshed: bool  # False: the refresh timed out or failed and this is a plain GET


@dataclass(frozen=True)
class SyncStarted:
    application: dict[str, Any]


@dataclass(frozen=True)
class SyncBusy:
    """Another operation is already in progress: wait for it, then judge again."""

    message: str


@dataclass(frozen=True)
class SyncBlocked:
    """403 `cannot sync: blocked by sync window` (or an invalid window): not now, maybe later."""

    message: str


SyncOutcome = SyncStarted | SyncBusy | SyncBlocked


def app_url(base_url: str, name: str, namespace: str | None = None) -> str:
    """The Argo CD UI link for an application."""
    base = base_url.rstrip("/")
    return f"{base}/applications/{quote(namespace, safe='')}/{quote(name, safe='')}" if namespace else \
        f"{base}/applications/{quote(name, safe='')}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_body(response: httpx.Response) -> tuple[str, int | None]:
    """Argo CD's `{"error","code","message"}` body, or plain text (415/404/405 come from the gateway as text)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return (response.text.strip()[:300] or response.reason_phrase), None
    if isinstance(body, dict):
        code = body.get("code")
        return str(body.get("message") or body.get("error") or response.reason_phrase)[:300], \
            code if isinstance(code, int) else None
    return response.reason_phrase, None


class ArgoCDClient:
    """One `httpx.AsyncClient` with explicit timeouts and a bearer token. Close it with `aclose()`."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        verify_tls: bool = True,
        request_timeout: float = 15.0,
        refresh_timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = DEFAULT_ARGOCD,
    ) -> None:
        self.name = name
        self.default_name: str | None = name
        self.siblings: dict[str, ArgoCDClient] = {}  # every configured instance, when built from settings
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.refresh_timeout = refresh_timeout
        headers = {"Accept": "application/json", "User-Agent": "gitops-bridge"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, verify=verify_tls, transport=transport,
            timeout=httpx.Timeout(request_timeout, connect=min(request_timeout, 5.0)), follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ArgoCDClient | None:
        """The client of the default instance, knowing every other configured instance (`instance(name)`)."""
        cfg = settings.argocd
        urls = cfg.instance_urls()
        if not urls:
            return None
        tokens = {name.lower(): value for name, value in cfg.tokens.items()}
        verify = {i.name: i.verify_tls for i in cfg.instances}
        clients: dict[str, ArgoCDClient] = {}
        for name, url in urls.items():
            token = tokens.get(name) or (cfg.token if name == DEFAULT_ARGOCD or len(urls) == 1 else None)
            tls = verify.get(name)
            clients[name] = cls(
                url, token.get_secret_value() if token else None, verify_tls=cfg.verify_tls if tls is None else tls,
                request_timeout=cfg.request_timeout_seconds, refresh_timeout=cfg.refresh_timeout_seconds, name=name,
            )
        default = cfg.default_instance()
        head = clients[default] if default else clients[sorted(clients)[0]]
        head.siblings, head.default_name = clients, default
        return head

    def instance(self, name: str | None) -> ArgoCDClient | None:
        """The client of instance `name` (None: the default instance); None when no such instance is configured."""
        if name is None:
            return self if self.default_name is not None else None
        return self.siblings.get(name) or (self if name == self.name else None)

    async def aclose(self) -> None:
        for sibling in self.siblings.values():
            if sibling is not self:
                await sibling.aclose()
        await self._http.aclose()

    def app_url(self, name: str, namespace: str | None = None) -> str:
        return app_url(self.base_url, name, namespace)

    def apps_url(self, selector: str | None, namespace: str | None = None) -> str:
        """The Argo CD UI list filtered by labels (and namespace)."""
        params = {k: v for k, v in (("labels", selector), ("namespace", namespace)) if v}
        return f"{self.base_url}/applications" + (f"?{urlencode(params)}" if params else "")

    # -- requests ----------------------------------------------------------------------------------------------

    @staticmethod
    def _params(project: str | None, namespace: str | None, **extra: str) -> dict[str, str]:
        params = {k: v for k, v in (("project", project), ("appNamespace", namespace)) if v}
        params.update(extra)
        return params

    async def _request(self, method: str, path: str, *, what: str, project: str | None,
                       params: dict[str, str] | None = None, body: dict[str, Any] | None = None,
                       timeout: float | None = None) -> httpx.Response:
        kwargs: dict[str, Any] = {"params": params or {}}
        if body is not None:
            # Exact header value: Argo CD answers 415 to `application/json; charset=utf-8`.
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": "application/json"}
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=min(timeout, 5.0))
        try:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.RemoteProtocolError:
                if method != "GET":
                    raise
                # a pooled keep-alive connection the server closed while idle: a read is safe to send again, once
                response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            metrics.ARGOCD_REQUESTS.labels(outcome="timeout").inc()
            raise UpstreamUnavailable(SYSTEM, f"{method} {what}: timed out") from exc
        except httpx.HTTPError as exc:
            metrics.ARGOCD_REQUESTS.labels(outcome="unavailable").inc()
            raise UpstreamUnavailable(SYSTEM, f"{method} {what}: {type(exc).__name__}") from exc
        status = response.status_code
        if status < 400:
            metrics.ARGOCD_REQUESTS.labels(outcome="ok").inc()
            return response
        message, code = _error_body(response)
        if status == 429 or status >= 500:
            metrics.ARGOCD_REQUESTS.labels(outcome="unavailable").inc()
            raise UpstreamUnavailable(SYSTEM, f"{method} {what}: {status} {message}", status=status,
                                      retry_after=_retry_after(response))
        metrics.ARGOCD_REQUESTS.labels(outcome="error").inc()
        if status == 401:
            raise AuthError(SYSTEM, f"{what}: unauthenticated ({message})")
        if status == 403:
            if project:
                raise AuthError(SYSTEM, f"{what}: permission denied ({message})")
            raise AuthError(SYSTEM, f"{what}: permission denied, or the application does not exist "
                                    "(set the Argo CD project to tell them apart)")
        if status == 404:
            raise NotFound(SYSTEM, f"{what} in project {project}" if project else what)
        raise ArgoCDRejected(status, message, code)

    async def get_application(self, name: str, project: str | None = None,
                              namespace: str | None = None) -> dict[str, Any]:
        """The stored Application, immediately (no refresh)."""
        response = await self._request("GET", f"/api/v1/applications/{quote(name, safe='')}",
                                       what=f"application {name}", project=project,
                                       params=self._params(project, namespace))
        app: dict[str, Any] = response.json()
        return app

    async def list_applications(self, selector: str, project: str | None = None,
                                namespace: str | None = None) -> list[dict[str, Any]]:
        """Applications matching a label selector (and project): `GET /api/v1/applications?selector=…&projects=…`.
        Argo CD silently leaves out the ones we may not read; `items` is null when nothing matches."""
        params = {"selector": selector, **({"projects": project} if project else {}),
                  **({"appNamespace": namespace} if namespace else {})}
        response = await self._request("GET", "/api/v1/applications", what=f"applications matching {selector!r}",
                                       project=project, params=params)
        body = response.json()
        items = body.get("items") if isinstance(body, dict) else None
        return [i for i in items or [] if isinstance(i, dict)]

    async def live_manifest(self, name: str, project: str | None, namespace: str | None, *, kind: str, group: str,
                            resource_name: str, resource_namespace: str | None, version: str) -> dict[str, Any]:
        """A managed resource's live manifest (`GET …/resource`), e.g. a Rollout's status for its canary step."""
        params = self._params(project, namespace, kind=kind, group=group, resourceName=resource_name,
                              version=version)
        if resource_namespace:
            params["namespace"] = resource_namespace
        response = await self._request("GET", f"/api/v1/applications/{quote(name, safe='')}/resource",
                                       what=f"{kind} {resource_name} of application {name}", project=project,
                                       params=params)
        body = response.json()
        manifest = json.loads(body.get("manifest") or "{}") if isinstance(body, dict) else {}
        return manifest if isinstance(manifest, dict) else {}

    async def refresh(self, name: str, project: str | None = None, namespace: str | None = None, *,
                      timeout: float | None = None, hard: bool = False) -> Refreshed:
        """Ask for a refresh and wait (bounded) for the reconcile; on timeout or 5xx fall back to a plain GET."""
        try:
            response = await self._request(
                "GET", f"/api/v1/applications/{quote(name, safe='')}", what=f"application {name}",
                project=project, params=self._params(project, namespace, refresh="hard" if hard else "normal"),
                timeout=timeout if timeout is not None else self.refresh_timeout,
            )
        except UpstreamUnavailable as exc:
            if exc.status == 429:
                raise
            # The refresh hangs while the controller cannot reconcile; the server may also answer 500
            # "application refresh deadline exceeded". The annotation stays; a plain GET tells us where it is.
            log.info("Argo CD refresh of %s did not complete (%s); reading without refresh", name, exc)
            return Refreshed(await self.get_application(name, project, namespace), refreshed=False)
        return Refreshed(response.json(), refreshed=True)

    async def sync(self, name: str, project: str | None = None, namespace: str | None = None, *,
                   infos: list[dict[str, str]] | dict[str, str] | None = None, revision: str | None = None,
                   prune: bool = False) -> SyncOutcome:
        """POST /sync. Never pass `revision` for an auto-sync app (Argo CD answers 400). Busy → SyncBusy."""
        if isinstance(infos, dict):
            infos = [{"name": k, "value": v} for k, v in infos.items()]
        body: dict[str, Any] = {"prune": prune}
        if project:
            body["project"] = project
        if namespace:
            body["appNamespace"] = namespace
        if infos:
            body["infos"] = infos
        if revision:
            body["revision"] = revision
        try:
            response = await self._request("POST", f"/api/v1/applications/{quote(name, safe='')}/sync",
                                           what=f"application {name} (sync)", project=project, body=body)
        except ArgoCDRejected as exc:
            if exc.code == ANOTHER_OPERATION and "another operation is already in progress" in exc.message:
                return SyncBusy(exc.message)
            raise
        except AuthError as exc:
            if "cannot sync:" in str(exc):  # sync windows are checked before RBAC `sync` (reference README §4.2)
                return SyncBlocked(str(exc)[str(exc).index("cannot sync:"):].rstrip(")"))
            raise
        return SyncStarted(response.json())

    async def sync_windows(self, name: str, project: str | None = None,
                           namespace: str | None = None) -> dict[str, Any]:
        """`GET …/syncwindows`: `{"activeWindows", "assignedWindows", "canSync"}` for this application."""
        response = await self._request("GET", f"/api/v1/applications/{quote(name, safe='')}/syncwindows",
                                       what=f"sync windows of application {name}", project=project,
                                       params=self._params(project, namespace))
        body = response.json()
        return body if isinstance(body, dict) else {}


def from_settings(settings: Settings) -> ArgoCDClient | None:
    """An `ArgoCDClient`, or None when no Argo CD URL is configured."""
    return ArgoCDClient.from_settings(settings)
