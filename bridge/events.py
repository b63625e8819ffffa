"""The Azure DevOps payloads we accept, normalised to one `BuildEvent` (pure).

`parse_event` returns a BuildEvent, or an `Ignored` with the reason, or raises `InvalidEvent` for bodies that are not
service-hook envelopes at all. Real deliveries differ from the published samples (see the reference notes): we accept
`publisherId: azure-devops`, GUID `sourceVersion`s and `azure-devops:///` URIs, and never depend on `X-VSS-*` headers.

`base_url` and `collection_id` are what the payload *claims*: the intake matches them against the configured
organizations (`bridge.organizations.match`) and sets `organization` to the name it matched. Nothing outbound is ever
addressed with a payload field.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

BUILD_COMPLETE = "build.complete"
RUN_STATE_CHANGED = "ms.vss-pipelines.run-state-changed-event"
TEST_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
SHA = re.compile(r"[0-9a-f]{40}")


class InvalidEvent(ValueError):
    """A body that is JSON but not a usable service-hook envelope; the message names the field."""


@dataclass(frozen=True)
class Ignored:
    reason: str
    event_type: str = "unknown"


@dataclass(frozen=True)
class Repo:
    id: str | None
    type: str | None
    name: str | None
    url: str | None


@dataclass(frozen=True)
class BuildEvent:
    event_type: str
    event_id: str | None
    subscription_id: str | None
    notification_id: int | None
    collection_id: str            # organization/collection GUID, or the base URL when the payload has no id (claimed)
    base_url: str | None          # https://dev.azure.com/org/ (ends with '/'), as the payload claims it
    project_id: str | None
    project_name: str | None
    build_id: int
    build_number: str | None
    definition_id: int | None
    definition_name: str | None
    result: str
    source_branch: str | None     # None: not in the payload; the worker looks the build up
    source_version: str | None    # commit SHA (40 hex) or None
    repository: Repo | None
    web_url: str | None
    finish_time: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    # The configured organization's name (or, with none configured, the normalised URL): set by the intake, never
    # read from the payload. None only in jobs queued before organizations were configuration (old build keys).
    organization: str | None = None
    # When the build was queued (`queueTime`; a run's `createdDate`): where DORA's lead time for changes starts.
    queue_time: str | None = None

    @property
    def needs_lookup(self) -> bool:
        return self.source_branch is None or self.source_version is None or self.project_id is None

    @property
    def legacy_organization(self) -> str:
        """The organization part of build keys written before organizations were configuration: the payload's base
        URL without scheme, lower case (so the spelling of the URL changed the key)."""
        if self.base_url:
            return self.base_url.split("://", 1)[-1].rstrip("/").lower()
        return self.collection_id.lower()

    @property
    def project_key(self) -> str:
        return (self.project_id or self.project_name or "-").lower()

    @property
    def build_key(self) -> str:
        """(organization, project, build id): one identity per build, whichever path delivered it."""
        return f"{self.organization or self.legacy_organization}:{self.project_key}:{self.build_id}"

    @property
    def legacy_build_key(self) -> str:
        return f"{self.legacy_organization}:{self.project_key}:{self.build_id}"

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict, equal to `dataclasses.asdict(self)` (built by hand: asdict deep-copies, slowly)."""
        data = dict(self.__dict__)
        data["repository"] = dict(self.repository.__dict__) if self.repository is not None else None  # all str
        data["extra"] = copy.deepcopy(self.extra) if self.extra else {}
        return data

    def with_organization(self, organization: str | None) -> BuildEvent:
        """`dataclasses.replace(self, organization=...)` without running `__init__` again (the intake's hot path)."""
        event = object.__new__(BuildEvent)
        event.__dict__.update(self.__dict__, organization=organization)
        return event

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildEvent:
        data = dict(data)
        repo = data.pop("repository", None)
        return cls(repository=Repo(**repo) if repo else None, **data)


