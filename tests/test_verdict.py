"""Table tests for the pure verdict, built from the example status blocks of the Argo CD reference (§9)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from workers.verdict import (
    Failed,
    Succeeded,
    TimedOut,
    Waiter,
    Waiting,
    is_auto_sync,
    judge,
    judge_many,
    revisions_to_check,
    summarize,
)

OLD = "1" * 40
X = "2" * 40
Y = "3" * 40  # a later commit that contains X
Z = "4" * 40  # a commit that does not contain X
SOURCE = {"repoURL": "https://dev.azure.com/org/proj/_git/gitops", "path": "apps/web", "targetRevision": "main",
          "helm": {"valueFiles": ["values.yaml"]}}
PUSHED = datetime(2026, 8, 23, 10, 0, 0, 300000, tzinfo=UTC)
NOW = datetime(2026, 8, 23, 10, 2, 0, tzinfo=UTC)
AUTO = {"syncPolicy": {"automated": {"prune": True, "selfHeal": True}}}
MANUAL: dict[str, Any] = {"syncPolicy": {}}


def op(rev: str, **extra: Any) -> dict[str, Any]:
    return {"sync": {"revision": rev, "source": SOURCE}, "initiatedBy": {"username": "ado-bridge"},
            "info": [{"name": "gitops-bridge.deployment", "value": "12345-web-prod"}], "retry": {}, **extra}


def stale() -> dict[str, Any]:  # §9.0
    return {
        "metadata": {"name": "web", "namespace": "argocd", "resourceVersion": "884120"},
        "spec": {"project": "team-a", "source": SOURCE, **AUTO},
        "status": {
            "sync": {"status": "Synced", "revision": OLD, "comparedTo": {"source": SOURCE}},
            "health": {"status": "Healthy", "lastTransitionTime": "2026-08-23T09:01:10Z"},
            "operationState": {
                "operation": {"sync": {"revision": OLD}, "initiatedBy": {"automated": True}, "retry": {"limit": 5}},
                "phase": "Succeeded", "message": "successfully synced (all tasks run)",
                "syncResult": {"revision": OLD, "source": SOURCE, "resources": []},
                "startedAt": "2026-08-23T09:00:28Z", "finishedAt": "2026-08-23T09:00:31Z"},
            "reconciledAt": "2026-08-23T09:58:02Z",
        },
    }


def running() -> dict[str, Any]:  # §9.1
    app = stale()
    app["operation"] = op(X)
    app["status"].update({
        "sync": {"status": "OutOfSync", "revision": X},
        "health": {"status": "Progressing", "lastTransitionTime": "2026-08-23T10:00:09Z"},
        "operationState": {"operation": op(X), "phase": "Running", "message": "one or more tasks are running",
                           "syncResult": {"revision": X, "resources": [
                               {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "web",
                                "name": "web", "status": "Synced", "message": "deployment.apps/web configured",
                                "syncPhase": "Sync"}]},
                           "startedAt": "2026-08-23T10:00:05Z"},
        "reconciledAt": "2026-08-23T10:00:03Z",
    })
    return app


def sync_response() -> dict[str, Any]:  # the POST /sync answer: operation set, operationState cleared
    app = stale()
    app["operation"] = op(X)
    del app["status"]["operationState"]
    app["status"]["sync"] = {"status": "OutOfSync", "revision": X}
    return app


def done(rev: str = X) -> dict[str, Any]:  # §9.2
    app = stale()
    app["status"].update({
        "sync": {"status": "Synced", "revision": rev},
        "health": {"status": "Healthy", "lastTransitionTime": "2026-08-23T10:01:02Z"},
        "operationState": {"operation": op(rev), "phase": "Succeeded", "message": "successfully synced (all tasks run)",
                           "syncResult": {"revision": rev, "resources": []},
                           "startedAt": "2026-08-23T10:00:05Z", "finishedAt": "2026-08-23T10:00:08Z"},
        "reconciledAt": "2026-08-23T10:01:02Z",
    })
    return app


def failed() -> dict[str, Any]:  # §9.3
    app = stale()
    app["status"].update({
        "sync": {"status": "OutOfSync", "revision": X},
        "health": {"status": "Healthy"},
        "operationState": {
            "operation": {"sync": {"revision": X}, "initiatedBy": {"automated": True}, "retry": {"limit": 5}},
            "phase": "Failed",
            "message": 'one or more objects failed to apply, reason: Deployment.apps "web" is invalid: '
                       "spec.template.spec.containers[0].image: Required value (retried 5 times).",
            "retryCount": 5,
            "syncResult": {"revision": X, "resources": [
                {"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "web", "name": "web",
                 "status": "SyncFailed", "syncPhase": "Sync", "message": 'Deployment.apps "web" is invalid: …'}]},
            "startedAt": "2026-08-23T10:00:05Z", "finishedAt": "2026-08-23T10:06:40Z"},
        "conditions": [{"type": "SyncError", "message": f"Failed last sync attempt to [{X}]: …",
                        "lastTransitionTime": "2026-08-23T10:06:41Z"}],
        "reconciledAt": "2026-08-23T10:06:41Z",
    })
    return app


def retrying() -> dict[str, Any]:  # §9.3, retry pending
    app = failed()
    app["operation"] = app["status"]["operationState"]["operation"]
    app["status"]["operationState"].update(
        phase="Running", retryCount=1,
        message="one or more objects failed to apply, reason: …. Retrying attempt #1 at 10:00AM.")
    del app["status"]["conditions"]
    return app


def degraded() -> dict[str, Any]:  # §9.4
    app = done()
    app["status"]["health"] = {"status": "Degraded", "lastTransitionTime": "2026-08-23T10:10:09Z"}
    app["status"]["resources"] = [{"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "web",
                                   "name": "web", "status": "Synced",
                                   "health": {"status": "Degraded",
                                              "message": 'Deployment "web" exceeded its progress deadline'}}]
    app["status"]["reconciledAt"] = "2026-08-23T10:10:09Z"
    return app


def comparison_error(when: str = "2026-08-23T10:00:04Z", kind: str = "ComparisonError") -> dict[str, Any]:  # §9.5
    app = stale()
    app["status"]["sync"] = {"status": "Unknown", "revision": "main"}
    app["status"]["conditions"] = [{"type": kind, "lastTransitionTime": when,
                                    "message": "Failed to load target state: failed to generate manifest for source "
                                               "1 of 1: rpc error: code = Unknown desc = … helm template …"}]
    app["status"]["reconciledAt"] = "2026-08-23T10:00:04Z"
    return app


def no_op() -> dict[str, Any]:  # our commit changed nothing this app renders
    app = stale()
    app["status"]["sync"] = {"status": "Synced", "revision": X}
    app["status"]["reconciledAt"] = "2026-08-23T10:00:04Z"
    return app


def with_(app: dict[str, Any], **changes: Any) -> dict[str, Any]:
    app = copy.deepcopy(app)
    for path, value in changes.items():
        node = app
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return app


def waiter(**kw: Any) -> Waiter:
    base: dict[str, Any] = {"target": X, "pushed_at": PUSHED, "deadline": NOW + timedelta(minutes=10)}
    return Waiter(**{**base, **kw})


CASES: list[tuple[str, dict[str, Any], dict[str, Any], set[str], type, str]] = [
    # id, app, waiter overrides, SHAs containing ours (besides ours), expected type, text in reason
    ("stale-synced-old-revision", stale(), {}, set(), Waiting, "compared 1111111111, not 2222222222"),
    ("sync-running", running(), {}, set(), Waiting, "sync running"),
    ("sync-response-not-started", sync_response(), {}, set(), Waiting, "sync requested"),
    ("synced-healthy", done(), {}, set(), Succeeded, "synced and Healthy"),
    ("reconcile-lags-operation", with_(done(), status__reconciledAt="2026-08-23T10:00:07Z"), {}, set(),
     Waiting, "reconcile before trusting health"),
    ("reconcile-equal-seconds-trusted", with_(done(), status__reconciledAt="2026-08-23T10:00:08Z"), {}, set(),
     Succeeded, "Healthy"),
    ("sync-failed", failed(), {}, set(), Failed, "one or more objects failed to apply"),
    ("retry-pending", retrying(), {}, set(), Waiting, "retry pending (attempt 1)"),
    ("degraded-in-grace", degraded(), {}, set(), Waiting, "Degraded (grace 60 s)"),
    ("degraded-after-grace", degraded(), {"degraded_since": NOW - timedelta(seconds=61)}, set(), Failed,
     "exceeded its progress deadline"),
    ("degraded-no-grace", degraded(), {"degraded_grace": 0}, set(), Failed, "Degraded"),
    ("progressing-after-sync", with_(done(), status__health={"status": "Progressing"}), {}, set(), Waiting,
     "health Progressing"),
    ("suspended-after-sync", with_(done(), status__health={"status": "Suspended"}), {}, set(), Waiting,
     "health Suspended"),
    ("comparison-error-after-push", comparison_error(), {}, set(), Failed, "ComparisonError"),
    ("invalid-spec-after-push", comparison_error(kind="InvalidSpecError"), {}, set(), Failed, "InvalidSpecError"),
    ("comparison-error-before-push", comparison_error(when="2026-08-23T09:59:00Z"), {}, set(), Waiting,
     "not 2222222222"),
    ("comparison-error-same-second-as-push", comparison_error(when="2026-08-23T10:00:00Z"), {}, set(), Failed,
     "ComparisonError"),
    ("no-op-commit", no_op(), {}, set(), Succeeded, "no change to this application's manifests"),
    ("newer-commit-contains-ours", done(Y), {}, {Y}, Succeeded, "Healthy"),
    ("newer-commit-not-ours", done(Z), {}, set(), Waiting, "compared 4444444444"),
    ("manual-app-out-of-sync", with_(no_op(), spec=MANUAL, status__sync={"status": "OutOfSync", "revision": X}), {},
     set(), Waiting, "a sync is needed"),
    ("auto-app-out-of-sync", with_(no_op(), status__sync={"status": "OutOfSync", "revision": X}), {}, set(),
     Waiting, "waiting for auto-sync"),
    ("deadline-passed", stale(), {"deadline": NOW - timedelta(seconds=1)}, set(), TimedOut,
     "last snapshot: sync Synced at 1111111111"),
    ("success-wins-at-deadline", done(), {"deadline": NOW - timedelta(seconds=1)}, set(), Succeeded, "Healthy"),
    ("multi-source-index", with_(done(), status__sync={"status": "Synced", "revisions": ["1.2.3", X]},
                                 status__operationState__syncResult={"revisions": ["1.2.3", X]}),
     {"source_index": 1}, set(), Succeeded, "Healthy"),
    ("multi-source-wrong-index", with_(done(), status__sync={"status": "Synced", "revisions": [X, OLD]},
                                       status__operationState__syncResult={"revisions": [X, OLD]}),
     {"source_index": 1}, set(), Waiting, "not 2222222222"),
]


@pytest.mark.parametrize(("app", "overrides", "containing", "expected", "text"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge(app: dict[str, Any], overrides: dict[str, Any], containing: set[str], expected: type,
               text: str) -> None:
    result = judge(app, waiter(**overrides), containing, NOW)
    assert isinstance(result, expected), result
    assert text in result.reason
    assert result.reason  # every verdict carries a human-readable reason


@pytest.mark.parametrize(("app", "_o", "_c", "_e", "_t"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge_many_answers_like_judge_for_each_waiter(app: dict[str, Any], _o: Any, _c: Any, _e: Any, _t: Any) -> None:
    # waiters on several commits, deadlines, push times, grace and degraded starts: grouped, yet each judged exactly
    waiters = [waiter(**o) for o in (
        {}, {"deadline": NOW - timedelta(seconds=1)}, {"target": Y}, {"target": Z}, {"source_index": 1},
        {"pushed_at": PUSHED - timedelta(hours=1)}, {"degraded_since": NOW - timedelta(seconds=61)},
        {"degraded_grace": 0}, {"suspended": "succeed"}, {}, {"target": Y, "deadline": NOW - timedelta(seconds=1)})]
    containing = {X: {Y}, Y: set(), Z: set()}
    many = judge_many(app, waiters, lambda w: containing[w.target], NOW)
    assert many == [judge(app, w, containing[w.target], NOW) for w in waiters]


def test_contains_may_be_a_callable() -> None:
    asked: list[str] = []

    def contains(rev: str) -> bool:
        asked.append(rev)
        return rev == Y

    assert isinstance(judge(done(Y), waiter(), contains, NOW), Succeeded)
    assert Y in asked


def test_stamps_follow_progress() -> None:
    assert "sync_started" in judge(running(), waiter(), set(), NOW).stamps
    assert judge(stale(), waiter(), set(), NOW).stamps == frozenset()
    assert {"sync_started", "synced", "healthy"} <= judge(done(), waiter(), set(), NOW).stamps
    assert {"synced", "healthy"} <= judge(no_op(), waiter(), set(), NOW).stamps


def test_failure_names_failing_resources() -> None:
    result = judge(failed(), waiter(), set(), NOW)
    assert isinstance(result, Failed)
    assert result.resources == ('Deployment web/web: Deployment.apps "web" is invalid: …',)
    degraded_result = judge(degraded(), waiter(degraded_grace=0), set(), NOW)
    assert isinstance(degraded_result, Failed)
    assert degraded_result.resources == ('Deployment web/web: Degraded (Deployment "web" exceeded its progress '
                                         'deadline)',)


def test_manual_app_needs_sync_only_when_nothing_applied_ours() -> None:
    manual_oos = with_(no_op(), spec=MANUAL, status__sync={"status": "OutOfSync", "revision": X})
    result = judge(manual_oos, waiter(), set(), NOW)
    assert isinstance(result, Waiting) and result.needs_sync
    # our sync already applied X but the comparison drifted: do not sync again, wait
    drifted = with_(done(), spec=MANUAL, status__sync={"status": "OutOfSync", "revision": X})
    assert not judge(drifted, waiter(), set(), NOW).needs_sync  # type: ignore[union-attr]
    assert not judge(running(), waiter(), set(), NOW).needs_sync  # type: ignore[union-attr]


def test_refresh_hint_when_comparison_lags() -> None:
    assert judge(stale(), waiter(), set(), NOW).needs_refresh  # type: ignore[union-attr]
    assert not judge(running(), waiter(), set(), NOW).needs_refresh  # type: ignore[union-attr]


def test_auto_sync_detection() -> None:
    assert is_auto_sync(stale())
    assert not is_auto_sync(with_(stale(), spec=MANUAL))
    assert not is_auto_sync(with_(stale(), spec={"syncPolicy": {"automated": {"enabled": False}}}))


def test_revisions_to_check_lists_only_shas() -> None:
    assert revisions_to_check(comparison_error()) == {OLD}
    assert revisions_to_check(running()) == {X}
    assert revisions_to_check(with_(done(), status__sync={"revisions": ["1.2.3", Y]}), 1) == {Y, X}


def test_summary_is_one_readable_line() -> None:
    text = summarize(failed())
    assert "sync OutOfSync at 2222222222" in text and "last operation Failed" in text and "SyncError" in text
    assert "\n" not in text
