"""A fake Azure DevOps (builds, tags, properties, commit statuses, service-hook subscriptions) as a Starlette app.

Quirks of the real service it reproduces (see the reference notes):

- no or a wrong PAT → **203 with an HTML sign-in page** (set `bad_auth_status=401` for the other behaviour);
- `api-version` is required (400 `VssVersionNotSpecifiedException`); a GA version above 7.1 is preview-only (400);
- build properties take only `application/json-patch+json` (415 `VssRequestContentTypeNotSupportedException`);
- path-segment tags (`PUT …/tags/{tag}`) cannot carry `/`; POST/PATCH bodies can;
- commit statuses answer **201**, need `context.name`, and only exist for known Azure Repos repositories;
- build lists page with the `x-ms-continuationtoken` response header;
- pipeline plans (agentless tasks in callback mode): `…/distributedtask/hubs/{hub}/plans/{plan}/events` and the
  timeline feed answer **204**, take only the plan's own job token (Bearer or Basic `:token`; a token of another
  plan is refused like a bad PAT), and need `api-version` (`2.0-preview.1` for events, `4.1` for feed/logs);
  `PATCH …/timelines/{timeline}/records` (a task's output variables) takes records with an `id` and variables as
  `{name: {"value": …}}`;
- hook subscriptions mask `basicAuthPassword`, refuse basic auth over plain HTTP and localhost targets, and a
  `disabledBySystem` subscription stays disabled when replaced (anecdotal, Sentry #10407).

Use: `fake = FakeAzureDevOps(pat="pat").start()`; `fake.org_url("org")` is the organization base URL. One fake serves
any number of organizations (the first path segment); `org_pats={"org": "pat-2"}` gives one its own PAT.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from workers.fakes.server import ServedApp

SIGN_IN_PAGE = """<!DOCTYPE html><html><head><title>Azure DevOps Services | Sign In</title></head>
<body><form action="https://login.microsoftonline.com/">Sign in to your account</form></body></html>"""
STATES = ("notSet", "pending", "succeeded", "failed", "error", "notApplicable")
MASK = "********"
CONFIDENTIAL = ("basicAuthPassword",)
Handler = Callable[[Request], Awaitable[Response]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, message: str, type_key: str) -> JSONResponse:
    return JSONResponse(
        {"$id": "1", "innerException": None, "message": message,
         "typeName": f"Microsoft.VisualStudio.Services.WebApi.{type_key}, Microsoft.VisualStudio.Services.WebApi",
         "typeKey": type_key, "errorCode": 0, "eventId": 3000},
        status_code=status,
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    response = JSONResponse(body, status_code=status, headers=headers)
    response.headers["content-type"] = "application/json; charset=utf-8; api-version=7.1"
    return response


@dataclass
class _Fault:
    status: int
    method: str | None
    path: str | None
    times: int
    retry_after: str | None


class FakeAzureDevOps:
    def __init__(self, *, pat: str = "pat", bearer_tokens: tuple[str, ...] = (), bad_auth_status: int = 203,
                 org_pats: dict[str, str] | None = None) -> None:
        self.pat = pat
        self.org_pats = {k.lower(): v for k, v in (org_pats or {}).items()}  # per organization; others take `pat`
        self.bearer_tokens = bearer_tokens
        self.bad_auth_status = bad_auth_status
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self._projects: dict[str, list[dict[str, str]]] = {}            # org → [{id, name}]
        self._builds: dict[tuple[str, int], dict[str, Any]] = {}         # (org, id) → build
        self._tags: dict[tuple[str, int], list[str]] = {}
        self._props: dict[tuple[str, int], dict[str, Any]] = {}
        self._definitions: dict[tuple[str, str, int], dict[str, Any]] = {}  # (org, project id, id)
        self._repos: set[str] = set()
        self._statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (repo id, commit) → oldest first
        self._subs: dict[str, dict[str, Any]] = {}                       # id → stored (unmasked) subscription
        self._sub_org: dict[str, str] = {}
        self._faults: list[_Fault] = []
        self._next_status_id = 1
        self._plans: dict[str, dict[str, Any]] = {}                      # plan id → {token, events, feed, logs}
        self.page_size: int | None = None  # cap every page (forces continuation tokens in tests)
        self.served: ServedApp | None = None
        p = "/{org}/{project}/_apis"
        self.app = Starlette(routes=[
            Route(p + "/build/builds", self._wrap(self.list_builds), methods=["GET"]),
            Route(p + "/build/builds/{build_id:int}", self._wrap(self.get_build), methods=["GET"]),
            Route(p + "/build/builds/{build_id:int}/tags", self._wrap(self.tags_collection),
                  methods=["GET", "POST", "PATCH"]),
            Route(p + "/build/builds/{build_id:int}/tags/{tag}", self._wrap(self.tag_item), methods=["PUT", "DELETE"]),
            Route(p + "/build/builds/{build_id:int}/properties", self._wrap(self.build_properties),
                  methods=["GET", "PATCH"]),
            Route(p + "/build/definitions/{definition_id:int}", self._wrap(self.get_definition), methods=["GET"]),
            Route(p + "/git/repositories/{repo}/commits/{commit}/statuses", self._wrap(self.commit_statuses),
                  methods=["GET", "POST"]),
            Route(p + "/distributedtask/hubs/{hub}/plans/{plan}/events", self._wrap(self.plan_event, plan=True),
                  methods=["POST"]),
            Route(p + "/distributedtask/hubs/{hub}/plans/{plan}/timelines/{timeline}/records/{record}/feed",
                  self._wrap(self.feed_endpoint, plan=True), methods=["POST"]),
            Route(p + "/distributedtask/hubs/{hub}/plans/{plan}/logs", self._wrap(self.plan_log_create, plan=True),
                  methods=["POST"]),
            Route(p + "/distributedtask/hubs/{hub}/plans/{plan}/logs/{log_id:int}",
                  self._wrap(self.plan_log_append, plan=True), methods=["POST"]),
            Route(p + "/distributedtask/hubs/{hub}/plans/{plan}/timelines/{timeline}/records",
                  self._wrap(self.plan_records, plan=True), methods=["PATCH"]),
            Route("/{org}/_apis/projects/{project}", self._wrap(self.get_project), methods=["GET"]),
            Route("/{org}/_apis/hooks/subscriptions", self._wrap(self.hook_subscriptions), methods=["GET", "POST"]),
            Route("/{org}/_apis/hooks/subscriptions/{sub_id}", self._wrap(self.subscription_item),
                  methods=["GET", "PUT", "DELETE"]),
            Route("/{org}/_apis/hooks/subscriptionsquery", self._wrap(self.subscriptions_query), methods=["POST"]),
        ])

    # -- serving ---------------------------------------------------------------------------------------------------

    def start(self) -> FakeAzureDevOps:
        self.served = ServedApp(self.app).start()
        return self

    def stop(self) -> None:
        if self.served:
            self.served.stop()

    def __enter__(self) -> FakeAzureDevOps:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.served is not None, "start() the fake first"
        return self.served.url

    def org_url(self, org: str) -> str:
        return f"{self.url}/{org}/"

    # -- test setup and inspection ---------------------------------------------------------------------------------

    def add_project(self, org: str, name: str, project_id: str | None = None) -> dict[str, str]:
        with self.lock:
            for p in self._projects.setdefault(org.lower(), []):
                if p["name"].lower() == name.lower() or (project_id and p["id"] == project_id):
                    return dict(p)
            project = {"id": project_id or str(uuid.uuid4()), "name": name}
            self._projects[org.lower()].append(project)
            return dict(project)

    def add_definition(self, org: str, project: str, definition_id: int, name: str) -> None:
        p = self.add_project(org, project)
        with self.lock:
            self._definitions[(org.lower(), p["id"], definition_id)] = {
                "id": definition_id, "name": name, "project": dict(p), "type": "build", "path": "\\",
            }

    def add_repository(self, repository_id: str) -> None:
        with self.lock:
            self._repos.add(repository_id.lower())

    def remove_repository(self, repository_id: str) -> None:
        """Forget a repository: commit statuses on it answer 404 (deleted, or invisible to the token)."""
        with self.lock:
            self._repos.discard(repository_id.lower())

    def add_build(self, org: str, project: str, build: dict[str, Any]) -> dict[str, Any]:
        """Register a build (missing fields get realistic defaults); returns the stored build JSON."""
        p = self.add_project(org, project)
        b = copy.deepcopy(build)
        build_id = int(b["id"])
        b.setdefault("buildNumber", f"20240101.{build_id}")
        b.setdefault("status", "completed")
        b.setdefault("result", "succeeded")
        b.setdefault("finishTime", _now())
        b.setdefault("queueTime", b["finishTime"])
        b.setdefault("sourceBranch", "refs/heads/main")
        b.setdefault("orchestrationPlan", {"planId": str(uuid.uuid4())})
        b["project"] = {"id": p["id"], "name": p["name"], "state": "wellFormed"}
        b.setdefault("definition", {"id": 1, "name": "ci"})
        b["definition"] = {**b["definition"], "type": "build", "project": b["project"]}
        base = self.org_url(org) if self.served else f"https://dev.azure.com/{org}/"
        b["url"] = f"{base}{p['id']}/_apis/build/Builds/{build_id}"
        b["uri"] = f"vstfs:///Build/Build/{build_id}"
        b.setdefault("_links", {"web": {"href": f"{base}{p['id']}/_build/results?buildId={build_id}"}})
        repo = b.get("repository")
        with self.lock:
            if isinstance(repo, dict) and repo.get("type") == "TfsGit" and repo.get("id"):
                self._repos.add(str(repo["id"]).lower())
            definition = b["definition"]
            self._definitions.setdefault((org.lower(), p["id"], int(definition["id"])), dict(definition))
            self._builds[(org.lower(), build_id)] = b
            self._tags.setdefault((org.lower(), build_id), list(b.get("tags") or []))
            self._props.setdefault((org.lower(), build_id), {})
            return copy.deepcopy(b)

    def add_plan(self, plan_id: str | None = None, token: str | None = None) -> tuple[str, str]:
        """A pipeline run's orchestration plan and its job access token (the `AuthToken` header of a gate call)."""
        plan_id = (plan_id or str(uuid.uuid4())).lower()
        token = token or f"job-token-{uuid.uuid4().hex}"
        with self.lock:
            self._plans[plan_id] = {"token": token, "events": [], "feed": [], "logs": {}, "records": []}
        return plan_id, token

    def plan_events(self, plan_id: str) -> list[dict[str, Any]]:
        """Every event posted to the plan (TaskStarted, TaskCompleted, …), oldest first."""
        with self.lock:
            return copy.deepcopy(self._plans[plan_id.lower()]["events"])

    def plan_feed(self, plan_id: str) -> list[str]:
        """Every live console line posted to the plan's timeline records, oldest first."""
        with self.lock:
            return list(self._plans[plan_id.lower()]["feed"])

    def plan_variables(self, plan_id: str) -> dict[str, dict[str, str]]:
        """The variables set on the plan's timeline records (a task's output variables), by record id."""
        out: dict[str, dict[str, str]] = {}
        with self.lock:
            for record in self._plans[plan_id.lower()]["records"]:
                for name, value in (record.get("variables") or {}).items():
                    out.setdefault(str(record["id"]).lower(), {})[name] = value.get("value")
        return out

    def _key(self, build_id: int, org: str | None) -> tuple[str, int]:
        if org is not None:
            return (org.lower(), build_id)
        matches = [k for k in self._builds if k[1] == build_id]
        if len(matches) != 1:
            raise KeyError(f"build {build_id}: {len(matches)} matches; pass org=")
        return matches[0]

    def tags(self, build_id: int, org: str | None = None) -> list[str]:
        with self.lock:
            return list(self._tags[self._key(build_id, org)])

    def properties(self, build_id: int, org: str | None = None) -> dict[str, Any]:
        with self.lock:
            return dict(self._props[self._key(build_id, org)])

    def statuses(self, repository_id: str, commit: str) -> list[dict[str, Any]]:
        """Every status posted on the commit, oldest first."""
        with self.lock:
            return copy.deepcopy(self._statuses.get((repository_id.lower(), commit.lower()), []))

    def subscriptions(self, org: str | None = None) -> list[dict[str, Any]]:
        """Subscriptions as stored (secrets unmasked), for assertions."""
        with self.lock:
            return [copy.deepcopy(s) for i, s in self._subs.items() if org is None or self._sub_org[i] == org.lower()]

    def set_subscription_status(self, sub_id: str, status: str, *, probation_retries: int = 0,
                                last_probation_retry_date: str | None = None) -> None:
        with self.lock:
            sub = self._subs[sub_id]
            sub["status"] = status
            sub["probationRetries"] = probation_retries
            if last_probation_retry_date:
                sub["lastProbationRetryDate"] = last_probation_retry_date

    def fail(self, status: int, *, method: str | None = None, path: str | None = None, times: int = 1,
             retry_after: float | None = None) -> None:
        """The next `times` matching requests (path substring) answer `status` (a Retry-After header if given)."""
        with self.lock:
            self._faults.append(_Fault(status, method, path, times,
                                       None if retry_after is None else str(int(retry_after))))

    def requests_to(self, method: str, path_contains: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["method"] == method and path_contains in r["path"]]

    # -- request pipeline ------------------------------------------------------------------------------------------

    def _wrap(self, handler: Handler, *, plan: bool = False) -> Handler:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            auth = request.headers.get("authorization", "")
            with self.lock:
                self.requests.append({
                    "method": request.method, "path": request.url.path, "query": dict(request.query_params),
                    "content_type": request.headers.get("content-type"), "body": parsed,
                    "auth": auth.split(" ", 1)[0].lower() or None,
                })
                fault = next((f for f in self._faults if f.times > 0 and (f.method in (None, request.method))
                              and (f.path is None or f.path in request.url.path)), None)
                if fault:
                    fault.times -= 1
            if fault:
                response = _error(fault.status, f"injected failure {fault.status}", "InjectedFault")
                if fault.retry_after:
                    response.headers["Retry-After"] = fault.retry_after
                return response
            allowed = (self._plan_authorized(auth, request.path_params.get("plan", "")) if plan
                       else self._authorized(auth, request.url.path.split("/")[1]))
            if not allowed:
                if self.bad_auth_status == 203:
                    return HTMLResponse(SIGN_IN_PAGE, status_code=203)
                return Response("Access Denied: The Personal Access Token used has expired.", status_code=401,
                                media_type="text/plain")
            version = request.query_params.get("api-version")
            if not version:
                return _error(400, f'No api-version was supplied for the "{request.method}" request. The version must '
                              'be supplied either as part of the Accept header (e.g. "application/json; '
                              'api-version=1.0") or as a query parameter (e.g. \'?api-version=1.0\').',
                              "VssVersionNotSpecifiedException")
            m = re.fullmatch(r"(\d+)\.(\d+)(-preview(\.\d+)?)?", version)
            if not m:
                return _error(400, f"The api-version '{version}' is not valid.", "VssInvalidApiVersionException")
            if (int(m.group(1)), int(m.group(2))) > (7, 1) and not m.group(3):
                return _error(400, f'The requested version "{version}" of the resource is under preview. The '
                              '-preview flag must be supplied in the api-version for such requests.',
                              "VssInvalidPreviewVersionException")
            request.state.body = parsed
            return await handler(request)

        return endpoint

    def _authorized(self, header: str, org: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            return decoded.partition(":")[2] == self.org_pats.get(org.lower(), self.pat)
        if scheme.lower() == "bearer":
            return value in self.bearer_tokens
        return False

    def _plan_authorized(self, header: str, plan_id: str) -> bool:
        """Only the plan's own job token: Bearer, or Basic with an empty user (Microsoft's samples use both)."""
        with self.lock:
            stored = self._plans.get(plan_id.lower())
        if stored is None:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return bool(value == stored["token"])
        if scheme.lower() == "basic":
            try:
                return bool(base64.b64decode(value, validate=True).decode().partition(":")[2] == stored["token"])
            except (ValueError, UnicodeDecodeError):
                return False
        return False

    def _plan(self, request: Request) -> dict[str, Any]:
        return self._plans[request.path_params["plan"].lower()]

    async def plan_event(self, request: Request) -> Response:
        body = request.state.body
        if not isinstance(body, dict) or not body.get("name") or not body.get("jobId"):
            return _error(400, "Value cannot be null. Parameter name: eventData", "ArgumentNullException")
        if body["name"] == "TaskCompleted" and body.get("result") not in ("succeeded", "failed", "skipped",
                                                                          "canceled", "abandoned"):
            return _error(400, f"invalid result {body.get('result')!r}", "ArgumentException")
        with self.lock:
            self._plan(request)["events"].append(copy.deepcopy(body))
        return Response(status_code=204)

    async def feed_endpoint(self, request: Request) -> Response:
        body = request.state.body
        if not isinstance(body, dict) or not isinstance(body.get("value"), list):
            return _error(400, "Value cannot be null. Parameter name: lines", "ArgumentNullException")
        with self.lock:
            self._plan(request)["feed"].extend(str(line) for line in body["value"])
        return Response(status_code=204)

    async def plan_log_create(self, request: Request) -> Response:
        body = request.state.body
        with self.lock:
            logs = self._plan(request)["logs"]
            log_id = len(logs) + 1
            logs[log_id] = ""
        path = body.get("path") if isinstance(body, dict) else None
        return _json({"id": log_id, "path": path, "lineCount": 0, "createdOn": _now()})

    async def plan_log_append(self, request: Request) -> Response:
        body = request.state.body
        with self.lock:
            logs = self._plan(request)["logs"]
            log_id = int(request.path_params["log_id"])
            if log_id not in logs:
                return _error(404, f"Log {log_id} not found", "TaskLogNotFoundException")
            logs[log_id] += body if isinstance(body, str) else json.dumps(body)
            count = logs[log_id].count("\n")
        return _json({"id": log_id, "lineCount": count})

    async def plan_records(self, request: Request) -> Response:
        body = request.state.body
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, list):
            return _error(400, "Value cannot be null. Parameter name: records", "ArgumentNullException")
        for record in value:
            variables = record.get("variables") if isinstance(record, dict) else None
            if not isinstance(record, dict) or not record.get("id") or not (variables is None or isinstance(
                    variables, dict) and all(isinstance(v, dict) for v in variables.values())):
                return _error(400, "Invalid timeline record: an id, and variables as {name: {value}}",
                              "ArgumentException")
        with self.lock:
            self._plan(request)["records"].extend(copy.deepcopy(value))
        return _json({"count": len(value), "value": value})

    def _project(self, org: str, ident: str) -> dict[str, str] | None:
        for p in self._projects.get(org.lower(), []):
            if ident.lower() in (p["id"].lower(), p["name"].lower()):
                return p
        return None

    def _no_project(self, ident: str) -> JSONResponse:
        return _error(404, f"TF200016: The following project does not exist: {ident}. Verify that the name of the "
                      "project is correct and that the project exists on the specified Azure DevOps Server.",
                      "ProjectDoesNotExistWithNameException")

    def _build_of(self, request: Request) -> tuple[tuple[str, int] | None, Response | None]:
        org, ident = request.path_params["org"], request.path_params["project"]
        build_id = int(request.path_params["build_id"])
        project = self._project(org, ident)
        if project is None:
            return None, self._no_project(ident)
        build = self._builds.get((org.lower(), build_id))
        if build is None or build["project"]["id"] != project["id"]:
            return None, _error(404, f"The requested build {build_id} could not be found.", "BuildNotFoundException")
        return (org.lower(), build_id), None

    # -- builds ----------------------------------------------------------------------------------------------------

    async def get_build(self, request: Request) -> Response:
        with self.lock:
            key, err = self._build_of(request)
            if err:
                return err
            assert key is not None
            build = copy.deepcopy(self._builds[key])
            build["tags"] = list(self._tags[key])
        return _json(build)

    async def list_builds(self, request: Request) -> Response:
        q = request.query_params
        org, ident = request.path_params["org"], request.path_params["project"]
        with self.lock:
            project = self._project(org, ident)
            if project is None:
                return self._no_project(ident)
            builds = [copy.deepcopy(b) for (o, _), b in self._builds.items()
                      if o == org.lower() and b["project"]["id"] == project["id"]]
        order = q.get("queryOrder", "queueTimeDescending")
        field = "finishTime" if order.startswith("finishTime") else "queueTime"
        if q.get("statusFilter") and q["statusFilter"] != "all":
            builds = [b for b in builds if b.get("status") == q["statusFilter"]]
        if q.get("resultFilter"):
            builds = [b for b in builds if b.get("result") == q["resultFilter"]]
        if q.get("definitions"):
            wanted = {int(d) for d in q["definitions"].split(",") if d.strip()}
            builds = [b for b in builds if int(b["definition"]["id"]) in wanted]
        if q.get("minTime"):
            floor = _ts(q["minTime"])
            builds = [b for b in builds if b.get(field) and _ts(b[field]) >= floor]
        builds.sort(key=lambda b: (_ts(b.get(field) or "1970-01-01T00:00:00Z"), b["id"]),
                    reverse=order.endswith("Descending"))
        start = int(q.get("continuationToken") or 0)
        top = int(q.get("$top") or 1000)
        if self.page_size:
            top = min(top, self.page_size)
        page = builds[start:start + top]
        headers = {"x-ms-continuationtoken": str(start + top)} if start + top < len(builds) else None
        return _json({"count": len(page), "value": page}, headers=headers)

    async def get_definition(self, request: Request) -> Response:
        org, ident = request.path_params["org"], request.path_params["project"]
        with self.lock:
            project = self._project(org, ident)
            if project is None:
                return self._no_project(ident)
            definition = self._definitions.get((org.lower(), project["id"], int(request.path_params["definition_id"])))
        if definition is None:
            return _error(404, f"The definition with ID {request.path_params['definition_id']} does not exist.",
                          "DefinitionNotFoundException")
        return _json(definition)

    async def get_project(self, request: Request) -> Response:
        with self.lock:
            project = self._project(request.path_params["org"], request.path_params["project"])
        if project is None:
            return self._no_project(request.path_params["project"])
        return _json({**project, "state": "wellFormed", "visibility": "private"})

    # -- tags ------------------------------------------------------------------------------------------------------

    async def tags_collection(self, request: Request) -> Response:
        body = request.state.body
        with self.lock:
            key, err = self._build_of(request)
            if err:
                return err
            assert key is not None
            tags = self._tags[key]
            if request.method == "POST":
                if not isinstance(body, list) or not all(isinstance(t, str) for t in body):
                    return _error(400, "Value cannot be null or empty. Parameter name: tags", "ArgumentException")
                _add_tags(tags, body)
            elif request.method == "PATCH":
                if not isinstance(body, dict):
                    return _error(400, "Value cannot be null. Parameter name: updateParameters",
                                  "ArgumentNullException")
                _add_tags(tags, body.get("tagsToAdd") or [])
                remove = {t.lower() for t in body.get("tagsToRemove") or []}
                tags[:] = [t for t in tags if t.lower() not in remove]
            return _json(sorted(tags, key=str.lower))

    async def tag_item(self, request: Request) -> Response:
        with self.lock:
            key, err = self._build_of(request)
            if err:
                return err
            assert key is not None
            tags = self._tags[key]
            tag = request.path_params["tag"]
            if request.method == "PUT":
                _add_tags(tags, [tag])
            else:
                tags[:] = [t for t in tags if t.lower() != tag.lower()]
            return _json(sorted(tags, key=str.lower))

    # -- properties ------------------------------------------------------------------------------------------------

    async def build_properties(self, request: Request) -> Response:
        if request.method == "PATCH":
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip()
            if ctype != "application/json-patch+json":
                return _error(415, f'The request indicated a Content-Type of "{ctype}" for method type "PATCH" which '
                              "is not supported. Valid content types for this method are: application/json-patch+json.",
                              "VssRequestContentTypeNotSupportedException")
        body = request.state.body
        with self.lock:
            key, err = self._build_of(request)
            if err:
                return err
            assert key is not None
            props = self._props[key]
            if request.method == "PATCH":
                if not isinstance(body, list):
                    return _error(400, "The patch document must be an array of operations.", "VssPropertyValidation")
                staged = dict(props)
                for op in body:
                    if not isinstance(op, dict) or not str(op.get("path", "")).startswith("/"):
                        return _error(400, "Invalid patch operation.", "VssPropertyValidation")
                    name = str(op["path"])[1:]
                    kind = op.get("op")
                    if kind in ("add", "replace"):
                        staged[name] = op.get("value")
                    elif kind == "remove":
                        staged.pop(name, None)
                    elif kind == "test":
                        if staged.get(name) != op.get("value"):
                            return _error(409, f"Test operation failed for {name}.", "TestOperationFailed")
                    else:
                        return _error(400, f"Unsupported patch operation {kind!r}.", "VssPropertyValidation")
                props.clear()
                props.update(staged)
            wanted = request.query_params.get("filter")
            names = [n for n in props if not wanted or n in wanted.split(",")]
            value = {n: {"$type": "System.String", "$value": props[n]} for n in names}
        return _json({"count": len(value), "value": value})

    # -- commit statuses -------------------------------------------------------------------------------------------

    async def commit_statuses(self, request: Request) -> Response:
        repo, commit = request.path_params["repo"].lower(), request.path_params["commit"].lower()
        with self.lock:
            if self._project(request.path_params["org"], request.path_params["project"]) is None:
                return self._no_project(request.path_params["project"])
            if repo not in self._repos:
                return _error(404, f"TF401019: The Git repository with name or identifier {repo} does not exist or "
                              "you do not have permissions for the operation you are attempting.",
                              "GitRepositoryNotFoundException")
            history = self._statuses.setdefault((repo, commit), [])
            if request.method == "GET":
                newest = list(reversed(history))
                if request.query_params.get("latestOnly", "false").lower() == "true":
                    seen: set[tuple[str, str | None]] = set()
                    latest = []
                    for s in newest:
                        k = (s["context"]["name"], s["context"].get("genre"))
                        if k not in seen:
                            seen.add(k)
                            latest.append(s)
                    newest = latest
                return _json({"count": len(newest), "value": copy.deepcopy(newest)})
            body = request.state.body
            if not isinstance(body, dict) or not isinstance(body.get("context"), dict) \
                    or not body["context"].get("name"):
                return _error(400, "The status context name must be specified.", "InvalidArgumentValueException")
            if body.get("state") not in STATES:
                return _error(400, f"Invalid state {body.get('state')!r}.", "InvalidArgumentValueException")
            status = {
                "id": self._next_status_id,
                "state": body["state"],
                "description": body.get("description", ""),
                "context": {k: v for k, v in body["context"].items() if k in ("name", "genre")},
                "creationDate": _now(),
                "updatedDate": _now(),
                "createdBy": {"id": "00000000-0000-0000-0000-0000000000b0", "displayName": "gitops-bridge"},
                "targetUrl": body.get("targetUrl"),
            }
            self._next_status_id += 1
            history.append(status)
            return _json(copy.deepcopy(status), status=201)

    # -- service hooks ---------------------------------------------------------------------------------------------

    def _public(self, sub: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(sub)
        for name in CONFIDENTIAL:
            if out.get("consumerInputs", {}).get(name):
                out["consumerInputs"][name] = MASK
        return out

    def _validate(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Subscription body is required."
        for name in ("publisherId", "eventType", "consumerId", "consumerActionId"):
            if not body.get(name):
                return f"Subscription field '{name}' is required."
        inputs = body.get("consumerInputs") or {}
        url = inputs.get("url")
        if not url:
            return "The input 'url' is required."
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"The url '{url}' is not a valid absolute URL."
        if parts.hostname in ("localhost", "127.0.0.1", "::1") or parts.hostname.startswith("127."):
            return "The url cannot target localhost or a special-purpose address."
        if (inputs.get("basicAuthUsername") or inputs.get("basicAuthPassword")) and parts.scheme != "https":
            return "You must use HTTPS for basic authentication on a webhook."
        return None

    async def hook_subscriptions(self, request: Request) -> Response:
        org = request.path_params["org"].lower()
        if request.method == "GET":
            q = request.query_params
            with self.lock:
                subs = [self._public(s) for i, s in self._subs.items() if self._sub_org[i] == org
                        and all(not q.get(f) or s.get(f) == q[f]
                                for f in ("publisherId", "eventType", "consumerId", "consumerActionId"))]
            return _json({"count": len(subs), "value": subs})
        body = request.state.body
        problem = self._validate(body)
        if problem:
            return _error(400, problem, "SubscriptionInputException")
        sub_id = str(uuid.uuid4())
        now = _now()
        sub = {
            **{k: body[k] for k in ("publisherId", "eventType", "consumerId", "consumerActionId")},
            "id": sub_id,
            "url": f"{self.url}/{org}/_apis/hooks/subscriptions/{sub_id}",
            "resourceVersion": body.get("resourceVersion") or "latest",
            "publisherInputs": {**(body.get("publisherInputs") or {}),
                                "hostId": str(uuid.uuid5(uuid.NAMESPACE_URL, org)),
                                "tfsSubscriptionId": str(uuid.uuid4())},
            "consumerInputs": dict(body.get("consumerInputs") or {}),
            "status": "enabled",
            "probationRetries": 0,
            "createdDate": now,
            "modifiedDate": now,
            "createdBy": {"id": "00000000-0000-0000-0000-000000000001"},
            "modifiedBy": {"id": "00000000-0000-0000-0000-000000000001"},
        }
        with self.lock:
            self._subs[sub_id] = sub
            self._sub_org[sub_id] = org
            return _json(self._public(sub))

    async def subscription_item(self, request: Request) -> Response:
        org, sub_id = request.path_params["org"].lower(), request.path_params["sub_id"]
        with self.lock:
            sub = self._subs.get(sub_id) if self._sub_org.get(sub_id) == org else None
            if sub is None:
                return _error(404, f"Subscription {sub_id} not found.", "SubscriptionNotFoundException")
            if request.method == "GET":
                return _json(self._public(sub))
            if request.method == "DELETE":
                del self._subs[sub_id]
                del self._sub_org[sub_id]
                return Response(status_code=204)
        body = request.state.body
        problem = self._validate(body)
        if problem:
            return _error(400, problem, "SubscriptionInputException")
        with self.lock:
            inputs = dict(body.get("consumerInputs") or {})
            for name in CONFIDENTIAL:  # a masked value sent back keeps the stored secret
                if inputs.get(name) == MASK:
                    inputs[name] = sub["consumerInputs"].get(name, "")
            sub.update({k: body[k] for k in ("publisherId", "eventType", "consumerId", "consumerActionId")})
            sub["resourceVersion"] = body.get("resourceVersion") or sub["resourceVersion"]
            sub["publisherInputs"] = {**(body.get("publisherInputs") or {}),
                                      "hostId": sub["publisherInputs"]["hostId"],
                                      "tfsSubscriptionId": sub["publisherInputs"]["tfsSubscriptionId"]}
            sub["consumerInputs"] = inputs
            if sub["status"] != "disabledBySystem":  # the quirk: replacing does not revive it
                sub["status"] = body.get("status") or "enabled"
                if sub["status"] == "enabled":
                    sub["probationRetries"] = 0
            sub["modifiedDate"] = _now()
            return _json(self._public(sub))

    async def subscriptions_query(self, request: Request) -> Response:
        org = request.path_params["org"].lower()
        query = request.state.body if isinstance(request.state.body, dict) else {}
        with self.lock:
            subs = [s for i, s in self._subs.items() if self._sub_org[i] == org]
        for f in ("publisherId", "eventType", "consumerId", "consumerActionId"):
            if query.get(f):
                subs = [s for s in subs if s.get(f) == query[f]]
        for group, field in (("publisherInputFilters", "publisherInputs"), ("consumerInputFilters", "consumerInputs")):
            for flt in query.get(group) or []:
                for cond in flt.get("conditions") or []:
                    subs = [s for s in subs if s.get(field, {}).get(cond.get("inputId")) == cond.get("inputValue")]
        return _json({**query, "results": [self._public(s) for s in subs]})


def _add_tags(tags: list[str], new: list[str]) -> None:
    have = {t.lower() for t in tags}
    for tag in new:
        if tag and tag.lower() not in have:
            tags.append(tag)
            have.add(tag.lower())


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()  # 3.11 reads ADO's 7 fractional digits and the Z
