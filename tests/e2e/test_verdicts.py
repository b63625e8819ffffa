"""Webhook to report, once per verdict: succeeded, failed, timed-out, superseded, held, rejected."""

from __future__ import annotations

from workers.demo import GITHUB_REPO

from .conftest import READ_TOKEN, StackFactory, free_port


def test_succeeded_commits_once_verifies_and_reports(stack: StackFactory) -> None:
    s = stack()
    build = s.build(200, "cart")

    response = s.post(build)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert [d["environment"] for d in body["deployments"]] == ["dev"]
    dep_id = body["deployments"][0]["id"]
    record = s.wait_finished(200, "dev")
    assert record["id"] == dep_id
    assert (record["verdict"], record["state"], record["tag"]) == ("succeeded", "done", "200")
    assert {"received", "queued", "committed", "pushed", "finished", "reported"} <= set(record["timeline"])

    # the GitOps repository: exactly one new commit, ours, carrying the trailers, with the new tag
    commits = s.commits_since(s.initial)
    assert len(commits) == 1
    sha, message = commits[0]
    assert record["commit_sha"] == sha == s.head()
    assert "Build-Id: 200" in message.splitlines()
    assert f"Deployment-Id: {dep_id}" in message.splitlines()
    assert s.values_tag("cart", "dev") == "200"
    assert s.values_tag("cart", "staging") == "100"

    # Argo CD was asked about the application (and nothing else was touched)
    assert s.argocd.count("GET", "cart-dev") > 0
    assert s.argocd.count("GET", "shop-dev") == 0
    assert s.argocd.application("cart-dev")["status"]["sync"]["revision"] == sha

    # Azure DevOps: the verdict's tag only, properties, commit status pending → succeeded on the source commit
    assert s.tags(200) == ["deployed-dev"]
    props = s.ado.properties(200)
    assert props["gitops-bridge.dev.status"] == "succeeded"
    assert props["gitops-bridge.dev.commit"] == sha
    assert props["gitops-bridge.dev.tag"] == "200"
    assert props["gitops-bridge.dev.deployment"] == dep_id
    assert s.commit_states(build, "dev") == ["pending", "succeeded"]

    # the API serves the same record
    one = s.api("GET", f"/api/deployments/{dep_id}", token=READ_TOKEN)
    assert one.status_code == 200 and one.json()["verdict"] == "succeeded"


def test_degraded_rollout_fails_and_says_why(stack: StackFactory) -> None:
    s = stack()
    s.argocd.script("search-dev", degrade=True)
    build = s.build(301, "search")

    assert s.post(build).status_code == 202

    record = s.wait_finished(301, "dev")
    assert record["verdict"] == "failed"
    assert "Degraded" in record["reason"]
    # the commit was written and Argo CD synced it; the rollout is what failed
    assert [sha for sha, _ in s.commits_since(s.initial)] == [record["commit_sha"]]
    assert s.tags(301) == ["deploy-failed-dev"]
    assert s.ado.properties(301)["gitops-bridge.dev.status"] == "failed"
    assert "Degraded" in s.ado.properties(301)["gitops-bridge.dev.reason"]
    assert s.commit_states(build, "dev") == ["pending", "failed"]


def test_argocd_unreachable_times_out_and_reports_it(stack: StackFactory) -> None:
    closed = free_port()  # bound once, then released: nothing listens there
    s = stack(argocd_url=f"http://127.0.0.1:{closed}", deadline_seconds=1.0)
    build = s.build(220, "cart")

    assert s.post(build).status_code == 202

    record = s.wait_finished(220, "dev")
    assert record["verdict"] == "timed-out"
    assert "unreachable" in record["reason"]
    assert [sha for sha, _ in s.commits_since(s.initial)] == [record["commit_sha"]]  # the push itself happened
    assert s.tags(220) == ["deploy-timed-out-dev"]
    assert s.ado.properties(220)["gitops-bridge.dev.status"] == "timed-out"
    assert s.commit_states(build, "dev") == ["pending", "error"]
    assert s.argocd.requests == []  # the fake was never the one asked


