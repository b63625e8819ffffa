"""Estates: one environment on many Argo CD applications (a list, a label selector, apps that appear late).

Through a burst arq worker against the Argo CD fake following a real bare repo, Redis db 4 only (as test_verify).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gitops_remote import Repo
from test_verify import Harness, scenario

from bridge.queue import VERIFY_DEPLOYMENT
from bridge.records import DeploymentRecord
from bridge.routing import RoutingConfig, parse_routing
from bridge.settings import Settings
from workers.argocd import ArgoCDClient
from workers.fakes.argocd import FAKE_TOKEN, ArgoCDFake

FILE = "api/values.yaml"
ESTATES: dict[str, dict[str, Any]] = {  # env name → argocd block (every env deploys the same file)
    "three": {"apps": ["api-eu", "api-us", "api-ap"], "project": "team-a"},
    "labels": {"selector": "app.kubernetes.io/name=api,env=dev", "project": "team-a", "discovery_seconds": 1.5},
    "late": {"selector": "app.kubernetes.io/name=api,env=dev", "project": "team-a", "discovery_seconds": 4},
    "nothing": {"selector": "app.kubernetes.io/name=nope", "project": "team-a", "discovery_seconds": 0.5},
    "named-late": {"apps": ["api-eu", "api-new"], "project": "team-a", "discovery_seconds": 4},
    "named-missing": {"apps": ["api-eu", "api-ghost"], "project": "team-a", "discovery_seconds": 0.5},
    "mixed": {"app": "api-eu", "selector": "env=dev", "project": "team-a", "discovery_seconds": 0.5, "min_apps": 3},
    "too-few": {"selector": "app.kubernetes.io/name=api,env=dev", "project": "team-a", "discovery_seconds": 0.5,
                "min_apps": 5},
    "canary-wait": {"app": "api-eu", "project": "team-a"},
    "canary-ok": {"app": "api-eu", "project": "team-a", "suspended": "succeed"},
    "canary-fail": {"app": "api-eu", "project": "team-a", "suspended": "fail"},
    "canary-estate": {"apps": ["api-eu", "api-us"], "project": "team-a", "suspended": "succeed",
                      "discovery_seconds": 0},
    "short": {"apps": ["api-eu", "api-us"], "project": "team-a", "discovery_seconds": 0},
    "window-wait": {"app": "api-eu", "project": "team-a"},
    "window-fail": {"app": "api-eu", "project": "team-a", "sync_window": "fail"},
    "window-opens": {"app": "api-eu", "project": "team-a"},
    "inst-eu": {"app": "api-eu", "project": "team-a", "instance": "eu"},
    "inst-us": {"app": "api-eu", "project": "team-a", "instance": "us"},
}
SHORT_DEADLINE = ("short", "canary-wait", "window-wait")
DEV = {"app.kubernetes.io/name": "api", "env": "dev"}


def estates_routing() -> RoutingConfig:
    envs = [{"name": name, "repository": "gitops", "file": FILE, "keys": [f"tags.{name}"], "argocd": argo,
             "deadline_seconds": 20,
             "degraded_grace_seconds": 0} for name, argo in ESTATES.items()]
    for env in envs:
        if env["name"] in SHORT_DEADLINE:
            env["deadline_seconds"] = 2
    return parse_routing({"repositories": {"gitops": {"url": "https://example.com/gitops.git"}},
                          "routes": [{"name": "svc", "match": {"project": "p", "definition": "d"},
                                      "environments": envs}]})


class EstateHarness(Harness):
    def new_ctx(self, argocd_url: str | None = None) -> dict[str, Any]:
        return {**super().new_ctx(argocd_url), "routing": estates_routing()}

    async def deployment(self, env: str, sha: str, n: int = 1) -> str:
        dep = f"{n}-svc-{env}"
        record = DeploymentRecord(id=dep, build_key=f"org:p:{n}", build_id=n, route="svc", environment=env,
                                  repository="gitops", file=FILE, keys=["image.tag"], commit_sha=sha,
                                  state="verifying")
        record.stamp("pushed")
        await self.store.create(record)
        await self.redis.enqueue_job(VERIFY_DEPLOYMENT, dep, _job_id=f"verify:{dep}",
                                     _queue_name=self.settings.queue_name)
        return dep


def make_repo(tmp_path: Path) -> Repo:
    r = Repo(tmp_path)
    r.commit({FILE: "image:\n  tag: '1'\n", "README.md": "gitops\n"}, "initial")
    return r


def make_fake(repo: Repo) -> Iterator[ArgoCDFake]:
    """Three regional apps of `api` (env=dev) and one `web-dev`, every one Synced and Healthy at the head."""
    f = ArgoCDFake(repo.bare)
    for region in ("eu", "us", "ap"):
        f.add_app(f"api-{region}", FILE, project="team-a", labels={**DEV, "region": region})
    f.add_app("web-dev", "README.md", project="team-a", labels={"app.kubernetes.io/name": "web", "env": "dev"})
    with f.serve(reconcile_period=0.05):
        yield f


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path)


@pytest.fixture
def fake(repo: Repo) -> Iterator[ArgoCDFake]:
    yield from make_fake(repo)


def run(repo: Repo, fake: ArgoCDFake, env: str, body_extra: Any = None) -> DeploymentRecord:
    sha = repo.commit({FILE: "image:\n  tag: '2'\n"}, "api → 2")
    out: list[DeploymentRecord] = []

    async def body(h: Harness) -> None:
        dep = await h.deployment(env, sha)
        extra = asyncio.create_task(body_extra(h)) if body_extra else None
        await h.run()
        if extra:
            await extra
        out.append(await h.record(dep))
        assert not await h.redis.hlen(h.keys.watched_apps)  # every watcher retired

    scenario(repo, fake, body, harness=EstateHarness)
    return out[0]


def states(rec: DeploymentRecord) -> dict[str, str]:
    return {name: a["state"] for name, a in rec.details["argocd"]["apps"].items()}


def test_three_apps_all_healthy_succeeds_with_each_state(repo: Repo, fake: ArgoCDFake) -> None:
    rec = run(repo, fake, "three")
    assert rec.verdict == "succeeded", rec.reason
    assert "all 3 applications" in (rec.reason or "")
    assert states(rec) == {"api-eu": "succeeded", "api-us": "succeeded", "api-ap": "succeeded"}
    assert {"sync_started", "synced", "healthy"} <= set(rec.timeline)
    assert rec.argocd_app == "team-a/api-eu, api-us, api-ap"


def test_three_apps_one_degraded_fails_naming_it(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-us", degrade=True)
    rec = run(repo, fake, "three")
    assert rec.verdict == "failed", rec.reason
    assert (rec.reason or "").startswith("api-us: ") and "Degraded" in (rec.reason or "")
    assert states(rec)["api-us"] == "failed"


def test_selector_resolves_to_the_matching_apps(repo: Repo, fake: ArgoCDFake) -> None:
    rec = run(repo, fake, "labels")
    assert rec.verdict == "succeeded", rec.reason
    assert sorted(states(rec)) == ["api-ap", "api-eu", "api-us"]  # web-dev does not match
    assert rec.argocd_url == f"{fake.url}/applications?labels=app.kubernetes.io%2Fname%3Dapi%2Cenv%3Ddev"
    lists = [r for r in fake.requests if r.path == "/api/v1/applications"]
    assert lists and all(r.query == {"selector": ESTATES["labels"]["selector"], "projects": "team-a"} for r in lists)


def test_app_generated_after_the_push_joins_the_wait(repo: Repo, fake: ArgoCDFake) -> None:
    async def generate(h: Harness) -> None:
        await asyncio.sleep(1.0)  # the ApplicationSet adds a cluster after our push
        fake.add_app("api-sa", FILE, project="team-a", labels={**DEV, "region": "sa"}, fresh=True,
                     health_sequence=["Progressing", "Progressing", "Healthy"])

    rec = run(repo, fake, "late", generate)
    assert rec.verdict == "succeeded", rec.reason
    assert states(rec) == {n: "succeeded" for n in ("api-eu", "api-us", "api-ap", "api-sa")}
    assert fake.application("api-sa")["status"]["health"]["status"] == "Healthy"


def test_late_app_that_degrades_fails_the_deployment(repo: Repo, fake: ArgoCDFake) -> None:
    async def generate(h: Harness) -> None:
        await asyncio.sleep(0.5)
        fake.add_app("api-sa", FILE, project="team-a", labels={**DEV, "region": "sa"}, fresh=True, degrade=True)

    rec = run(repo, fake, "late", generate)
    assert rec.verdict == "failed", rec.reason
    assert (rec.reason or "").startswith("api-sa: ")


def test_selector_matching_nothing_fails_after_the_window(repo: Repo, fake: ArgoCDFake) -> None:
    rec = run(repo, fake, "nothing")
    assert rec.verdict == "failed", rec.reason
    assert "0 Argo CD application(s) found" in (rec.reason or "") and "at least 1" in (rec.reason or "")
    assert "succeeded" not in rec.timeline and "healthy" not in rec.timeline


def test_fewer_than_min_apps_fails(repo: Repo, fake: ArgoCDFake) -> None:
    rec = run(repo, fake, "too-few")
    assert rec.verdict == "failed", rec.reason
    assert "only 3" in (rec.reason or "") and "at least 5" in (rec.reason or "")


def test_app_and_selector_combine(repo: Repo, fake: ArgoCDFake) -> None:
    rec = run(repo, fake, "mixed")
    assert rec.verdict == "succeeded", rec.reason
    # api-eu by name, the four env=dev apps by label (web-dev's file did not change: a no-op, fine)
    assert sorted(states(rec)) == ["api-ap", "api-eu", "api-us", "web-dev"]


def test_named_app_created_within_the_window_is_waited_for(repo: Repo, fake: ArgoCDFake) -> None:
    async def create(h: Harness) -> None:
        await asyncio.sleep(1.0)
        fake.add_app("api-new", FILE, project="team-a", fresh=True)

    rec = run(repo, fake, "named-late", create)
    assert rec.verdict == "succeeded", rec.reason
    assert states(rec) == {"api-eu": "succeeded", "api-new": "succeeded"}


def test_named_app_missing_after_the_window_fails_naming_it(repo: Repo, fake: ArgoCDFake) -> None:
    rec = run(repo, fake, "named-missing")
    assert rec.verdict == "failed", rec.reason
    assert (rec.reason or "").startswith("api-ghost: the application does not exist"), rec.reason


def test_timeout_lists_the_apps_still_waiting(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-us", frozen=True)
    rec = run(repo, fake, "short")
    assert rec.verdict == "timed-out", rec.reason
    assert "still waiting for 1 of 2 applications: api-us (" in (rec.reason or ""), rec.reason
    assert states(rec) == {"api-eu": "succeeded", "api-us": "waiting"}


def test_one_read_per_app_per_tick_shared_by_deployments(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", health_sequence=["Progressing", "Progressing", "Healthy"])
    sha = repo.commit({FILE: "image:\n  tag: '2'\n"}, "api → 2")

    async def body(h: Harness) -> None:
        deps = [await h.deployment(env, sha, n) for n in range(1, 4) for env in ("three", "labels")]
        await h.run()
        for dep in deps:
            assert (await h.record(dep)).verdict == "succeeded"
        polls = sum(1 for t in h.ticks if t in ("waiting", "done", "failed", "unavailable", "missing"))
        reads = sum(fake.count("GET", f"api-{r}") for r in ("eu", "us", "ap"))
        assert reads <= polls  # six deployments, yet never more than one read per app per tick

    scenario(repo, fake, body, harness=EstateHarness)


# -- Argo Rollouts: Suspended (a paused canary) under each policy, and an aborted rollout ---------------------------


def test_paused_canary_waits_and_times_out_naming_the_step(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", rollout="paused", canary_step=1)
    rec = run(repo, fake, "canary-wait")
    assert rec.verdict == "timed-out", rec.reason
    assert "Rollout api-eu/api-eu (paused at step 2 of 5 of the canary (CanaryPauseStep): Rollout is paused)" \
        in (rec.reason or ""), rec.reason


def test_paused_canary_is_enough_when_the_environment_says_succeed(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", rollout="paused", canary_step=3)
    rec = run(repo, fake, "canary-ok")
    assert rec.verdict == "succeeded", rec.reason
    assert "Suspended (paused rollout) accepted" in (rec.reason or "") and "step 4 of 5" in (rec.reason or "")


def test_paused_canary_fails_when_the_environment_says_fail(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", rollout="paused")
    rec = run(repo, fake, "canary-fail")
    assert rec.verdict == "failed", rec.reason
    assert "is Suspended: Rollout api-eu/api-eu (paused at step 2 of 5" in (rec.reason or ""), rec.reason


def test_paused_canaries_in_an_estate(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", rollout="paused")
    fake.script("api-us", rollout="healthy")
    rec = run(repo, fake, "canary-estate")
    assert rec.verdict == "succeeded", rec.reason
    assert states(rec) == {"api-eu": "succeeded", "api-us": "succeeded"}
    assert "accepted" in rec.details["argocd"]["apps"]["api-eu"]["reason"]


def test_aborted_rollout_fails_naming_app_and_rollout(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-us", rollout="aborted")
    rec = run(repo, fake, "three")
    assert rec.verdict == "failed", rec.reason
    assert (rec.reason or "").startswith("api-us: ")
    aborted = "Rollout api-us/api-us: Degraded (RolloutAborted: Rollout aborted update to revision 2)"
    assert aborted in (rec.reason or ""), rec.reason


# -- sync windows and disabled auto-sync ----------------------------------------------------------------------------


def test_sync_window_on_a_manual_app_waits_and_says_so(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", auto_sync=False, sync_window=True)
    rec = run(repo, fake, "window-wait")
    assert rec.verdict == "timed-out", rec.reason
    assert (rec.reason or "").startswith("Argo CD refused to sync api-eu: cannot sync: blocked by sync window: ")


def test_sync_window_fails_when_the_environment_says_fail(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", auto_sync=False, sync_window=True)
    rec = run(repo, fake, "window-fail")
    assert rec.verdict == "failed", rec.reason
    assert "cannot sync: blocked by sync window" in (rec.reason or "")
    assert "argocd.sync_window: fail" in (rec.reason or "")


def test_sync_window_on_an_auto_sync_app_names_the_window(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", sync_window=True)  # auto-sync simply stays OutOfSync
    rec = run(repo, fake, "window-wait")
    assert rec.verdict == "timed-out", rec.reason
    assert (rec.reason or "").startswith("auto-sync of api-eu is held by deny window '0 22 * * *' for 10h"), rec.reason


def test_deployment_proceeds_when_the_window_opens(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", auto_sync=False, sync_window=True)

    async def open_window(h: Harness) -> None:
        await asyncio.sleep(1.0)
        fake.script("api-eu", sync_window=False)

    rec = run(repo, fake, "window-opens", open_window)
    assert rec.verdict == "succeeded", rec.reason


def test_manual_app_the_bridge_may_not_sync_fails_in_plain_words(repo: Repo, fake: ArgoCDFake) -> None:
    fake.script("api-eu", auto_sync=False, sync_denied=True)
    rec = run(repo, fake, "window-wait")
    assert rec.verdict == "failed", rec.reason
    assert "auto-sync is off for api-eu and the bridge's Argo CD account may not sync it" in (rec.reason or "")


# -- several Argo CD instances --------------------------------------------------------------------------------------


def test_two_argocd_instances_each_environment_reads_its_own(repo: Repo, fake: ArgoCDFake) -> None:
    other = ArgoCDFake(repo.bare)  # another region's Argo CD, with an application of the same name
    other.add_app("api-eu", FILE, project="team-a")
    other.script("api-eu", degrade=True)
    sha = repo.commit({FILE: "image:\n  tag: '2'\n"}, "api → 2")

    async def body(h: Harness) -> None:
        h.settings = Settings(argocd={"instances": [{"name": "eu", "url": fake.url}, {"name": "us", "url": other.url}],
                                      "tokens": {"eu": FAKE_TOKEN, "us": FAKE_TOKEN}, "poll_seconds": 0.1,
                                      "refresh_timeout_seconds": 0.5, "request_timeout_seconds": 3},
                              queue_name=h.settings.queue_name, key_prefix=h.settings.key_prefix)
        await h.ctx["argocd"].aclose()
        client = ArgoCDClient.from_settings(h.settings)
        assert client is not None and client.default_name is None  # two instances, no default
        h.ctx = {**h.new_ctx(), "argocd": client}
        eu, us = await h.deployment("inst-eu", sha, 1), await h.deployment("inst-us", sha, 2)
        await h.run()
        rec_eu, rec_us = await h.record(eu), await h.record(us)
        assert rec_eu.verdict == "succeeded", rec_eu.reason
        assert rec_us.verdict == "failed" and "Degraded" in (rec_us.reason or "")
        assert rec_eu.argocd_url == f"{fake.url}/applications/api-eu"
        assert rec_us.argocd_url == f"{other.url}/applications/api-eu"
        assert fake.count("GET", "api-eu") > 0 and other.count("GET", "api-eu") > 0

    with other.serve(reconcile_period=0.05):
        scenario(repo, fake, body, harness=EstateHarness)


def test_instances_from_settings() -> None:
    one = ArgoCDClient.from_settings(Settings(argocd={"url": "https://a.example", "token": FAKE_TOKEN}))
    assert one is not None and one.instance(None) is one and one.instance("default") is one
    assert one.instance("eu") is None
    two = ArgoCDClient.from_settings(Settings(argocd={
        "url": "https://a.example", "instances": [{"name": "eu", "url": "https://eu.example"}]}))
    assert two is not None and two.instance(None) is two and two.base_url == "https://a.example"
    eu = two.instance("eu")
    assert eu is not None and eu.base_url == "https://eu.example"
    only = ArgoCDClient.from_settings(Settings(argocd={"instances": [{"name": "eu", "url": "https://eu.example"}]}))
    assert only is not None and only.instance(None) is only and only.name == "eu"
    for client in (one, two, only):
        asyncio.run(client.aclose())


def test_config_check_names_unknown_and_ambiguous_instances(tmp_path: Path) -> None:
    from bridge.config_check import _argocd_named_without_url
    settings = Settings(argocd={"instances": [{"name": "eu", "url": "https://eu"}, {"name": "us", "url": "https://us"}]})
    found = _argocd_named_without_url(settings, parse_routing({
        "repositories": {"g": {"url": "https://x/g.git"}},
        "routes": [{"name": "r", "match": {"project": "p", "definition": "d"}, "environments": [
            {"name": "a", "repository": "g", "file": "a.yaml", "argocd": {"app": "a", "instance": "ap"}},
            {"name": "b", "repository": "g", "file": "b.yaml", "argocd": {"app": "b"}},
            {"name": "c", "repository": "g", "file": "c.yaml", "argocd": {"app": "c", "instance": "us"}}]}]}))
    assert len(found) == 2
    assert "environments.a.argocd.instance: 'ap' is not a configured Argo CD instance (BRIDGE_ARGOCD__INSTANCES: " \
        "eu, us)" in found[0]
    assert "environments.b.argocd: several Argo CD instances are configured (eu, us); name one" in found[1]


# -- pure parts: the routing block, the combined verdict, the describe view ---------------------------------------


@pytest.mark.parametrize(("block", "problem"), [
    ({"project": "p"}, "name the application: `app`, `apps` or `selector`"),
    ({"apps": ["a", "a"]}, "duplicate application"),
    ({"apps": ["Not_A_Name"]}, "is not an application name"),
    ({"selector": " "}, "non-empty label selector"),
    ({"selector": "a=b,,c=d"}, "non-empty label selector"),
    ({"app": "a", "min_apps": 0}, "greater than or equal to 1"),
    ({"app": "a", "suspended": "maybe"}, "'wait', 'succeed' or 'fail'"),
])
def test_argocd_block_errors_name_the_field(block: dict[str, Any], problem: str) -> None:
    from bridge.errors import ConfigError
    raw = {"repositories": {"g": {"url": "https://x/g.git"}}, "routes": [{
        "name": "r", "match": {"project": "p", "definition": "d"},
        "environments": [{"name": "dev", "repository": "g", "file": "v.yaml", "argocd": block}]}]}
    with pytest.raises(ConfigError) as err:
        parse_routing(raw)
    assert "environments[0].argocd" in str(err.value) and problem in str(err.value)


def test_argocd_block_forms() -> None:
    from bridge.routing import ArgoApp
    one = ArgoApp(app="web")
    assert (one.names, one.is_estate, one.window) == (["web"], False, 0.0)
    many = ArgoApp(app="a", apps=["b"], selector="env in (dev,qa),tier")
    assert (many.names, many.is_estate, many.window) == (["a", "b"], True, 60.0)
    assert ArgoApp(selector="env=dev", discovery_seconds=5).window == 5


def test_combine_never_succeeds_on_an_empty_or_open_set() -> None:
    from workers.verdict import AppState, Failed, Succeeded, Waiting, combine
    ok, wait = AppState("succeeded", "fine"), AppState("waiting", "sync running")
    sha = "a" * 40
    assert isinstance(combine({}, target=sha, discovering=True, min_apps=1), Waiting)
    assert isinstance(combine({}, target=sha, discovering=False, min_apps=1), Failed)
    assert isinstance(combine({"a": ok}, target=sha, discovering=True, min_apps=1), Waiting)
    assert isinstance(combine({"a": ok}, target=sha, discovering=False, min_apps=1), Succeeded)
    assert isinstance(combine({"a": ok}, target=sha, discovering=False, min_apps=2), Failed)
    failed = combine({"a": wait, "b": AppState("failed", "Degraded")}, target=sha, discovering=True, min_apps=1)
    assert isinstance(failed, Failed) and failed.reason == "b: Degraded"
    waiting = combine({"a": ok, "b": wait}, target=sha, discovering=False, min_apps=1)
    assert isinstance(waiting, Waiting) and "b (sync running)" in waiting.reason


def test_describe_shows_each_application() -> None:
    from bridge.output import deployment_detail
    text = deployment_detail({"id": "1-svc-dev", "details": {"argocd": {"apps": {
        "api-us": {"state": "failed", "reason": "Degraded"}, "api-eu": {"state": "succeeded", "reason": "ok"}}}}},
        wide=False)
    assert "Argo CD applications:" in text
    assert [line.split() for line in text.splitlines() if line.startswith("  api-")] == [
        ["api-eu", "succeeded", "ok"], ["api-us", "failed", "Degraded"]]
