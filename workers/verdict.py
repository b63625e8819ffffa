"""Is our commit deployed? A pure judgement of one Argo CD Application snapshot (README §10, made strict).

    judge(app, Waiter(...), contains, now) → Waiting | Succeeded | Failed | TimedOut
    judge_many(app, [Waiter, ...], contains_for, now) → the same for many waiters, one judgement per group

`contains(revision)` answers "is `revision` our commit or a commit that contains it" (git ancestry, checked by the
caller in the cached clone; `revisions_to_check(app, source_index)` lists the SHAs it needs). No I/O here.

The rules, in order:
- an operation (`operation` non-null) means requested, running or retrying: wait;
- ComparisonError / InvalidSpecError that appeared at or after our push (second precision) and a comparison that is
  not Synced at our commit: failed with Argo CD's message;
- the comparison (`status.sync`) must be at our commit or a descendant, else wait (stale Synced at the old revision
  is the classic false positive);
- the last operation applied our commit (or a descendant): Failed/Error → failed with the failing resources;
  Succeeded → trust health only once `reconciledAt >= finishedAt`;
- no operation applied it and the comparison is Synced: the commit changed nothing this app renders → no-op, fine;
  OutOfSync: auto-sync apps wait, manual apps need a sync (`Waiting.needs_sync`);
- Synced at ours: Healthy → succeeded; Progressing/Suspended/Missing/Unknown/"" → wait; Degraded → failed once it
  has lasted `degraded_grace` seconds;
- past the deadline, anything still waiting becomes TimedOut with the last snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
TERMINAL = ("Succeeded", "Failed", "Error")
ERROR_CONDITIONS = ("ComparisonError", "InvalidSpecError")


@dataclass(frozen=True)
class Waiter:
    """What we wait for: our commit, when we pushed it, until when, and which source holds our file."""

    target: str
    pushed_at: datetime
    deadline: datetime
    degraded_grace: float = 60.0
    source_index: int | None = None
    degraded_since: datetime | None = None
    suspended: str = "wait"  # what health Suspended (a paused Rollout) means once synced: wait | succeed | fail


@dataclass(frozen=True)
class Waiting:
    reason: str
    needs_sync: bool = False      # manual-sync app compared at our commit, OutOfSync, nothing running: POST /sync
    needs_refresh: bool = False   # the comparison or the post-sync reconcile lags: a refresh would help
    degraded: bool = False        # health is Degraded but within the grace period
    stamps: frozenset[str] = frozenset()
    summary: str = ""


@dataclass(frozen=True)
class Succeeded:
    reason: str
    stamps: frozenset[str] = frozenset({"sync_started", "synced", "healthy"})
    summary: str = ""


@dataclass(frozen=True)
class Failed:
    reason: str
    resources: tuple[str, ...] = ()
    stamps: frozenset[str] = frozenset()
    summary: str = ""


@dataclass(frozen=True)
class TimedOut:
    reason: str
    summary: str = ""
    stamps: frozenset[str] = frozenset()


Judgement = Waiting | Succeeded | Failed | TimedOut


@dataclass(frozen=True)
class _View:
    """The decisive fields of a snapshot, read once."""

    sync_status: str
    sync_revs: tuple[str, ...]
    health: str
    operation: dict[str, Any] | None
    op_state: dict[str, Any] | None
    phase: str
    op_revs: tuple[str, ...]
    finished_at: datetime | None
    reconciled_at: datetime | None
    conditions: list[dict[str, Any]] = field(default_factory=list)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _revs(block: Any, source_index: int | None) -> tuple[str, ...]:
    """`revision`, or for multi-source apps `revisions[source_index]` (all of them when no index is given)."""
    if not isinstance(block, dict):
        return ()
    many = block.get("revisions")
    if isinstance(many, list) and many:
        if source_index is not None:
            return (str(many[source_index]),) if source_index < len(many) and many[source_index] else ()
        return tuple(str(r) for r in many if r)
    one = block.get("revision")
    return (str(one),) if one else ()


def is_auto_sync(app: dict[str, Any]) -> bool:
    """`spec.syncPolicy.automated` present and not `enabled: false` (3.x)."""
    automated = ((app.get("spec") or {}).get("syncPolicy") or {}).get("automated")
    return isinstance(automated, dict) and automated.get("enabled", True) is not False


def _view(app: dict[str, Any], source_index: int | None) -> _View:
    status = app.get("status") or {}
    sync = status.get("sync") or {}
    op_state = status.get("operationState") or None
    op_revs: tuple[str, ...] = ()
    if op_state:
        op_revs = _revs(op_state.get("syncResult"), source_index) or _revs(
            (op_state.get("operation") or {}).get("sync"), source_index)
    return _View(
        sync_status=str(sync.get("status") or ""),
        sync_revs=_revs(sync, source_index),
        health=str((status.get("health") or {}).get("status") or ""),
        operation=app.get("operation") or None,
        op_state=op_state,
        phase=str((op_state or {}).get("phase") or ""),
        op_revs=op_revs,
        finished_at=parse_time((op_state or {}).get("finishedAt")),
        reconciled_at=parse_time(status.get("reconciledAt")),
        conditions=[c for c in status.get("conditions") or [] if isinstance(c, dict)],
    )


def revisions_to_check(app: dict[str, Any], source_index: int | None = None) -> set[str]:
    """Every commit SHA in the snapshot whose ancestry the caller must know before calling `judge`."""
    v = _view(app, source_index)
    op_revs = _revs((v.operation or {}).get("sync"), source_index)
    return {r for r in (*v.sync_revs, *v.op_revs, *op_revs) if SHA.match(r)}


def short(rev: str | None) -> str:
    return rev[:10] if rev and SHA.match(rev) else (rev or "none")


def summarize(app: dict[str, Any], source_index: int | None = None) -> str:
    """One line: the snapshot fields a human needs to see why we waited (reported on timeout)."""
    v = _view(app, source_index)
    parts = [f"sync {v.sync_status or '?'} at {', '.join(short(r) for r in v.sync_revs) or 'none'}",
             f"health {v.health or '?'}"]
    if v.op_state:
        parts.append(f"last operation {v.phase or '?'} at {', '.join(short(r) for r in v.op_revs) or 'none'}"
                     + (f" ({_clip(v.op_state.get('message'))})" if v.op_state.get("message") else ""))
    parts.append("operation in progress" if v.operation else "no operation")
    if v.reconciled_at:
        parts.append(f"reconciled {v.reconciled_at.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    for c in v.conditions:
        parts.append(f"{c.get('type')}: {_clip(c.get('message'))}")
    return "; ".join(parts)


def _clip(text: Any, limit: int = 300) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _ident(res: dict[str, Any]) -> str:
    ns = f"{res['namespace']}/" if res.get("namespace") else ""
    return f"{res.get('kind', '?')} {ns}{res.get('name', '?')}"


def failing_sync_resources(app: dict[str, Any]) -> tuple[str, ...]:
    state = (app.get("status") or {}).get("operationState") or {}
    out = []
    for res in (state.get("syncResult") or {}).get("resources") or []:
        if not isinstance(res, dict):
            continue
        if res.get("status") == "SyncFailed" or res.get("hookPhase") in ("Failed", "Error"):
            out.append(f"{_ident(res)}: {_clip(res.get('message'), 200)}".rstrip(": "))
    return tuple(out)


def degraded_resources(app: dict[str, Any]) -> tuple[str, ...]:
    out = []
    for res in (app.get("status") or {}).get("resources") or []:
        health = (res.get("health") or {}) if isinstance(res, dict) else {}
        if health.get("status") in ("Degraded", "Missing"):
            msg = _clip(health.get("message"), 200)
            out.append(f"{_ident(res)}: {health['status']}" + (f" ({msg})" if msg else ""))
    return tuple(out)


def suspended_resources(app: dict[str, Any]) -> tuple[str, ...]:
    """The paused resources (an Argo Rollout at a canary step, a paused Deployment) with their health message."""
    out = []
    for res in (app.get("status") or {}).get("resources") or []:
        health = (res.get("health") or {}) if isinstance(res, dict) else {}
        if health.get("status") == "Suspended":
            msg = _clip(health.get("message"), 200)
            out.append(f"{_ident(res)}" + (f" ({msg})" if msg else ""))
    return tuple(out)


def paused_rollouts(app: dict[str, Any]) -> list[dict[str, Any]]:
    """The Argo Rollouts reported Suspended in `status.resources` (whose live manifest tells the canary step)."""
    return [r for r in (app.get("status") or {}).get("resources") or [] if isinstance(r, dict)
            and r.get("kind") == "Rollout" and r.get("group") == "argoproj.io"
            and (r.get("health") or {}).get("status") == "Suspended"]


def rollout_pause(manifest: dict[str, Any]) -> str:
    """'paused at step N of M of the canary (CanaryPauseStep)' from a Rollout's live manifest; '' when unknown."""
    status = manifest.get("status") or {}
    steps = (((manifest.get("spec") or {}).get("strategy") or {}).get("canary") or {}).get("steps") or []
    index = status.get("currentStepIndex")
    reasons = [str(c.get("reason")) for c in status.get("pauseConditions") or [] if isinstance(c, dict)]
    why = ", ".join(reasons) or _clip(status.get("message"), 120)
    if isinstance(index, int) and steps:
        return f"paused at step {index + 1} of {len(steps)} of the canary" + (f" ({why})" if why else "")
    return f"paused ({why})" if why else ""


