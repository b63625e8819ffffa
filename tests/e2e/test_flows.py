"""Webhook to report around the edges: a newer commit landing first, a no-op commit, the YAML pipeline event."""

from __future__ import annotations

import subprocess

from .conftest import StackFactory, run_state_changed, source_sha


def test_newer_commit_landing_first_still_verifies_ours(stack: StackFactory) -> None:
    s = stack(reconcile=False)
    # Argo CD sees nothing until the human commit is in: refreshes hang, the controller is not running yet.
    s.argocd.script("cart-dev", hang_refresh=True)
    build = s.build(240, "cart")

    assert s.post(build).status_code == 202
    ours = s.wait_record(240, "dev", "pushed and verifying",
                         lambda r: r["state"] == "verifying" and bool(r["commit_sha"]))["commit_sha"]
    assert ours == s.head()
    human = s.push_human_commit("docs/RUNBOOK.md", "Call the platform team.\n", "docs: add a runbook")
    s.argocd.script("cart-dev", hang_refresh=False)
    s.start_argocd_controller()

    record = s.wait_finished(240, "dev")
    assert record["verdict"] == "succeeded"
    assert record["commit_sha"] == ours  # the record keeps our commit ...
    app = s.argocd.application("cart-dev")
    assert app["status"]["sync"]["revision"] == human  # ... while Argo CD deployed the newer one that contains it
    deployed = [entry["revision"] for entry in app["status"]["history"]]
    assert deployed[-1] == human and ours not in deployed  # ours alone was never what Argo CD deployed
    assert subprocess.run(["git", "--git-dir", str(s.bare), "merge-base", "--is-ancestor", ours, human]).returncode == 0
    assert [sha for sha, _ in s.commits_since(s.initial)] == [human, ours]
    assert s.tags(240) == ["deployed-dev"]
    assert s.commit_states(build, "dev") == ["pending", "succeeded"]


def test_same_tag_again_makes_no_commit_and_is_still_verified(stack: StackFactory) -> None:
    s = stack()
    assert s.values_tag("cart", "dev") == "100"
    build = s.build(100, "cart")  # renders tag "100": what the values file already says

    assert s.post(build).status_code == 202

    record = s.wait_finished(100, "dev")
    assert record["verdict"] == "succeeded"
    assert record["tag"] == "100"
    assert s.head() == s.initial  # no commit
    assert record["commit_sha"] == s.initial  # verified against the commit that has the value
    assert s.argocd.count("GET", "cart-dev") > 0
    assert s.tags(100) == ["deployed-dev"]
    assert s.ado.properties(100)["gitops-bridge.dev.commit"] == s.initial
    # verification is quick here, so the start report may run after the verdict (it then writes the verdict)
    states = s.commit_states(build, "dev")
    assert states[-1] == "succeeded" and set(states) <= {"pending", "succeeded"}
    assert len(states) == len(set(states)), states  # reports of one deployment never run together


def test_run_state_changed_event_is_looked_up_and_deployed(stack: StackFactory) -> None:
    s = stack()
    build = s.build(250, "cart")
    event = run_state_changed(s, build)
    assert "sourceBranch" not in str(event) and build["sourceVersion"] not in str(event)

    response = s.post_event(event)

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    record = s.wait_finished(250, "dev")
    assert record["verdict"] == "succeeded"
    # the worker looked the build up in Azure DevOps for what the event lacks
    assert s.ado.requests_to("GET", "/_apis/build/builds/250")
    assert record["source_branch"] == "refs/heads/main"
    assert record["source_commit"] == source_sha(250)
    assert record["source_repository_type"] == "TfsGit"
    commits = s.commits_since(s.initial)
    assert len(commits) == 1 and "Build-Id: 250" in commits[0][1]
    assert f"Source-Commit: {source_sha(250)}" in commits[0][1]
    assert s.values_tag("cart", "dev") == "250"
    assert s.tags(250) == ["deployed-dev"]
    assert s.commit_states(build, "dev") == ["pending", "succeeded"]
