"""A worker killed (SIGKILL) while its deployment waits on Argo CD: the next worker resumes and reports once."""

from __future__ import annotations

from .conftest import KEY_PREFIX, StackFactory


def test_worker_killed_mid_wait_resumes_and_reports_once(stack: StackFactory) -> None:
    s = stack(worker=False, reconcile=False)  # the web app in-process; workers are real `gitops-bridge worker`s
    first = s.spawn_worker("worker-1")
    build = s.build(260, "cart")

    assert s.post(build).status_code == 202
    # Argo CD's controller is not running: the deployment stays in verification, with its start reported
    waiting = s.wait_record(260, "dev", "verifying, Argo CD asked, start reported",
                            lambda r: r["state"] == "verifying" and s.argocd.count("GET", "cart-dev") > 0
                            and s.commit_states(build, "dev") == ["pending"])
    ours = waiting["commit_sha"]
    assert ours == s.head()
    assert s.property_patches(260, "dev", "in-progress") >= 1

    first.kill_between_jobs([f"{KEY_PREFIX}:lock:argocd-watch:cart-dev"])
    assert first.process is not None and first.process.returncode == -9
    assert s.record(260, "dev")["verdict"] is None  # type: ignore[index]

    s.spawn_worker("worker-2")
    s.start_argocd_controller()

    record = s.wait_finished(260, "dev")
    assert record["verdict"] == "succeeded"
    assert record["commit_sha"] == ours
    assert [sha for sha, _ in s.commits_since(s.initial)] == [ours]  # the new worker wrote nothing again
    assert s.argocd.application("cart-dev")["status"]["sync"]["revision"] == ours
    # exactly one verdict reported: one tag change to deployed-dev, one succeeded status property, one status
    assert s.tags(260) == ["deployed-dev"]
    assert s.tag_patches(260, "deployed-dev") == 1
    assert s.property_patches(260, "dev", "succeeded") == 1
    assert s.commit_states(build, "dev") == ["pending", "succeeded"]
    assert "resumed watching 1 Argo CD application" in s.workers[1].output()