def _floor(ts: datetime) -> datetime:
    return ts.replace(microsecond=0)


def _contains_fn(contains: Callable[[str], bool] | Collection[str], target: str) -> Callable[[str], bool]:
    if callable(contains):
        fn = contains
        return lambda rev: rev == target or fn(rev)
    known = set(contains)
    return lambda rev: rev == target or rev in known


def judge(
    app: dict[str, Any],
    waiter: Waiter,
    contains: Callable[[str], bool] | Collection[str],
    now: datetime,
) -> Judgement:
    """Judge one snapshot for one waiting deployment. `contains` is a callable or the set of SHAs containing ours."""
    summary = summarize(app, waiter.source_index)
    return _overdue(_judge(app, waiter, _contains_fn(contains, waiter.target), now, summary), waiter, now, summary)


def judge_many(
    app: dict[str, Any],
    waiters: Sequence[Waiter],
    contains: Callable[[Waiter], Callable[[str], bool] | Collection[str]],
    now: datetime,
) -> list[Judgement]:
    """`judge` for every waiter of one snapshot, with the same answers, at the cost of one judgement per group of
    waiters that only differ by deadline (same target, source, policies, push second and degraded start): a watcher
    with thousands of waiters on a few commits judges a few times. `contains(waiter)` as in `judge`."""
    summaries: dict[int | None, str] = {}
    memo: dict[tuple[Any, ...], Judgement] = {}
    out: list[Judgement] = []
    for w in waiters:
        if w.source_index not in summaries:
            summaries[w.source_index] = summarize(app, w.source_index)
        summary = summaries[w.source_index]
        group = (w.target, w.source_index, w.suspended, w.degraded_grace, w.degraded_since, _floor(w.pushed_at))
        result = memo.get(group)
        if result is None:
            result = memo[group] = _judge(app, w, _contains_fn(contains(w), w.target), now, summary)
        out.append(_overdue(result, w, now, summary))
    return out