def test_older_build_after_newer_is_superseded_and_never_written(stack: StackFactory) -> None:
    s = stack()
    newer, older = s.build(231, "cart"), s.build(230, "cart")

    assert s.post(newer).status_code == 202
    s.wait_record(231, "dev", "committed", lambda r: bool(r["commit_sha"]))
    assert s.post(older).status_code == 202

    superseded = s.wait_finished(230, "dev")
    succeeded = s.wait_finished(231, "dev")
    assert superseded["verdict"] == "superseded"
    assert "231" in superseded["reason"]
    assert superseded["commit_sha"] is None
    assert succeeded["verdict"] == "succeeded"
    commits = s.commits_since(s.initial)
    assert len(commits) == 1 and "Build-Id: 231" in commits[0][1]
    assert not any("Build-Id: 230" in message for _, message in commits)
    assert s.values_tag("cart", "dev") == "231"
    assert s.tags(230) == ["deploy-superseded-dev"]
    # the pending status is posted only if the start report ran before the verdict (it is never posted after it)
    assert s.commit_states(older, "dev") in (["pending", "notApplicable"], ["notApplicable"])


def test_hold_blocks_the_bump_and_release_lets_the_next_build_deploy(stack: StackFactory) -> None:
    s = stack()
    refused = s.api("PUT", "/api/holds/cart/dev", token=READ_TOKEN, json={"reason": "change freeze"})
    assert refused.status_code == 403  # a read token may not hold
    held = s.api("PUT", "/api/holds/cart/dev", json={"reason": "change freeze", "by": "e2e"})
    assert held.status_code == 201
    assert held.json()["reason"] == "change freeze"
    build = s.build(210, "cart")

    assert s.post(build).status_code == 202

    record = s.wait_finished(210, "dev")
    assert record["verdict"] == "held"
    assert "change freeze" in record["reason"]
    assert record["commit_sha"] is None
    assert s.head() == s.initial
    assert s.tags(210) == ["deploy-held-dev"]
    # the start report may run after the verdict (then it writes the verdict too): never pending at the end
    states = s.commit_states(build, "dev")
    assert states[-1] == "notApplicable" and set(states) <= {"pending", "notApplicable"}
    assert len(states) == len(set(states)), states  # reports of one deployment never run together

    released = s.api("DELETE", "/api/holds/cart/dev")
    assert released.status_code == 200 and released.json()["released"] is True
    assert s.post(s.build(211, "cart")).status_code == 202

    after = s.wait_finished(211, "dev")
    assert after["verdict"] == "succeeded"
    commits = s.commits_since(s.initial)
    assert len(commits) == 1 and "Build-Id: 211" in commits[0][1]
    assert s.values_tag("cart", "dev") == "211"
    assert s.tags(211) == ["deployed-dev"]


def test_pull_request_closed_unmerged_is_rejected(stack: StackFactory) -> None:
    s = stack()
    build = s.build(120, "shop")

    assert s.post(build).status_code == 202

    dev = s.wait_finished(120, "dev")
    assert dev["verdict"] == "succeeded"
    staging = s.wait_record(120, "staging", "a pull request", lambda r: r["state"] == "awaiting-merge"
                            and r["pr_number"] is not None)
    pull = s.open_pull(staging["pr_number"])
    assert pull is not None, "the pull request is open on GitHub"
    main_before = s.head()

    s.github.close(GITHUB_REPO, pull.number)

    record = s.wait_finished(120, "staging")
    assert record["verdict"] == "rejected"
    assert s.head() == main_before  # nothing reached main for staging
    assert s.values_tag("shop", "staging") == "100"
    assert sorted(s.tags(120)) == ["deploy-rejected-staging", "deployed-dev"]
    assert s.commit_states(build, "staging") == ["pending", "failed"]
    assert s.github.deliveries and s.github.deliveries[-1]["status"] < 300
