"""Promotions: `after: dev` through a pull request that a reviewer merges, and the operator API's promotions."""

from __future__ import annotations

from workers.demo import GITHUB_REPO

from .conftest import READ_TOKEN, Stack, StackFactory


def _merge_when_open(s: Stack, build_id: int) -> tuple[dict[str, object], str]:
    staging = s.wait_record(build_id, "staging", "a pull request",
                            lambda r: r["state"] == "awaiting-merge" and r["pr_number"] is not None)
    pull = s.open_pull(staging["pr_number"])
    assert pull is not None, f"pull request #{staging['pr_number']} is open on GitHub"
    assert s.head() != pull.head_sha  # the bump waits on its branch, not on main
    return staging, s.github.merge(GITHUB_REPO, pull.number)


def test_pull_request_promotion_merged_then_verified(stack: StackFactory) -> None:
    s = stack()
    build = s.build(130, "shop")

    assert s.post(build).status_code == 202

    dev = s.wait_finished(130, "dev")
    assert dev["verdict"] == "succeeded"
    staging, merge_sha = _merge_when_open(s, 130)
    assert staging["promoted_from"] == dev["id"]

    record = s.wait_finished(130, "staging")
    assert record["verdict"] == "succeeded"
    assert record["commit_sha"] == merge_sha == s.head()
    assert {"pr_opened", "merged", "synced", "healthy"} <= set(record["timeline"])
    assert record["pr_url"]
    assert s.values_tag("shop", "staging") == "130"
    assert s.values_tag("shop", "dev") == "130"
    assert s.argocd.application("shop-staging")["status"]["sync"]["revision"] == merge_sha
    # on main: the dev bump, then the merged pull request (its branch commit and the merge commit)
    commits = s.commits_since(s.initial)
    assert commits[0][0] == merge_sha and commits[-1][0] == dev["commit_sha"]
    assert sum("Deployment-Id: " + record["id"] in message for _, message in commits) == 1
    assert sorted(s.tags(130)) == ["deployed-dev", "deployed-staging"]
    assert s.ado.properties(130)["gitops-bridge.staging.pr"] == record["pr_url"]
    assert s.commit_states(build, "staging") == ["pending", "succeeded"]


def test_promotion_refused_when_the_previous_environment_did_not_succeed_unless_forced(stack: StackFactory) -> None:
    s = stack()
    assert s.api("PUT", "/api/holds/shop/dev", json={"reason": "dev cluster upgrade"}).status_code == 201
    build = s.build(140, "shop")
    assert s.post(build).status_code == 202
    dev = s.wait_finished(140, "dev")
    assert dev["verdict"] == "held"
    assert s.record(140, "staging") is None  # `after: dev` starts only on success

    as_reader = s.api("POST", "/api/promotions", token=READ_TOKEN, json={"build_id": 140, "to": "staging"})
    assert as_reader.status_code == 403
    refused = s.api("POST", "/api/promotions", json={"build_id": 140, "to": "staging"})
    assert refused.status_code == 409
    assert "dev did not succeed" in refused.json()["error"] and "held" in refused.json()["error"]
    assert s.record(140, "staging") is None

    forced = s.api("POST", "/api/promotions", json={"build_id": 140, "to": "staging", "force": True, "by": "e2e"})
    assert forced.status_code == 202
    assert forced.json()["from"] == dev["id"]
    staging, merge_sha = _merge_when_open(s, 140)
    assert staging["id"] == forced.json()["deployment"]

    record = s.wait_finished(140, "staging")
    assert record["verdict"] == "succeeded"
    assert record["commit_sha"] == merge_sha
    assert record["details"]["force"] is True and record["details"]["promoted_by"] == "release-bot (e2e)"
    assert s.values_tag("shop", "staging") == "140"
    assert s.values_tag("shop", "dev") == "100"  # dev stayed held
    again = s.api("POST", "/api/promotions", json={"build_id": 140, "to": "staging", "force": True})
    assert again.status_code == 409
    assert sorted(s.tags(140)) == ["deploy-held-dev", "deployed-staging"]
