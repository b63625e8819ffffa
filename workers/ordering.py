"""Never move a target backwards: which pending bumps to write and which are superseded (pure).

Every target (file, key) remembers the build that last set it (`Setter`, stored at `Keys.last_setter`). A bump whose
build is older than that one, by the route's `ordering` policy, is superseded; so is every bump in the same batch
that a newer bump of the same route and environment overtakes. Policies:

* ``build-id`` (default): a lower build id is older.
* ``finish-time``: an earlier finish time is older (build id when either time is unknown, and to break ties).
* ``none``: nothing is older than what is there; within a batch the bump submitted last wins.

A forced bump (an operator's promotion) ignores the last setter and wins its batch. So does a rollback, which
writes an older tag on purpose (the only bump that may move a target backwards without being forced).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

Policy = Literal["build-id", "finish-time", "none"]
Target = tuple[str, str]  # (file, key)


@dataclass(frozen=True)
class Setter:
    build_id: int
    finish_time: str | None
    deployment_id: str
    tag: str | None = None
    commit: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> Setter | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(int(data["build_id"]), data.get("finish_time"), str(data.get("deployment_id", "")),
                       data.get("tag"), data.get("commit"))
        except (ValueError, KeyError, TypeError):
            return None


def _time(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def is_older(candidate: Setter, current: Setter, policy: Policy) -> bool:
    """True when `candidate` must not replace what `current` wrote."""
    if policy == "none":
        return False
    if policy == "finish-time":
        a, b = _time(candidate.finish_time), _time(current.finish_time)
        if a is not None and b is not None and a != b:
            return a < b
    return candidate.build_id < current.build_id


@dataclass(frozen=True)
class Candidate:
    deployment_id: str
    group: tuple[str, str]              # (route, environment): bumps that compete for the same targets
    targets: tuple[Target, ...]
    setter: Setter
    policy: Policy = "build-id"
    sequence: float = 0.0               # submission order (record creation time)
    force: bool = False
    rollback: bool = False              # a rollback writes an older tag on purpose


@dataclass(frozen=True)
class Decision:
    apply: tuple[Candidate, ...]
    superseded: tuple[tuple[Candidate, str], ...]


def _rank(c: Candidate) -> tuple[float, ...]:
    if c.force or c.rollback or c.policy == "none":
        return (float(c.force or c.rollback), c.sequence, c.setter.build_id)
    if c.policy == "finish-time":
        t = _time(c.setter.finish_time)
        return (0.0, t if t is not None else float("-inf"), c.setter.build_id, c.sequence)
    return (0.0, c.setter.build_id, c.sequence)


def decide(candidates: Iterable[Candidate], last: Mapping[Target, Setter]) -> Decision:
    """Split a batch into bumps to write (at most one per group) and superseded ones with a reason."""
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.group, []).append(c)
    apply: list[Candidate] = []
    superseded: list[tuple[Candidate, str]] = []
    for members in groups.values():
        winner = max(members, key=_rank)
        for other in members:
            if other is not winner:
                superseded.append((other, f"superseded by build {winner.setter.build_id} "
                                          f"({winner.deployment_id}) in the same batch"))
        blocker = None
        if not (winner.force or winner.rollback):
            for target in winner.targets:
                current = last.get(target)
                if current is not None and current.deployment_id != winner.deployment_id \
                        and is_older(winner.setter, current, winner.policy):
                    blocker = (target, current)
                    break
        if blocker is None:
            apply.append(winner)
        else:
            (file, key), current = blocker
            superseded.append((winner, f"{file}:{key} was already set by newer build {current.build_id} "
                                       f"({current.deployment_id})"))
    return Decision(tuple(apply), tuple(superseded))
