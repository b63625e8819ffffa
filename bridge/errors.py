"""The one exception tree of gitops-bridge.

    BridgeError
    ├── ConfigError                 invalid settings or routing file (never retried)
    ├── TransientError              worth retrying with backoff
    │   ├── UpstreamUnavailable     timeouts, connection errors, 5xx, 429 from an external system
    │   ├── PushRejected            the remote branch moved under us (non-fast-forward)
    │   └── LockBusy                another writer holds the repository lock
    └── PermanentError              retrying cannot help; reported back once
        ├── AuthError               401/403, or Azure DevOps' 203 sign-in page
        ├── NotFound                404 from an external system
        ├── InvalidBuild            a tag that is not a valid OCI tag, a build we cannot route
        └── UnsafeWrite             the values edit would change more than the target scalars

`is_transient` is the single place that decides whether an error is retried, and `retry_delay` how long to wait
before the next try. Besides our own TransientErrors, these are transient wherever they come from: Redis connection
errors and timeouts, a Redis that is loading its data (`LOADING`), busy with a script (`BUSY`), a replica that has not
been promoted yet (`READONLY`), a master without its replicas (`NOREPLICAS`, `MASTERDOWN`, and `EXECABORT` for a
transaction they refused), a full Redis (`OOM`), and bare network errors.
"""

from __future__ import annotations

import random

from redis import exceptions as redis_errors

# Redis error replies that mean "not now": a failover or a restart in progress.
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "READONLY", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM")


class BridgeError(Exception):
    """Base of every error gitops-bridge raises on purpose."""


class ConfigError(BridgeError):
    """Invalid configuration. `problems` holds one line per problem, each naming file, route and field."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class TransientError(BridgeError):
    """A failure that may go away: retry with jittered backoff, bounded."""


class UpstreamUnavailable(TransientError):
    def __init__(
        self, system: str, detail: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.system = system
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{system} unavailable: {detail}")


class PushRejected(TransientError):
    """The remote branch moved; fetch, re-apply and push again."""


class LockBusy(TransientError):
    """Another writer holds the lock for this repository and branch."""


class PermanentError(BridgeError):
    """Retrying will not help: report the failure once."""


class AuthError(PermanentError):
    def __init__(self, system: str, detail: str = "authentication failed") -> None:
        self.system = system
        super().__init__(f"{system}: {detail}")


class NotFound(PermanentError):
    def __init__(self, system: str, what: str) -> None:
        self.system = system
        super().__init__(f"{system}: {what} not found")


class InvalidBuild(PermanentError):
    """The build cannot be deployed as it is (bad tag, missing commit, ...)."""


class UnsafeWrite(PermanentError):
    """An edit that would change more than the target values; nothing was written."""


def is_transient(exc: BaseException) -> bool:
    """The retry policy: transient errors, Redis outages and bare network errors are retried, everything else is
    not."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, PermanentError | ConfigError):
        return False
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | redis_errors.BusyLoadingError
                  | redis_errors.ReadOnlyError | redis_errors.WatchError | redis_errors.ExecAbortError):
        return True  # EXECABORT: a command of ours was refused by the server's state (e.g. NOREPLICAS) in a MULTI
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).split(" ", 1)[0].upper() in _TRANSIENT_REPLIES
    return isinstance(exc, TimeoutError | ConnectionError | OSError)


def retry_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before try `attempt + 1`: exponential from `base`, capped at `cap`, jittered (half to full) so that
    workers retrying the same outage do not come back together."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), 16)) * random.uniform(0.5, 1.0)
