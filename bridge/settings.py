"""The one settings class. Built once at start-up (`load_settings`) and passed down; nothing else reads the environment.

Every field comes from `BRIDGE_<NAME>` (nested groups with `__`, e.g. `BRIDGE_ARGOCD__TOKEN`) or from a file of the
same name (lower case, e.g. `argocd__token`) in the secrets directory (`BRIDGE_SECRETS_DIR`, default
`/var/run/secrets/gitops-bridge`), which is how a Kubernetes Secret is mounted.
Lists accept JSON or comma-separated text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SECRETS_DIR = Path("/var/run/secrets/gitops-bridge")

SecretList = Annotated[list[SecretStr], NoDecode]
StrList = Annotated[list[str], NoDecode]


def _split_list(value: Any) -> Any:
    """Accept a JSON list or comma/newline separated text for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    return value


def _xdg_data_home() -> Path:
    """$XDG_DATA_HOME, else ~/.local/share (the XDG base directory default)."""
    value = os.environ.get("XDG_DATA_HOME", "")
    return Path(value) if Path(value).is_absolute() else Path.home() / ".local" / "share"


class _Group(BaseModel):
    model_config = {"extra": "forbid"}


class WebhookSettings(_Group):
    header_name: str = "X-Bridge-Token"
    tokens: SecretList = Field(default_factory=list, description="Accepted values of the secret header (rotation).")
    basic: SecretList = Field(default_factory=list, description="Accepted `user:password` pairs for HTTP Basic.")
    max_body_bytes: int = Field(default=2 * 1024 * 1024, gt=0, description="Largest body any endpoint reads.")
    max_json_depth: int = Field(default=64, ge=2, le=1000, description="Deepest JSON nesting any endpoint accepts.")
    body_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time a client has to send the whole body, on every endpoint (then 408)."
    )
    allow_unauthenticated: bool = Field(
        default=False, description="Accept webhooks without credentials; the app refuses to start otherwise."
    )

    _split = field_validator("tokens", "basic", mode="before")(_split_list)


UNNAMED = "unnamed-token"


def named_token(entry: SecretStr) -> tuple[str, SecretStr]:
    """`name:token` → (name, token); a bare token is `unnamed-token` (so holds still say something honest)."""
    value = entry.get_secret_value()
    name, sep, token = value.partition(":")
    return (name, SecretStr(token)) if sep else (UNNAMED, entry)


class ApiSettings(_Group):
    read_tokens: SecretList = Field(
        default_factory=list, description="Bearer tokens that may read /api/*: `name:token` pairs (or bare tokens)."
    )
    write_tokens: SecretList = Field(
        default_factory=list,
        description="Bearer tokens that may hold/release/promote: `name:token` pairs; the name is recorded as `by`.",
    )

    _split = field_validator("read_tokens", "write_tokens", mode="before")(_split_list)

    @field_validator("read_tokens", "write_tokens")
    @classmethod
    def _names(cls, v: list[SecretStr]) -> list[SecretStr]:
        for entry in v:
            name, token = named_token(entry)
            if not name.strip() or not token.get_secret_value():
                raise ValueError("each entry is `name:token` (or a bare token); a name or token is empty")
        return v

    def named(self, *, write: bool) -> list[tuple[str, SecretStr]]:
        """(name, token) of the tokens that may write, or of all that may read (write tokens read too)."""
        return [named_token(t) for t in (self.write_tokens if write else [*self.read_tokens, *self.write_tokens])]


class GitSettings(_Group):
    work_dir: Path = Path("var/repos")
    token: SecretStr | None = None
    username: str = "x-access-token"
    ssh_key_file: Path | None = None
    ssh_known_hosts_file: Path | None = None
    author_name: str = "gitops-bridge"
    author_email: str = "gitops-bridge@localhost"
    committer_name: str | None = None
    committer_email: str | None = None
    commit_template: str = "ci: update {app} image tag to {tag} ({env})"
    lock_lease_seconds: float = 15.0
    lock_wait_seconds: float = 120.0
    push_attempts: int = 6
    timeout_seconds: float = 120.0


class GitHubSettings(_Group):
    token: SecretStr | None = None
    api_url: str = "https://api.github.com"
    labels: StrList = Field(default_factory=lambda: ["gitops-bridge"])
    pr_poll_seconds: float = 60.0
    pr_max_age_seconds: float = 7 * 24 * 3600.0
    webhook_secret: SecretStr | None = None
    timeout_seconds: float = 15.0

    _split = field_validator("labels", mode="before")(_split_list)