def _get(obj: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(p)
    return obj


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 18:  # "²".isdigit() is True; int() fails
        return int(v)
    return None


def _org_base(url: str | None) -> str | None:
    """`https://dev.azure.com/org/<project>/_apis/...` → `https://dev.azure.com/org/`."""
    if not url:
        return None
    m = re.match(r"^(https?://[^/]+/(?:[^/]+/)?)(?:[^/]+/)?_(?:apis|build)\b", url) or re.match(
        r"^(https?://[^/]+/(?:[^/]+/)?)web/build\.aspx", url
    )
    if m and "dev.azure.com" not in m.group(1) and ".visualstudio.com" in m.group(1):
        return re.match(r"^(https?://[^/]+/)", url).group(1)  # type: ignore[union-attr]
    return m.group(1) if m else None


def _project_from_url(url: str | None) -> str | None:
    if not url:
        return None
    m = re.search(r"/(" + GUID.pattern + r")/_(?:apis|build)\b", url)
    return m.group(1) if m else None


def parse_event(body: Any) -> BuildEvent | Ignored:
    if not isinstance(body, dict):
        raise InvalidEvent("body must be a JSON object (a service-hook event)")
    event_type = body.get("eventType")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("missing field 'eventType'")
    resource = body.get("resource")
    if event_type not in (BUILD_COMPLETE, RUN_STATE_CHANGED):
        return Ignored(f"event type {event_type!r} is not handled", "other")
    if body.get("subscriptionId") == TEST_SUBSCRIPTION:
        return Ignored("test notification", event_type)
    if not isinstance(resource, dict):
        if resource is None:
            return Ignored("no resource details in the event (set resourceDetailsToSend to All)", event_type)
        raise InvalidEvent("field 'resource' must be an object")
    if event_type == BUILD_COMPLETE:
        return _build_complete(body, resource)
    return _run_state_changed(body, resource)


def _envelope(body: dict[str, Any]) -> dict[str, Any]:
    notification = _int(body.get("notificationId"))
    return {
        "event_id": _str(body.get("id")),
        "subscription_id": _str(body.get("subscriptionId")),
        "notification_id": notification,
    }


def _build_complete(body: dict[str, Any], r: dict[str, Any]) -> BuildEvent | Ignored:
    result = _str(r.get("result"))
    if result is None:
        status = _str(r.get("status"))
        return Ignored(f"legacy resourceVersion 1.0 shape (status {status!r}, no result); subscribe with 2.0",
                       BUILD_COMPLETE)
    if _str(r.get("status")) not in (None, "completed"):
        return Ignored(f"build status {_str(r.get('status'))!r} is not completed", BUILD_COMPLETE)
    build_id = _int(r.get("id"))
    if build_id is None or build_id <= 0:
        raise InvalidEvent("field 'resource.id' (build id) must be a positive integer")
    base = _str(_get(body, "resourceContainers", "collection", "baseUrl")) or _str(
        _get(body, "resourceContainers", "account", "baseUrl")
    ) or _org_base(_str(_get(r, "_links", "web", "href")) or _str(r.get("url")))
    collection = _str(_get(body, "resourceContainers", "collection", "id")) or _str(
        _get(body, "resourceContainers", "account", "id")
    ) or base or "default"
    repo_raw = r.get("repository")
    repo = None
    if isinstance(repo_raw, dict):
        repo = Repo(_str(repo_raw.get("id")), _str(repo_raw.get("type")), _str(repo_raw.get("name")),
                    _str(repo_raw.get("url")))
    source_version = _str(r.get("sourceVersion"))
    if source_version is not None and not SHA.fullmatch(source_version.lower()):
        source_version = None  # the published sample carries a GUID here; look the build up instead
    project_id = _str(_get(r, "project", "id")) or _str(_get(body, "resourceContainers", "project", "id"))
    web = _str(_get(r, "_links", "web", "href"))
    if web is None and base and project_id:
        web = f"{base}{project_id}/_build/results?buildId={build_id}"
    return BuildEvent(
        event_type=BUILD_COMPLETE,
        **_envelope(body),
        collection_id=collection,
        base_url=base,
        project_id=project_id,
        project_name=_str(_get(r, "project", "name")),
        build_id=build_id,
        build_number=_str(r.get("buildNumber")),
        definition_id=_int(_get(r, "definition", "id")),
        definition_name=_str(_get(r, "definition", "name")),
        result=result,
        source_branch=_str(r.get("sourceBranch")),
        source_version=source_version.lower() if source_version else None,
        repository=repo,
        web_url=web,
        finish_time=_str(r.get("finishTime")),
        queue_time=_str(r.get("queueTime")),
    )


def _run_state_changed(body: dict[str, Any], r: dict[str, Any]) -> BuildEvent | Ignored:
    run = r.get("run")
    if not isinstance(run, dict):
        raise InvalidEvent("field 'resource.run' must be an object")
    state = _str(run.get("state"))
    if state != "completed":
        return Ignored(f"run state {state!r} is not completed", RUN_STATE_CHANGED)
    result = _str(run.get("result"))
    if result is None:
        raise InvalidEvent("field 'resource.run.result' is missing for a completed run")
    self_url = _str(_get(run, "_links", "self", "href")) or _str(run.get("url"))
    web = _str(_get(run, "_links", "web", "href"))
    build_id = _int(run.get("id"))
    if build_id is None and web:
        m = re.search(r"buildId=([0-9]{1,18})\b", web)
        build_id = int(m.group(1)) if m else None
    if build_id is None and self_url:
        m = re.search(r"/runs/([0-9]{1,18})\b", self_url)
        build_id = int(m.group(1)) if m else None
    if build_id is None or build_id <= 0:
        raise InvalidEvent("cannot find the run id in 'resource.run' (id, _links.web or url)")
    base = _str(_get(body, "resourceContainers", "collection", "baseUrl")) or _org_base(self_url or web)
    collection = _str(_get(body, "resourceContainers", "collection", "id")) or base or "default"
    pipeline = run.get("pipeline") if isinstance(run.get("pipeline"), dict) else r.get("pipeline")
    project_id = _str(_get(body, "resourceContainers", "project", "id")) or _project_from_url(self_url or web)
    return BuildEvent(
        event_type=RUN_STATE_CHANGED,
        **_envelope(body),
        collection_id=collection,
        base_url=base,
        project_id=project_id,
        project_name=None,
        build_id=build_id,
        build_number=_str(run.get("name")),
        definition_id=_int(_get(pipeline, "id")),
        definition_name=_str(_get(pipeline, "name")),
        result=result,
        source_branch=None,
        source_version=None,
        repository=None,
        web_url=web,
        finish_time=_str(run.get("finishedDate")),
        queue_time=_str(run.get("createdDate")),
    )
