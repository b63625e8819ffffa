"""What `gitops-bridge wait` decides, as pure functions of the API's answer (`GET /api/builds/{id}`).

Exit codes (several environments: the highest wins):

| code | meaning                                                         |
| ---- | --------------------------------------------------------------- |
| 0    | every environment `succeeded` or `pushed`                       |
| 2    | usage error                                                     |
| 3    | a deployment `failed` or was `rejected`                         |
| 4    | a deployment `timed-out`                                        |
| 5    | `superseded` or `held` (nothing of this build deployed there)   |
| 6    | no deployment appeared before `--timeout`, or the timeout passed |
| 7    | API unreachable or unauthorised                                 |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_TIMED_OUT, EXIT_NOT_DEPLOYED, EXIT_TIMEOUT, EXIT_API = 0, 2, 3, 4, 5, 6, 7

VERDICT_EXIT: dict[str, int] = {
    "succeeded": EXIT_OK, "pushed": EXIT_OK, "failed": EXIT_FAILED, "rejected": EXIT_FAILED,
    "timed-out": EXIT_TIMED_OUT, "superseded": EXIT_NOT_DEPLOYED, "held": EXIT_NOT_DEPLOYED,
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class UsageError(Exception):
    """The request cannot be answered by waiting (unknown environment, ambiguous route): exit 2."""


def parse_duration(text: str) -> float:
    """`20m`, `90s`, `1h`, `1.5m`, `500ms` or plain seconds."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"invalid duration {text!r} (e.g. 90s, 20m, 1h)")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclass(frozen=True)
class EnvStatus:
    environment: str
    state: str  # "waiting" (no deployment yet), a deployment state, or "not-started"
    verdict: str | None = None
    reason: str | None = None
    deployment: str | None = None
    inherited: int | None = None  # a not-started environment carries the code of the predecessor that stopped it

    @property
    def final(self) -> bool:
        return self.verdict is not None or self.state == "not-started"

    @property
    def code(self) -> int:
        if self.inherited is not None:
            return self.inherited
        return VERDICT_EXIT.get(self.verdict or "", EXIT_TIMEOUT)

    def line(self) -> str:
        """One progress line: `dev: verifying`, `dev: pushed (not verified)`, `prod: failed: Degraded …`."""
        what = self.verdict or self.state
        if self.verdict == "pushed":
            what += " (not verified: no Argo CD check)"
        return f"{self.environment}: {what}" + (f": {self.reason}" if self.reason else "")

    def as_json(self) -> dict[str, Any]:
        return {"environment": self.environment, "state": self.state, "verdict": self.verdict,
                "reason": self.reason, "deployment": self.deployment, "exit_code": self.code if self.final else None}


def _builds(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in body.get("deployments", []) if d.get("kind", "build") == "build"]


def choose_route(body: dict[str, Any], route: str | None, envs: list[str]) -> dict[str, Any] | None:
    """The route to wait on: the named one; else the one the build's deployments went through; else the only route
    (or the only one with every named environment). None: not known yet (wait for the first deployment)."""
    routes: list[dict[str, Any]] = body.get("routes", [])
    if route is not None:
        for r in routes:
            if r["name"] == route:
                return r
        raise UsageError(f"no route {route!r} (routes: {', '.join(r['name'] for r in routes) or 'none'})")
    used = {d["route"] for d in _builds(body)}
    if len(used) > 1:
        raise UsageError(f"the build deployed through several routes ({', '.join(sorted(used))}): name one with "
                         "--route")
    candidates = [r for r in routes if r["name"] in used] if used else [
        r for r in routes if set(envs) <= {e["name"] for e in r["environments"]}]
    if not candidates and envs:
        raise UsageError(f"no route has environment(s) {', '.join(envs)}")
    return candidates[0] if len(candidates) == 1 else None


def _branch_ok(env: dict[str, Any], branch: str | None) -> bool:
    import fnmatch

    globs = env.get("branches")
    return branch is None or globs is None or any(fnmatch.fnmatchcase(branch, g) for g in globs)


def targets(route: dict[str, Any], envs: list[str], body: dict[str, Any]) -> list[str]:
    """The environments to wait for: the named ones (checked), else those the build's event starts without a gate
    (and whose `branches` accept the build's branch, when a deployment told it)."""
    names = [e["name"] for e in route["environments"]]
    if envs:
        unknown = [e for e in envs if e not in names]
        if unknown:
            raise UsageError(f"no environment {', '.join(map(repr, unknown))} in route {route['name']!r} "
                             f"(environments: {', '.join(names)})")
        return list(dict.fromkeys(envs))
    branch = next((d.get("source_branch") for d in _builds(body) if d.get("source_branch")), None)
    found = [e["name"] for e in route["environments"] if e.get("ungated") and _branch_ok(e, branch)]
    if not found:
        raise UsageError(f"every environment of route {route['name']!r} is gated ({', '.join(names)}): name the "
                         "ones to wait for with --env")
    return found


def statuses(route: dict[str, Any], body: dict[str, Any]) -> dict[str, EnvStatus]:
    """Every environment of the route, in routing order: its newest deployment of this build, else `waiting`, or
    `not-started` when its `after:` predecessor ended without success (it inherits that exit code)."""
    newest: dict[str, dict[str, Any]] = {}
    for d in _builds(body):
        if d["route"] == route["name"] and (d["environment"] not in newest
                                            or d.get("created", 0) > newest[d["environment"]].get("created", 0)):
            newest[d["environment"]] = d
    out: dict[str, EnvStatus] = {}
    pending = list(route["environments"])
    for _ in range(len(pending)):  # `after:` may name a later environment: settle them in dependency order
        for env in list(pending):
            name, after = env["name"], env.get("after")
            if name in newest:
                d = newest[name]
                out[name] = EnvStatus(name, d.get("state", "queued"), d.get("verdict"), d.get("reason"), d.get("id"))
            elif after is not None and after not in out:
                continue
            elif after is not None and out[after].final and out[after].code != EXIT_OK:
                prev = out[after]
                out[name] = EnvStatus(name, "not-started", reason=f"{after} {prev.verdict or 'not started'}",
                                      inherited=prev.code)
            else:
                out[name] = EnvStatus(name, "waiting")
            pending.remove(env)
    for env in pending:  # a cycle the routing file check should have refused: just wait
        out[env["name"]] = EnvStatus(env["name"], "waiting")
    return out


def exit_code(found: list[EnvStatus], *, timed_out: bool) -> int:
    codes = [s.code for s in found if s.final]
    if timed_out and not all(s.final for s in found):
        codes.append(EXIT_TIMEOUT)
    return max(codes, default=EXIT_TIMEOUT if timed_out else EXIT_OK)