DEFAULT_ARGOCD = "default"


class ArgoCDInstanceSettings(_Group):
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="What environments call it.")
    url: str = Field(description="e.g. https://argocd.eu.example.com")
    verify_tls: bool | None = Field(default=None, description="unset: argocd.verify_tls")


class ArgoCDSettings(_Group):
    url: str | None = None
    token: SecretStr | None = None
    instances: list[ArgoCDInstanceSettings] = Field(
        default_factory=list, description="Several Argo CD instances (JSON list of name, url); the routing file's "
        "`argocd.instance` picks one. `url`/`token`, when set, are the instance named `default`.")
    tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description="One token per instance name (BRIDGE_ARGOCD__TOKENS__<NAME>).")
    verify_tls: bool = True
    poll_seconds: float = 5.0
    refresh_timeout_seconds: float = 10.0
    request_timeout_seconds: float = 15.0
    deadline_seconds: float = 900.0
    degraded_grace_seconds: float = 60.0
    def instance_urls(self) -> dict[str, str]:
        """Every configured instance by name (`default` for the single `url`)."""
        found = {i.name: i.url for i in self.instances}
        if self.url:
            found.setdefault(DEFAULT_ARGOCD, self.url)
        return found

    def default_instance(self) -> str | None:
        """The instance an environment without `argocd.instance` uses: `url`'s, else the only one, else none."""
        names = list(self.instance_urls())
        return DEFAULT_ARGOCD if self.url else names[0] if len(names) == 1 else None

    webhook_token: SecretStr | None = Field(
        default=None, description="Enables POST /webhooks/argocd (Argo CD notifications): the token, sent as "
        "`Authorization: Bearer`, `X-Gitops-Bridge-Token`, or as the password of Basic credentials.")


class OrganizationSettings(_Group):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", description="Identity of the organization.")
    url: str = Field(description="https://dev.azure.com/<org>/ or an Azure DevOps Server collection URL.")
    id: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$",
                           description="The collection GUID; events must then carry it.")


class AzureDevOpsSettings(_Group):
    organizations: list[OrganizationSettings] = Field(
        default_factory=list, description="The organizations served (JSON list); events from others are ignored."
    )
    tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description="One credential per organization name (BRIDGE_AZURE_DEVOPS__TOKENS__<NAME>)."
    )
    token: SecretStr | None = Field(
        default=None, description="The credential of the only organization (organization_url, or a one-entry list)."
    )
    auth: str = Field(default="pat", pattern="^(pat|bearer)$")
    api_version: str = "7.1"
    timeout_seconds: float = 15.0
    report: bool = True
    report_deadline_seconds: float = Field(
        default=86400.0, description="How long a final report is retried while Azure DevOps fails; then given up."
    )
    reconcile_seconds: float = 300.0
    reconcile_lookback_seconds: float = 6 * 3600.0
    organization_url: str | None = Field(
        default=None, description="e.g. https://dev.azure.com/org/ — the only organization, without `organizations`."
    )


class GateSettings(_Group):
    """The pipeline gate (`POST /webhooks/azure-devops/gate`, `/check`)."""

    margin_seconds: float = Field(default=120.0, ge=0, description="A gated deployment's deadline is the job's "
                                  "timeoutMinutes minus this, so the callback lands before Azure DevOps gives up.")
    poll_seconds: float = Field(default=2.0, gt=0, description="How often a waiting gate looks at its deployment "
                                                               "(progress lines, verdict, deadline).")


