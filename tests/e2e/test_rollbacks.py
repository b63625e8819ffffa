"""Rollbacks end to end: the manual one (API), the refusals, the hold that stops newer builds, and release."""

from __future__ import annotations

from typing import Any

from workers.demo import GITHUB_REPO

from .conftest import READ_TOKEN, Stack, StackFactory


def _deployed(s: Stack, build_id: int, app: str) -> dict[str, Any]:
    assert s.post(s.build(build_id, app)).status_code == 202
    record = s.wait_finished(build_id, "dev")
    assert record["verdict"] == "succeeded", record
    return record


def _metric(s: Stack, series: str) -> float:
    """One series' value on /metrics (the registry is the test process's: compare before and after)."""
    for line in s.http.get(f"{s.url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} is not exported")


MANUAL = 'bridge_rollbacks_total{cause="manual",environment="dev"}'
AUTOMATIC = 'bridge_rollbacks_total{cause="automatic",environment="dev"}'
RESTORED = 'bridge_time_to_restore_seconds_count{environment="dev"}'
FAILED = 'bridge_rollbacks_failed_total{environment="dev"}'


def _wait_done(s: Stack, rollback_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        record: dict[str, Any] = s.api("GET", f"/api/deployments/{rollback_id}", token=READ_TOKEN).json()
        return record if record.get("state") == "done" else None

    return s.wait(f"rollback {rollback_id} done", probe)


def test_manual_rollback_restores_the_last_good_build_holds_and_reports_both(stack: StackFactory) -> None:
    s = stack()
    _deployed(s, 200, "cart")
    bad = _deployed(s, 201, "cart")
    manual, restored = _metric(s, MANUAL), _metric(s, RESTORED)

    answer = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev", "reason": "500s in cart"})

    assert answer.status_code == 202, answer.text
    rollback = answer.json()
    assert (rollback["kind"], rollback["build_id"], rollback["tag"]) == ("rollback", 200, "200")
    assert rollback["id"] not in (bad["id"],) and rollback["id"].startswith("rollback-")
    done = _wait_done(s, rollback["id"])
    assert done["verdict"] == "succeeded", done
    assert s.values_tag("cart", "dev") == "200"
    # one commit, format-exact, carrying the three trailers
    sha, message = s.commits_since(bad["commit_sha"])[0]
    assert len(s.commits_since(bad["commit_sha"])) == 1 and done["commit_sha"] == sha
    lines = message.splitlines()
    assert {"Rollback-Of: 201", "Build-Id: 200", f"Deployment-Id: {rollback['id']}"} <= set(lines)
    assert s.argocd.application("cart-dev")["status"]["sync"]["revision"] == sha
    # reported to both builds: the restored one gets the rollback's verdict, the undone one `rolled-back-dev`
    assert s.tags(200) == ["deployed-dev"]
    assert s.ado.properties(200)["gitops-bridge.dev.deployment"] == rollback["id"]
    assert sorted(s.tags(201)) == ["deployed-dev", "rolled-back-dev"]
    assert s.tag_patches(201, "rolled-back-dev") == 1
    assert _metric(s, MANUAL) == manual + 1
    assert _metric(s, RESTORED) == restored  # 201 had not failed: nothing was restored

    # the environment is held, naming the rollback and who asked (the write token's name)
    holds = s.api("GET", "/api/holds", token=READ_TOKEN).json()["items"]
    assert [(h["route"], h["environment"], h["rollback"], h["by"]) for h in holds] == [
        ("cart", "dev", rollback["id"], "release-bot")]
    assert "rolled back to build 200" in holds[0]["reason"]

    # a newer build does not undo the rollback: it ends `held`, and says why
    assert s.post(s.build(202, "cart")).status_code == 202
    held = s.wait_finished(202, "dev")
    assert held["verdict"] == "held" and "rolled back to build 200" in held["reason"]
    assert s.values_tag("cart", "dev") == "200"

    # release --deploy-latest lifts the hold and deploys the newest held build, over the rollback
    released = s.api("POST", "/api/releases", json={"route": "cart", "environment": "dev", "deploy_latest": True})
    assert released.status_code == 200, released.text
    assert released.json()["released"] is True and released.json()["deployment"].startswith(held["id"])
    again = _wait_done(s, released.json()["deployment"])
    assert (again["kind"], again["build_id"], again["verdict"]) == ("build", 202, "succeeded")
    assert s.values_tag("cart", "dev") == "202"
    assert s.api("GET", "/api/holds", token=READ_TOKEN).json()["items"] == []


def test_rollback_to_a_named_build_and_the_refusals(stack: StackFactory) -> None:
    s = stack()
    assert s.api("POST", "/api/rollbacks", token=READ_TOKEN,
                 json={"route": "cart", "environment": "dev"}).status_code == 403
    unknown = s.api("POST", "/api/rollbacks", json={"route": "nope", "environment": "dev"})
    assert unknown.status_code == 404 and "no route" in unknown.json()["error"]
    nothing = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev"})
    assert nothing.status_code == 409 and "nothing to roll back to" in nothing.json()["error"]

    _deployed(s, 210, "cart")
    only_one = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev"})
    assert only_one.status_code == 409 and "nothing succeeded" in only_one.json()["error"]
    _deployed(s, 211, "cart")
    _deployed(s, 212, "cart")
    never = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev", "to_build": 999})
    assert never.status_code == 409 and "never succeeded" in never.json()["error"]
    same = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev", "to_build": 212})
    assert same.status_code == 409 and "already" in same.json()["error"]
    bad = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev", "force": "yes"})
    assert bad.status_code == 400

    # a newer deployment still in flight: refused, unless forced
    s.argocd.script("cart-dev", frozen=True)
    assert s.post(s.build(213, "cart")).status_code == 202
    s.wait_record(213, "dev", "verifying", lambda r: r["state"] == "verifying")
    busy = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev", "to_build": 210})
    assert busy.status_code == 409 and "still in flight" in busy.json()["error"]
    s.argocd.script("cart-dev", frozen=False)
    s.wait_finished(213, "dev")

    named = s.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev", "to_build": 210})
    assert named.status_code == 202, named.text
    done = _wait_done(s, named.json()["id"])
    assert (done["verdict"], done["tag"], done["build_id"]) == ("succeeded", "210", 210)
    assert s.values_tag("cart", "dev") == "210"
    assert "rolled-back-dev" in s.tags(213)


def test_a_persons_revert_in_git_is_noticed_and_holds_the_environment(stack: StackFactory) -> None:
    s = stack()
    _deployed(s, 220, "cart")
    path = "helm/cart/values-dev.yaml"
    text = s.git("show", f"main:{path}") + "\n"
    assert 'tag: "220"' in text
    s.push_human_commit(path, text.replace('tag: "220"', 'tag: "219"'), "revert cart to 219: checkout broken")

    assert s.post(s.build(221, "cart")).status_code == 202
    held = s.wait_finished(221, "dev")

    assert held["verdict"] == "held", held
    assert "a person changed it" in held["reason"] and "'219'" in held["reason"]
    assert held["details"]["manual_change"]["found"] == {"image.tag": "219"}
    assert s.values_tag("cart", "dev") == "219"  # the person's value stays
    assert s.tags(221) == ["deploy-held-dev"]
    assert "a person changed it" in s.ado.properties(221)["gitops-bridge.dev.reason"]
    holds = s.api("GET", "/api/holds", token=READ_TOKEN).json()["items"]
    assert [(h["route"], h["environment"], h["cause"], h["by"]) for h in holds] == [
        ("cart", "dev", "manual-change", "gitops-bridge")]

    # the next build is held by the same hold, until someone releases it
    assert s.post(s.build(222, "cart")).status_code == 202
    assert s.wait_finished(222, "dev")["verdict"] == "held"
    assert s.api("DELETE", "/api/holds/cart/dev").json()["released"] is True
    _deployed(s, 223, "cart")  # released: the person's value was recorded, so the next build writes over it
    assert s.values_tag("cart", "dev") == "223"


def test_automatic_rollback_after_a_degraded_rollout_is_verified_healthy(stack: StackFactory) -> None:
    s = stack(environments={"search/dev": {"on_failure": "rollback"}})
    _deployed(s, 300, "search")
    automatic, restored = _metric(s, AUTOMATIC), _metric(s, RESTORED)
    s.argocd.script("search-dev", degrade=True)
    assert s.post(s.build(301, "search")).status_code == 202
    # Argo CD synced 301 (its health is set at the sync): the next sync, the rollback's, will be healthy
    s.wait_record(301, "dev", "synced", lambda r: "synced" in r["timeline"])
    s.argocd.script("search-dev", health_sequence=["Progressing", "Healthy"])
    failed = s.wait_finished(301, "dev")
    assert failed["verdict"] == "failed" and "Degraded" in failed["reason"]
    assert "rolled back to build 300" in failed["reason"]
    assert "rolled back to build 300" in s.ado.properties(301)["gitops-bridge.dev.reason"]

    rollback = _wait_done(s, f"rollback-auto-{failed['id']}")

    assert (rollback["kind"], rollback["verdict"], rollback["tag"]) == ("rollback", "succeeded", "300")
    assert rollback["details"]["cause"] == "automatic" and rollback["details"]["by"] == "gitops-bridge"
    assert s.values_tag("search", "dev") == "300"
    assert s.argocd.application("search-dev")["status"]["health"]["status"] == "Healthy"
    assert s.argocd.application("search-dev")["status"]["sync"]["revision"] == rollback["commit_sha"]
    commits = s.commits_since(failed["commit_sha"])
    assert len(commits) == 1 and "Rollback-Of: 301" in commits[0][1].splitlines()
    assert sorted(s.tags(301)) == ["deploy-failed-dev", "rolled-back-dev"]
    assert s.tags(300) == ["deployed-dev"]
    holds = s.api("GET", "/api/holds", token=READ_TOKEN).json()["items"]
    assert [(h["environment"], h["cause"], h["rollback"]) for h in holds] == [
        ("dev", "rollback-automatic", rollback["id"])]
    assert _metric(s, AUTOMATIC) == automatic + 1
    assert _metric(s, RESTORED) == restored + 1  # from the failure to the rollback healthy


def test_a_failing_rollback_ends_held_and_never_rolls_back_again(stack: StackFactory) -> None:
    s = stack(environments={"search/dev": {"on_failure": "rollback"}})
    _deployed(s, 310, "search")
    _deployed(s, 311, "search")
    failures = _metric(s, FAILED)
    s.argocd.script("search-dev", degrade=True)  # every rollout degrades from now on, the rollback's too
    assert s.post(s.build(312, "search")).status_code == 202
    failed = s.wait_finished(312, "dev")
    assert "rolled back to build 311" in failed["reason"]

    rollback = _wait_done(s, f"rollback-auto-{failed['id']}")

    assert rollback["verdict"] == "failed" and rollback["tag"] == "311"
    holds = s.api("GET", "/api/holds", token=READ_TOKEN).json()["items"]
    assert [(h["cause"], h["rollback"]) for h in holds] == [("rollback-failed", rollback["id"])]
    assert "failed" in holds[0]["reason"]
    # no second rollback: exactly one rollback record and one rollback commit
    rollbacks = [r for r in s.records() if r["kind"] == "rollback"]
    assert [r["id"] for r in rollbacks] == [rollback["id"]]
    assert [m for _, m in s.commits_since(failed["commit_sha"])] and len(s.commits_since(failed["commit_sha"])) == 1
    assert s.values_tag("search", "dev") == "311"
    assert _metric(s, FAILED) == failures + 1


def test_rollback_in_a_pull_request_environment_opens_the_rollback_pull_request(stack: StackFactory) -> None:
    s = stack()
    for build_id in (140, 141):
        assert s.post(s.build(build_id, "shop")).status_code == 202
        staging = s.wait_record(build_id, "staging", "a pull request",
                                lambda r: r["state"] == "awaiting-merge" and r["pr_number"] is not None)
        s.github.merge(GITHUB_REPO, staging["pr_number"])
        assert s.wait_finished(build_id, "staging")["verdict"] == "succeeded"
    before = s.head()

    answer = s.api("POST", "/api/rollbacks", json={"route": "shop", "environment": "staging"})

    assert answer.status_code == 202, answer.text
    rollback_id = answer.json()["id"]

    def pull_open() -> Any:
        record = s.api("GET", f"/api/deployments/{rollback_id}", token=READ_TOKEN).json()
        return record if record["state"] == "awaiting-merge" and record["pr_number"] else None

    record = s.wait("the rollback's pull request", pull_open)
    pull = s.open_pull(record["pr_number"])
    assert pull is not None and pull.title == "Roll back shop in staging to 140 (build 140)"
    assert s.head() == before and s.values_tag("shop", "staging") == "141"  # nothing on main before the merge
    merge = s.github.merge(GITHUB_REPO, pull.number)
    done = _wait_done(s, rollback_id)
    assert done["verdict"] == "succeeded" and done["commit_sha"] == merge
    assert s.values_tag("shop", "staging") == "140"
    messages = [m for _, m in s.commits_since(before)]
    assert sum(f"Deployment-Id: {rollback_id}" in m.splitlines() and "Rollback-Of: 141" in m.splitlines()
               for m in messages) == 1
    assert "rolled-back-staging" in s.tags(141)