def _overdue(result: Judgement, waiter: Waiter, now: datetime, summary: str) -> Judgement:
    """Past the deadline, still waiting becomes timed out (with the last snapshot)."""
    if isinstance(result, Waiting) and now >= waiter.deadline:
        return TimedOut(f"Argo CD did not finish deploying {short(waiter.target)} in time ({result.reason}); "
                        f"last snapshot: {summary}", summary=summary, stamps=result.stamps)
    return result


def _judge(app: dict[str, Any], w: Waiter, contains: Callable[[str], bool], now: datetime, summary: str) -> Judgement:
    v = _view(app, w.source_index)
    ours = short(w.target)
    compared_ok = any(contains(r) for r in v.sync_revs)
    synced_at_ours = compared_ok and v.sync_status == "Synced"

    # Manifest generation or spec errors raised since our push: no operation will ever start.
    if not synced_at_ours:
        pushed = _floor(w.pushed_at)
        for cond in v.conditions:
            when = parse_time(cond.get("lastTransitionTime"))
            if cond.get("type") in ERROR_CONDITIONS and (when is None or when >= pushed):
                return Failed(f"Argo CD cannot render the application: {cond['type']}: {_clip(cond.get('message'))}",
                              summary=summary)

    op_ours = any(contains(r) for r in v.op_revs)
    pending_revs = _revs((v.operation or {}).get("sync"), w.source_index)
    stamps: set[str] = set()
    if op_ours or (v.operation and any(contains(r) for r in pending_revs)):
        stamps.add("sync_started")

    if v.operation is not None:
        if v.op_state and v.phase == "Running" and v.finished_at is not None:
            attempt = v.op_state.get("retryCount", "?")
            why = f"sync retry pending (attempt {attempt}): {_clip(v.op_state.get('message'))}"
        elif v.op_state and v.phase in ("Running", "Terminating"):
            why = f"sync {v.phase.lower()} at {', '.join(short(r) for r in v.op_revs) or '?'}"
        else:
            why = "sync requested, not started yet"
        return Waiting(why, stamps=frozenset(stamps), summary=summary)

    if not compared_ok:
        seen = ", ".join(short(r) for r in v.sync_revs) or "no revision"
        return Waiting(f"Argo CD has compared {seen}, not {ours} yet", needs_refresh=True,
                       stamps=frozenset(stamps), summary=summary)

    if op_ours and v.phase in ("Failed", "Error"):
        message = _clip((v.op_state or {}).get("message"))
        return Failed(f"sync to {short(v.op_revs[0])} {v.phase.lower()}: {message}",
                      resources=failing_sync_resources(app), stamps=frozenset(stamps), summary=summary)

    if op_ours and v.phase == "Succeeded":
        if v.finished_at is not None and (v.reconciled_at is None or v.reconciled_at < v.finished_at):
            return Waiting("sync succeeded; waiting for Argo CD to reconcile before trusting health",
                           needs_refresh=True, stamps=frozenset(stamps), summary=summary)
    elif v.sync_status == "OutOfSync":
        if is_auto_sync(app):
            return Waiting(f"compared at {ours}, OutOfSync; waiting for auto-sync", stamps=frozenset(stamps),
                           summary=summary)
        return Waiting(f"compared at {ours}, OutOfSync; a sync is needed", needs_sync=True,
                       stamps=frozenset(stamps), summary=summary)

    if v.sync_status != "Synced":
        return Waiting(f"comparison is {v.sync_status or 'unknown'}", stamps=frozenset(stamps), summary=summary)

    stamps.add("synced")
    how = "synced" if op_ours else "no change to this application's manifests (Synced without an operation)"
    if v.health == "Healthy":
        return Succeeded(f"{ours} {how} and Healthy", stamps=frozenset(stamps | {"healthy"}), summary=summary)
    if v.health == "Suspended" and w.suspended != "wait":
        paused = suspended_resources(app)
        detail = f": {'; '.join(paused)}" if paused else ""
        if w.suspended == "succeed":
            return Succeeded(f"{ours} {how}; Suspended (paused rollout) accepted for this environment{detail}",
                             stamps=frozenset(stamps | {"healthy"}), summary=summary)
        return Failed(f"{ours} {how} but the application is Suspended{detail}", resources=paused,
                      stamps=frozenset(stamps), summary=summary)
    if v.health == "Suspended":
        paused = suspended_resources(app)
        return Waiting(f"{how}; health Suspended" + (f": {'; '.join(paused)}" if paused else ""),
                       stamps=frozenset(stamps), summary=summary)
    if v.health == "Degraded":
        since = w.degraded_since or now
        if (now - since).total_seconds() >= w.degraded_grace:
            found = degraded_resources(app)
            detail = f": {'; '.join(found)}" if found else ""
            return Failed(f"{ours} {how} but the application is Degraded{detail}", resources=found,
                          stamps=frozenset(stamps), summary=summary)
        return Waiting(f"Degraded (grace {w.degraded_grace:g} s)", degraded=True, stamps=frozenset(stamps),
                       summary=summary)
    return Waiting(f"{how}; health {v.health or 'not reported'}", stamps=frozenset(stamps), summary=summary)