class FaultSettings(_Group):
    """Fault injection for the fault-tolerance tests (workers/faults.py). Never set in production."""

    crash_at: StrList = Field(default_factory=list, description="Crash points at which the worker kills itself once.")
    marker_dir: Path | None = None

    _split = field_validator("crash_at", mode="before")(_split_list)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        secrets_prefix="",
        secrets_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
        secrets_dir_missing="ok",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, NestedSecretsSettingsSource(file_secret_settings)

    config: Path = Path("bridge.yaml")
    redis_url: SecretStr | None = None
    redis_sentinels: StrList = Field(default_factory=list, description="host:port of each Sentinel")
    redis_sentinel_master: str = "mymaster"
    redis_min_replicas: int = Field(
        default=0, ge=0, description="Replicas that must hold an enqueued build before the webhook answers 202 "
                                     "(Redis WAIT); 0: the master alone. See docs/operations.md, Durability.")
    redis_replica_wait_ms: int = Field(default=1000, ge=1, description="How long the webhook waits for them.")
    redis_data_dir: Path = Field(
        default_factory=lambda: _xdg_data_home() / "gitops-bridge" / "redis",
        description="The embedded Redis's data (serve without BRIDGE_REDIS_URL): under the user's XDG data dir.",
    )
    queue_name: str = "gitops-bridge:queue"
    key_prefix: str = "gitops-bridge"
    host: str = Field(default="127.0.0.1", description="Where web/serve listen; the image and chart set 0.0.0.0.")
    port: int = 8080
    worker_metrics_port: int = 9090
    worker_max_jobs: int = 10
    job_lease_seconds: float = Field(
        default=15.0, description="How long a running job stays claimed without its worker's heartbeat: a killed "
                                  "worker's jobs move to another worker after at most this long.")
    sweep_seconds: float = Field(default=10.0, description="How often a worker sweeps for deployments whose next step "
                                                           "is missing (0: never).")
    log_level: str = "INFO"
    log_json: bool = False
    retention_days: float = 30.0
    public_url: str | None = None
    allow_insecure_http: bool = Field(
        default=False, description="Allow http:// for credentialed remotes and APIs (tests and the demo only)."
    )

    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    git: GitSettings = Field(default_factory=GitSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    argocd: ArgoCDSettings = Field(default_factory=ArgoCDSettings)
    azure_devops: AzureDevOpsSettings = Field(default_factory=AzureDevOpsSettings)
    faults: FaultSettings = Field(default_factory=FaultSettings)
    gate: GateSettings = Field(default_factory=GateSettings)

    _split_sentinels = field_validator("redis_sentinels", mode="before")(_split_list)

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, v: list[str]) -> list[str]:
        for entry in v:
            host, _, port = entry.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{entry!r} is not host:port")
        return v

    @property
    def has_redis(self) -> bool:
        """A Redis is configured: a URL, or Sentinels."""
        return bool(self.redis_sentinels) or (self.redis_url is not None and bool(self.redis_url.get_secret_value()))

    def secret_values(self) -> list[str]:
        """Every configured secret, for log scrubbing and tests."""
        found: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, SecretStr):
                value = obj.get_secret_value()
                if value:
                    found.append(value)
                    if ":" in value:  # basic pairs: the password alone must not leak either
                        found.append(value.split(":", 1)[1])
            elif isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    walk(getattr(obj, name))
            elif isinstance(obj, list | tuple):
                for item in obj:
                    walk(item)
            elif isinstance(obj, dict):
                for item in obj.values():
                    walk(item)

        walk(self)
        return [s for s in found if len(s) >= 4]


def _known_names(model: type[BaseModel], prefix: str) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        names.add(prefix + name.upper())
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, _Group):
            names |= _known_names(kind, f"{prefix}{name.upper()}__")
    return names


def unknown_variables() -> list[tuple[str, str | None]]:
    """`BRIDGE_*` variables in the environment that name no setting, each with the closest real name (or None).

    Nested groups reject unknown keys themselves; a top-level typo such as `BRIDGE_ARGOCD_URL` (one underscore)
    would otherwise be ignored without a word."""
    import difflib

    known = _known_names(Settings, "BRIDGE_") | {"BRIDGE_SECRETS_DIR"}
    groups = {f"BRIDGE_{name.upper()}__" for name, f in Settings.model_fields.items()
              if isinstance(f.annotation, type) and issubclass(f.annotation, _Group)}  # they reject typos themselves
    found = []
    for name in sorted(os.environ):
        upper = name.upper()
        group = upper.removeprefix("BRIDGE_").partition("__")[0]
        if upper.startswith("BRIDGE_") and upper not in known and f"BRIDGE_{group}__" not in groups:
            close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
            found.append((name, close[0] if close else None))
    return found


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and the secrets directory; keyword arguments win (tests use them)."""
    secrets_dir = Path(os.environ.get("BRIDGE_SECRETS_DIR", str(DEFAULT_SECRETS_DIR)))
    if secrets_dir.is_dir():
        return Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[call-arg]
    return Settings(**overrides)
