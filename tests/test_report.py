"""Report-back to Azure DevOps: tags, properties, commit statuses; idempotent re-runs, retries, failures counted."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from arq import Retry
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis_server import shared_redis_url

from bridge.metrics import REGISTRY
from bridge.queue import Keys
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.azure_devops import AzureDevOpsClient
from workers.fakes.azure_devops import FakeAzureDevOps
from workers.report import commit_status, property_patch, report_deployment, tag_changes

REDIS_URL = shared_redis_url(5)
ROUTING = {"repositories": {"platform": {"url": "file:///nowhere"}},
           "routes": [{"name": "chat", "match": {"project": "Chat", "definition": "1"},
                       "environments": [{"name": "prod", "repository": "platform", "file": "chat/values-prod.yaml"}]}]}
SHA = "6e12f614bd0c5a9e3b84d6f7bcb5d0a1c2e3f405"
REPO = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAzureDevOps]:
    with FakeAzureDevOps(pat="pat") as served:
        yield served


_next_build = iter(range(1000, 100000))


@pytest.fixture
async def ctx(fake: FakeAzureDevOps, redis_url: Any) -> AsyncIterator[dict[str, Any]]:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url(5)))
    settings = Settings(azure_devops={"organizations": [{"name": "org", "url": fake.org_url("org")}],
                                      "tokens": {"org": "pat"}})
    ado = AzureDevOpsClient.from_settings(settings)
    keys = Keys()
    yield {"settings": settings, "keys": keys, "redis": redis,
           "store": DeploymentStore(redis, keys, queue_name="t5:queue"), "ado": ado, "job_try": 1,
           "routing": parse_routing(ROUTING)}
    await ado.aclose()
    await redis.aclose()


async def make_record(ctx: dict[str, Any], fake: FakeAzureDevOps, *, repo_type: str = "TfsGit",
                      repo_id: str = REPO, **changes: Any) -> DeploymentRecord:
    build_id = next(_next_build)
    sha = f"{build_id:040x}"
    fake.add_build("org", "Chat", {"id": build_id, "sourceVersion": sha,
                                   "repository": {"id": repo_id, "type": repo_type, "name": "chat"}})
    record = DeploymentRecord(
        id=f"{build_id}-chat-prod-abc123", build_key=f"org:chat:{build_id}", build_id=build_id,
        organization="org", organization_url=fake.org_url("org"), project="Chat", source_commit=sha,
        source_repository_id=repo_id, source_repository_type=repo_type, route="chat", environment="prod",
        repository="platform", file="chat/values-prod.yaml", keys=["image.tag"], tag=f"{build_id}",
        argocd_app="chat-prod", argocd_url="https://argocd.example/applications/argocd/chat-prod", **changes,
    )
    record.stamp("received", "queued", "started")
    assert await ctx["store"].create(record)
    return record


def failed_count(kind: str) -> float:
    return REGISTRY.get_sample_value("bridge_reports_failed_total", {"kind": kind}) or 0.0


def test_tag_changes_keep_one_tag_of_the_closed_set() -> None:
    add, remove = tag_changes("prod", None)
    assert add == ["deploying-prod"] and "deployed-prod" in remove and "deploying-prod" not in remove
    add, remove = tag_changes("prod", "timed-out")
    assert add == ["deploy-timed-out-prod"] and len(remove) == 7 and "deploying-prod" in remove
    assert tag_changes("prod", "pushed")[0] == ["pushed-prod"]


def test_commit_status_only_for_azure_repos_and_mapped_states() -> None:
    base = dict(id="d", build_key="k", build_id=1, route="r", environment="prod", repository="p", file="f.yaml",
                keys=["image.tag"], source_commit=SHA, source_repository_id=REPO)
    assert commit_status(DeploymentRecord(**base, source_repository_type="GitHub")) is None
    rec = DeploymentRecord(**base, source_repository_type="TfsGit", verdict="timed-out", reason="x" * 400)
    status = commit_status(rec)
    assert status is not None and status["state"] == "error" and len(status["description"]) == 250
    assert status["context_name"] == "deploy/prod" and status["context_genre"] == "gitops-bridge"
    patch = {op["path"]: op["value"] for op in property_patch(rec)}
    assert patch["/gitops-bridge.prod.status"] == "timed-out" and patch["/gitops-bridge.prod.commit"] == ""


async def test_start_then_finish_reports_and_rerun_is_idempotent(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake)
    assert await report_deployment(ctx, rec.id, "started") == "reported"
    assert "deploying-prod" in fake.tags(rec.build_id)
    assert fake.properties(rec.build_id)["gitops-bridge.prod.status"] == "in-progress"
    assert [s["state"] for s in fake.statuses(REPO, rec.source_commit)][-1] == "pending"

    await ctx["store"].finish(rec.id, "succeeded", "synced and healthy", commit_sha="a" * 40)
    assert await report_deployment(ctx, rec.id, "finished") == "reported"
    tags = fake.tags(rec.build_id)
    assert "deployed-prod" in tags and "deploying-prod" not in tags
    props = fake.properties(rec.build_id)
    assert props["gitops-bridge.prod.status"] == "succeeded"
    assert props["gitops-bridge.prod.commit"] == "a" * 40
    assert props["gitops-bridge.prod.app"] == "chat-prod"
    assert props["gitops-bridge.prod.reason"] == "synced and healthy"
    assert props["gitops-bridge.prod.finished"]
    final = fake.statuses(REPO, rec.source_commit)[-1]
    assert final["state"] == "succeeded" and final["targetUrl"] == rec.argocd_url
    assert final["context"] == {"name": "deploy/prod", "genre": "gitops-bridge"}
    stored = await ctx["store"].get(rec.id)
    assert stored.verdict == "succeeded" and "reported" in stored.timeline and stored.state == "done"
    assert stored.delivered == {"tags": "succeeded", "properties": "succeeded", "commit_status": "succeeded"}

    before = len(fake.requests)
    assert await report_deployment(ctx, rec.id, "final") == "done"  # arq ran it twice: nothing left to deliver
    assert len(fake.requests) == before
    assert fake.tags(rec.build_id).count("deployed-prod") == 1


async def test_a_rerun_after_a_crash_sends_only_what_was_not_recorded(ctx: dict[str, Any],
                                                                     fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake)
    await ctx["store"].finish(rec.id, "failed", "Degraded")
    await ctx["store"].delivered(rec.id, "tags", "failed")  # a worker died after delivering the tags only
    posts = len(fake.requests_to("POST", f"/repositories/{REPO}"))
    assert await report_deployment(ctx, rec.id, "final") == "reported"
    assert not fake.requests_to("PATCH", f"/builds/{rec.build_id}/tags")  # not sent again
    assert len(fake.requests_to("POST", f"/repositories/{REPO}")) == posts + 1
    assert [s["state"] for s in fake.statuses(REPO, rec.source_commit)].count("failed") == 1


async def test_late_start_report_never_overwrites_the_verdict(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake)
    await ctx["store"].finish(rec.id, "failed", "values file missing")
    assert await report_deployment(ctx, rec.id, "finished") == "reported"
    assert await report_deployment(ctx, rec.id, "started") == "skipped"  # a retried start report, running late
    assert fake.statuses(REPO, rec.source_commit)[-1]["state"] == "failed"
    assert "deploying-prod" not in fake.tags(rec.build_id) and "deploy-failed-prod" in fake.tags(rec.build_id)
    assert fake.properties(rec.build_id)["gitops-bridge.prod.status"] == "failed"


async def test_no_commit_status_for_other_repository_types(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake, repo_type="GitHub", repo_id="octo/chat")
    await ctx["store"].finish(rec.id, "superseded", "build 2000 is newer")
    assert await report_deployment(ctx, rec.id, "finished") == "reported"
    assert "deploy-superseded-prod" in fake.tags(rec.build_id)
    assert not fake.requests_to("POST", "/repositories/octo")


async def test_without_token_reports_are_skipped(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake)
    disabled = AzureDevOpsClient.from_settings(Settings())
    seen = len(fake.requests)
    try:
        assert await report_deployment({**ctx, "ado": disabled}, rec.id, "started") == "skipped"
    finally:
        await disabled.aclose()
    assert len(fake.requests) == seen
    assert await report_deployment(ctx, "no-such-deployment", "finished") == "gone"


async def test_transient_failure_retries_until_it_lands(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake)
    await ctx["store"].finish(rec.id, "succeeded", "ok")
    fake.fail(429, method="PATCH", path=f"/builds/{rec.build_id}/tags", retry_after=120)
    with pytest.raises(Retry) as info:
        await report_deployment(ctx, rec.id, "final")
    assert (info.value.defer_score or 0) >= 120_000  # Retry-After honoured
    assert fake.properties(rec.build_id)["gitops-bridge.prod.status"] == "succeeded"  # other parts went on
    stored = await ctx["store"].get(rec.id)
    assert stored.state == "reporting" and "tags" not in stored.delivered

    fake.fail(503, method="PATCH", path=f"/builds/{rec.build_id}/tags", times=1)
    with pytest.raises(Retry):  # still within the report deadline: never a failure for good
        await report_deployment({**ctx, "job_try": 50}, rec.id, "final")
    assert await report_deployment(ctx, rec.id, "final") == "reported"
    assert "deployed-prod" in fake.tags(rec.build_id)
    assert (await ctx["store"].get(rec.id)).state == "done"


async def test_transient_failure_past_the_deadline_is_counted_once(ctx: dict[str, Any],
                                                                  fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake)
    await ctx["store"].finish(rec.id, "succeeded", "ok")
    fake.fail(503, method="PATCH", path=f"/builds/{rec.build_id}/tags", times=1)
    before = failed_count("tags")
    impatient = ctx["settings"].model_copy(update={"azure_devops": ctx["settings"].azure_devops.model_copy(
        update={"report_deadline_seconds": 0})})
    assert await report_deployment({**ctx, "settings": impatient}, rec.id, "final") == "failed"
    assert failed_count("tags") == before + 1
    stored = await ctx["store"].get(rec.id)
    assert stored.verdict == "succeeded" and stored.state == "done" and "reported" not in stored.timeline


async def test_permanent_failure_is_counted_without_retry(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake, repo_id="99999999-0000-0000-0000-000000000000")
    fake.remove_repository("99999999-0000-0000-0000-000000000000")  # a repository the token cannot see
    before = failed_count("commit_status")
    assert await report_deployment(ctx, rec.id, "started") == "failed"  # NotFound: no Retry raised
    assert failed_count("commit_status") == before + 1
    assert "deploying-prod" in fake.tags(rec.build_id)


async def test_record_without_organization_is_counted(ctx: dict[str, Any], fake: FakeAzureDevOps) -> None:
    rec = await make_record(ctx, fake)
    await ctx["store"].update(rec.id, organization="elsewhere")  # not configured: nowhere to send the report
    before, seen = failed_count("record"), len(fake.requests)
    assert await report_deployment(ctx, rec.id, "started") == "failed"
    assert failed_count("record") == before + 1 and len(fake.requests) == seen
    # A record from before organizations were configuration: found by the URL it stored, however spelled
    await ctx["store"].update(rec.id, organization=None, organization_url=fake.org_url("ORG").upper() + "/")
    assert await report_deployment(ctx, rec.id, "started") == "reported"
    assert "deploying-prod" in fake.tags(rec.build_id)