# -- estates: one environment on many applications ---------------------------------------------------------------

@dataclass(frozen=True)
class AppState:
    """One application's part in a deployment: waiting | missing | succeeded | failed, and why."""

    state: str
    reason: str = ""


def combine(members: Mapping[str, AppState], *, target: str, discovering: bool, min_apps: int) -> Judgement:
    """The deployment's verdict from its applications' states (no deadline here: see `estate_timed_out`).

    Failed as soon as one failed (naming it); failed when discovery has ended with fewer than `min_apps`
    applications; succeeded only when discovery has ended and every application succeeded (never on an empty set).
    """
    ours = short(target)
    for name, m in sorted(members.items()):
        if m.state == "failed":
            return Failed(f"{name}: {m.reason}")
    if not discovering and len(members) < max(min_apps, 1):
        found = ", ".join(sorted(members)) or "none"
        return Failed(f"only {len(members)} Argo CD application(s) found when discovery ended, at least "
                      f"{max(min_apps, 1)} required (found: {found})")
    pending = sorted(n for n, m in members.items() if m.state != "succeeded")
    if pending:
        return Waiting(f"waiting for {len(pending)} of {len(members)} applications: {_listing(members, pending)}")
    if discovering:
        return Waiting(f"all {len(members)} applications deployed {ours}; discovery of new applications still open")
    names = ", ".join(sorted(members))
    return Succeeded(f"{ours} synced and Healthy on all {len(members)} applications ({names})")


def estate_timed_out(members: Mapping[str, AppState], *, target: str, discovering: bool) -> TimedOut:
    pending = sorted(n for n, m in members.items() if m.state != "succeeded")
    still = f"still waiting for {len(pending)} of {len(members)} applications: {_listing(members, pending)}" \
        if pending else f"all {len(members)} applications deployed, but discovery was still open"
    if discovering and pending:
        still += "; discovery still open"
    return TimedOut(f"Argo CD did not finish deploying {short(target)} in time: {still}")


def _listing(members: Mapping[str, AppState], names: list[str]) -> str:
    return "; ".join(f"{n} ({_clip(members[n].reason, 160) or members[n].state})" for n in names)
