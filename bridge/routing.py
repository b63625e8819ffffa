"""The routing file: which builds deploy where. A validated model plus pure matching.

Errors name the file, the route and the field, e.g.
`bridge.yaml: routes[0] (api-service): environments[1].file: must be a relative path inside the repository`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as model

from bridge.errors import ConfigError
from bridge.events import BuildEvent
from bridge.keypath import parse_key
from bridge.tags import template_problem

RESULTS = ("succeeded", "partiallySucceeded", "failed", "canceled")
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


# The model is validated by pydantic into frozen dataclasses with slots: an environment takes ~200 bytes instead of
# ~1.3 KB as a BaseModel (its __dict__ and fields-set), which is what keeps a 2,000-route file small in the web
# process (bench/config.py).
_STRICT = ConfigDict(extra="forbid")


def _check_globs(globs: list[str]) -> list[str]:
    for g in globs:
        if not g or g != g.strip():
            raise ValueError(f"empty or padded glob {g!r}")
        if g.count("[") != g.count("]"):
            raise ValueError(f"unbalanced brackets in glob {g!r}")
        try:
            re.compile(fnmatch.translate(g))
        except re.error as exc:
            raise ValueError(f"bad glob {g!r}: {exc}") from None
    return globs


def _check_name(v: str) -> str:
    if not NAME.match(v):
        raise ValueError("must be lower-case letters, digits and '-'")
    return v


@model(frozen=True, slots=True, kw_only=True, config=_STRICT)
class Repository:
    url: str
    branch: str = "main"
    github: str | None = Field(default=None, description="owner/name; enables pull requests")

    @field_validator("github")
    @classmethod
    def _owner_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", v):
            raise ValueError("must be 'owner/name'")
        return v


Result = Literal["succeeded", "partiallySucceeded", "failed", "canceled"]


def _default_results() -> list[Result]:
    return ["succeeded"]


@model(frozen=True, slots=True, kw_only=True, config=_STRICT)
class Match:
    project: str
    definition: str
    organization: str | None = Field(
        default=None, description="name of a configured Azure DevOps organization; unset: any configured one"
    )
    branches: list[str] = Field(default_factory=lambda: ["*"])
    results: list[Result] = Field(default_factory=_default_results)

    _globs = field_validator("branches")(_check_globs)


APP_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
DISCOVERY_SECONDS = 60.0


@model(frozen=True, slots=True, kw_only=True, config=_STRICT)
class ArgoApp:
    """The Argo CD applications of an environment: one `app`, a list `apps`, a label `selector`, or a mix."""

    app: str | None = Field(default=None, description="the only application (the one-element case of `apps`)")
    apps: list[str] = Field(default_factory=list, description="applications by name, all of which must deploy")
    selector: str | None = Field(default=None, description="label selector (Argo CD list endpoint), e.g. 'env=dev'")
    project: str = "default"
    namespace: str | None = Field(default=None, description="appNamespace, for apps outside argocd's namespace")
    source_index: int | None = Field(default=None, ge=0, description="multi-source apps: the source with the file")
    min_apps: int = Field(default=1, ge=1, description="fewer applications when discovery ends: failed")
    discovery_seconds: float | None = Field(
        default=None, ge=0, description="how long after the push new or missing applications may still appear "
        "(default 60 with `apps` or `selector`, 0 for the single `app`)")
    suspended: Literal["wait", "succeed", "fail"] = Field(
        default="wait", description="what health Suspended (a paused Argo Rollout) means after our sync")
    instance: str | None = Field(default=None, description="which Argo CD instance (settings argocd.instances); "
                                 "unset: the only one")
    sync_window: Literal["wait", "fail"] = Field(
        default="wait", description="a sync window blocks the sync: keep waiting (within the deadline), or fail")

    @field_validator("apps")
    @classmethod
    def _app_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not APP_NAME.match(name):
                raise ValueError(f"{name!r} is not an application name")
        if len(set(v)) != len(v):
            raise ValueError("duplicate application")
        return v

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or any(not part.strip() for part in re.split(r",(?![^(]*\))", v))):
            raise ValueError("must be a non-empty label selector such as 'app.kubernetes.io/name=api,env=dev'")
        return v

    @model_validator(mode="after")
    def _something(self) -> ArgoApp:
        if self.app is None and not self.apps and self.selector is None:
            raise ValueError("name the application: `app`, `apps` or `selector`")
        return self

    @property
    def names(self) -> list[str]:
        """The applications named explicitly (`app` first, then `apps`)."""
        return ([self.app] if self.app else []) + [a for a in self.apps if a != self.app]

    @property
    def is_estate(self) -> bool:
        """More than the single-application form: judged per application and combined."""
        return self.selector is not None or len(self.names) > 1 or bool(self.apps)

    @property
    def window(self) -> float:
        if self.discovery_seconds is not None:
            return self.discovery_seconds
        return DISCOVERY_SECONDS if self.is_estate else 0.0

    def describe(self) -> str:
        """`project/app`, or the list and selector, for humans."""
        parts = list(self.names) + ([f"selector {self.selector}"] if self.selector else [])
        return f"{self.project}/" + ", ".join(parts)


@model(frozen=True, slots=True, kw_only=True, config=_STRICT)
class Environment:
    name: str
    repository: str
    file: str
    keys: list[str] = Field(default_factory=lambda: ["image.tag"], min_length=1)
    argocd: ArgoApp | None = None
    promotion: Literal["push", "pull-request"] = "push"
    branches: list[str] | None = None
    after: str | None = None
    # "gate": started only by its pipeline-gate call (bridge.gate), never by the build's event or `after:`; its
    # `after:` is then a precondition. "event": started by the build's event, or by `after:` (default).
    trigger: Literal["event", "gate"] = "event"
    create_missing_keys: bool = False
    deadline_seconds: float | None = Field(default=None, gt=0)
    degraded_grace_seconds: float | None = Field(default=None, ge=0)
    on_failure: Literal["none", "rollback"] = Field(
        default="none", description="'rollback': after a failed deployment, roll back to the last succeeded build"
    )
    rollback_on_timeout: bool = Field(default=False, description="on_failure also after timed-out")
    on_manual_change: Literal["hold", "follow"] = Field(
        default="hold", description="a person's value in Git: hold the environment, or write over it"
    )

    _name = field_validator("name")(_check_name)

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        # What str(PurePosixPath(v)) gives, without pathlib: it interns every part of every path for good.
        parts = [part for part in v.split("/") if part and part != "."]
        if not v or v.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", v):
            raise ValueError("must be a relative path inside the repository")
        if ".." in parts:
            raise ValueError("must not escape the repository ('..')")
        if not v.endswith((".yaml", ".yml")):
            raise ValueError("must be a .yaml or .yml file")
        path = "/".join(parts)
        return v if path == v else path

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for key in v:
            try:
                parse_key(key)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        if len(set(v)) != len(v):
            raise ValueError("duplicate key")
        return v

    _globs = field_validator("branches")(lambda v: v if v is None else _check_globs(v))


@model(frozen=True, slots=True, kw_only=True, config=_STRICT)
class Route:
    name: str
    match: Match
    tag: str = "{build.id}"
    ordering: Literal["build-id", "finish-time", "none"] = Field(
        default="build-id", description="how 'older build' is decided; 'none' lets any build win"
    )
    environments: list[Environment] = Field(min_length=1)

    _name = field_validator("name")(_check_name)

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        problem = template_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _envs(self) -> Route:
        names = [e.name for e in self.environments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"environments: duplicate name(s) {', '.join(dupes)}")
        for i, env in enumerate(self.environments):
            if env.after is not None and env.after not in names:
                raise ValueError(f"environments[{i}].after: unknown environment {env.after!r}")
            if env.after == env.name:
                raise ValueError(f"environments[{i}].after: cannot follow itself")
        return self

    def environment(self, name: str) -> Environment:
        for env in self.environments:
            if env.name == name:
                return env
        raise KeyError(name)

    def ungated(self) -> list[Environment]:
        """The environments a build's event starts, directly or through `after:` (what `gitops-bridge wait` waits
        for): not gated, and not following a gated one."""
        found: list[Environment] = []
        for env in self.environments:
            chain, seen = env, set()
            while chain.trigger != "gate" and chain.after is not None and chain.name not in seen:
                seen.add(chain.name)
                chain = self.environment(chain.after)
            if chain.trigger != "gate":
                found.append(env)
        return found

    def previous(self, name: str) -> Environment | None:
        """The environment a build must have succeeded in before `name`: its `after:`, else the one listed before."""
        env = self.environment(name)
        if env.after is not None:
            return self.environment(env.after)
        index = self.environments.index(env)
        return self.environments[index - 1] if index > 0 else None


@model(frozen=True, slots=True, kw_only=True, config=_STRICT)
class RoutingConfig:
    repositories: dict[str, Repository]
    routes: list[Route]

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)


@dataclass(frozen=True)
class Target:
    """One deployment target: an environment of a route."""

    route: Route
    environment: Environment

    @property
    def key(self) -> tuple[str, str]:
        return (self.route.name, self.environment.name)


def _cross_checks(cfg: RoutingConfig) -> list[tuple[int, str, str]]:
    problems: list[tuple[int, str, str]] = []
    seen_names: dict[str, int] = {}
    targets: dict[tuple[str, str, str], str] = {}
    for ri, route in enumerate(cfg.routes):
        if route.name in seen_names:
            problems.append((ri, "name", f"duplicate route name (also routes[{seen_names[route.name]}])"))
        seen_names.setdefault(route.name, ri)
        for ei, env in enumerate(route.environments):
            if env.repository not in cfg.repositories:
                known = ", ".join(sorted(cfg.repositories)) or "none"
                problems.append((ri, f"environments[{ei}].repository", f"unknown repository {env.repository!r} "
                                 f"(known: {known})"))
                continue
            repo = cfg.repositories[env.repository]
            if env.promotion == "pull-request" and not repo.github:
                problems.append((ri, f"environments[{ei}].promotion",
                                 f"pull-request needs repositories.{env.repository}.github"))
            for key in env.keys:
                t = (env.repository, env.file, key)
                here = f"{route.name}/{env.name}"
                if t in targets:
                    problems.append((ri, f"environments[{ei}].keys", f"duplicate target {env.file}:{key} "
                                     f"(also {targets[t]})"))
                targets.setdefault(t, here)
    return problems


def _route_label(raw: Any, index: int) -> str:
    try:
        name = raw["routes"][index]["name"]
        return f"routes[{index}] ({name})"
    except (KeyError, IndexError, TypeError):
        return f"routes[{index}]"


def _loc(raw: Any, loc: tuple[int | str, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
        head = _route_label(raw, loc[1])
        rest = loc[2:]
    else:
        head, rest = "", loc
    field = ""
    for part in rest:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return f"{head}: {field}" if head and field else (head or field or "(top level)")


# pydantic's dataclass wording, said as for any other mapping of the file
_MESSAGES = {
    "unexpected_keyword_argument": "unknown key",
    "extra_forbidden": "unknown key",
    "missing_keyword_argument": "Field required",
    "dataclass_type": "Input should be a valid dictionary or instance of {class_name}",
}


@cache
def _validator() -> TypeAdapter[RoutingConfig]:
    return TypeAdapter(RoutingConfig)


def parse_routing(raw: Any, source: str = "bridge.yaml") -> RoutingConfig:
    """Validate an already-loaded YAML document; ConfigError lists every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping with 'repositories' and 'routes'")
    try:
        cfg = _validator().validate_python(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            wording = _MESSAGES.get(err["type"], "").format(**err.get("ctx", {}))
            msg = wording or err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {_loc(raw, loc)}: {msg}")
        raise ConfigError(problems) from None
    cross = _cross_checks(cfg)
    if cross:
        raise ConfigError([f"{source}: {_route_label(raw, ri)}: {field}: {msg}" for ri, field, msg in cross])
    return cfg


def load_routing(path: Path) -> RoutingConfig:
    from bridge.yamlload import YAMLError, safe_load

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read routing file: {exc.strerror or exc}") from None
    try:
        raw = safe_load(text)
    except YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    return parse_routing(raw, str(path))


def _yaml_error(path: Path, exc: Exception) -> str:
    """`file:line:column: invalid YAML: problem (context at line:column)`, as compilers and editors expect."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or not problem:
        return f"{path}: invalid YAML: {exc}"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None:
        return f"{where}: invalid YAML: {problem} ({context} at {start.line + 1}:{start.column + 1})"
    return f"{where}: invalid YAML: {problem}"


_ID_SHAPED = re.compile(r"[0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _id_or_name(want: str, ident: str | int | None, name: str | None) -> bool:
    """`want` names the id or the name. An unknown name (None: run-state events carry only the project id) cannot
    rule out a name-shaped `want`, so that matches for now; the worker routes again after looking the build up."""
    w = want.lower()
    if ident is not None and w == str(ident).lower():
        return True
    if name is not None:
        return w == name.lower()
    return ident is None or not _ID_SHAPED.fullmatch(want)


def branch_matches(globs: list[str], branch: str) -> bool:
    return any(fnmatch.fnmatchcase(branch, g) for g in globs)


def match_build(
    cfg: RoutingConfig,
    *,
    project_id: str | None,
    project_name: str | None,
    definition_id: int | None,
    definition_name: str | None,
    branch: str | None,
    result: str,
    organization: str | None = None,
) -> list[Target]:
    """Every (route, environment) this build deploys to. `branch=None` (not known yet) skips branch checks, and an
    unknown project or definition name (None) only rules out routes that name a different id.

    Environments with `after:` are not started by the build itself; they follow a successful predecessor.
    Environments with `trigger: gate` start only on their pipeline-gate call.
    A route that names an organization takes only that organization's builds (`organization=None`: a job queued
    before organizations were configuration, not checked).
    """
    targets: list[Target] = []
    for route in cfg.routes:
        m = route.match
        if m.organization is not None and organization is not None and m.organization.lower() != organization:
            continue
        if not _id_or_name(m.project, project_id, project_name):
            continue
        if not _id_or_name(m.definition, definition_id, definition_name):
            continue
        if result not in m.results:
            continue
        if branch is not None and not branch_matches(m.branches, branch):
            continue
        for env in route.environments:
            if env.after is not None or env.trigger == "gate":
                continue
            if branch is not None and env.branches is not None and not branch_matches(env.branches, branch):
                continue
            targets.append(Target(route, env))
    return targets


def route_problem(route: Route, env: Environment, *, organization: str | None, project_id: str | None,
                  project_name: str | None, definition_id: int | None, definition_name: str | None,
                  branch: str | None) -> str | None:
    """Why this build may not deploy through `route` to `env` (None: it may). A pipeline gate's authorisation: the
    project, definition, organization and branches count; `results` do not (the run is still in progress)."""
    m = route.match
    if m.organization is not None and organization is not None and m.organization.lower() != organization:
        return f"route {route.name!r} takes builds of organization {m.organization!r} only"
    if project_id is None and project_name is None or not _id_or_name(m.project, project_id, project_name):
        return f"the build's project is not {m.project!r} (route {route.name!r})"
    if definition_id is None and definition_name is None or not _id_or_name(m.definition, definition_id,
                                                                            definition_name):
        return f"the build's pipeline is not {m.definition!r} (route {route.name!r})"
    if branch is None or not branch_matches(m.branches, branch):
        return f"branch {branch} is not one route {route.name!r} deploys ({', '.join(m.branches)})"
    if env.branches is not None and not branch_matches(env.branches, branch):
        return f"branch {branch} is not one {env.name} accepts ({', '.join(env.branches)})"
    return None


def match_event(cfg: RoutingConfig, event: BuildEvent) -> list[Target]:
    """`match_build` for a normalised event (webhook, worker and reconciler route the same way)."""
    return match_build(
        cfg,
        project_id=event.project_id,
        project_name=event.project_name,
        definition_id=event.definition_id,
        definition_name=event.definition_name,
        branch=event.source_branch,
        result=event.result,
        organization=event.organization,
    )
