"""bridge.records' stored form (real Redis): compact records that every reader reads, legacy JSON records that still
read and update, and keys that only the legacy identity needs are not written for the others."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from bridge.queue import Keys
from bridge.records import DeploymentRecord, DeploymentStore, decode_record, encode_record

DB = 15
KEYS = Keys(prefix="rec")


def reference(dep: str = "1058-cart-dev-cebe86", *, organization: str | None = "contoso") -> DeploymentRecord:
    """A finished deployment of today's shape: push environment, one Argo CD application, succeeded, reported."""
    project = "2ebfd610-ab14-4002-8920-6e8379af62ba"
    record = DeploymentRecord(
        id=dep, build_key=f"{organization or 'dev.azure.com/contoso'}:{project}:1058", build_id=1058,
        build_number="2026.11.1058", build_url=f"https://dev.azure.com/contoso/{project}/_build/results?buildId=1058",
        build_finished="2026-11-27T06:43:52.583Z", build_queued="2026-11-27T06:41:02.101Z",
        organization_url="https://dev.azure.com/contoso/", organization=organization, project=project,
        definition="27", source_branch="refs/heads/main", source_commit=hashlib.sha1(b"src").hexdigest(),
        source_repository_id="cart-repo-id", source_repository_type="TfsGit", route="cart", environment="dev",
        repository="gitops", file="cart/values-dev.yaml", keys=["image.tag"], tag="1058",
        old_tags={"image.tag": "1038"}, argocd_app="cart-dev", argocd_url="https://argocd.example/applications/cart-dev",
        state="done", verdict="succeeded", reason="0394f17ba4 synced and Healthy",
        commit_sha=hashlib.sha1(b"commit").hexdigest(),
        delivered={"tags": "succeeded", "properties": "succeeded", "commit_status": "succeeded"},
    )
    for stamp in ("received", "queued", "started", "committed", "pushed", "sync_started", "synced", "healthy",
                  "finished", "reported"):
        record.stamp(stamp)
    return record


@pytest.fixture
async def store(redis_url: Callable[[int], str]) -> AsyncIterator[DeploymentStore]:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url(DB)))
    yield DeploymentStore(redis, KEYS, queue_name="rec:queue")
    await redis.aclose()


def test_the_stored_form_is_compact_and_reads_back_equal() -> None:
    record = reference()
    stored = encode_record(record)
    assert decode_record(stored) == record
    assert len(stored) < 450 < 1600 < len(record.model_dump_json())  # the reference record: ~350 B against ~1.6 KB
    rollback = record.model_copy(update={"kind": "rollback", "details": {"rollback_of": {"build_id": 7}},
                                         "pr_url": None, "state": "queued", "verdict": None})
    assert decode_record(encode_record(rollback)) == rollback  # defaults left out, others kept


async def test_every_reader_reads_records_in_both_forms(store: DeploymentStore) -> None:
    compact, legacy = reference("1-cart-dev-aaaaaa"), reference("2-cart-dev-aaaaaa")
    assert await store.create(compact)
    # a record as the versions before wrote it: plain JSON with every field (and its legacy state name)
    old = json.loads(legacy.model_dump_json())
    old["state"], old["verdict"] = "received", None
    await store.redis.set(KEYS.deployment(legacy.id), json.dumps(old))
    await store.redis.zadd(KEYS.deployments, {legacy.id: legacy.created + 1})

    got = await store.get(legacy.id)
    assert got is not None and got.state == "queued" and got.tag == "1058"
    assert await store.get(compact.id) == compact
    page, _ = await store.list(route="cart")
    assert [r.id for r in page] == [legacy.id, compact.id]

    # a legacy record is rewritten in the compact form by its next change, and reads the same
    updated = await store.update(legacy.id, tag="1059")
    raw = await store.redis.get(KEYS.deployment(legacy.id))
    assert raw[:1] == b"\x01" and decode_record(raw) == updated and updated.tag == "1059"


async def test_the_build_set_is_kept_only_for_the_legacy_identity(store: DeploymentStore) -> None:
    configured, legacy = reference("3-cart-dev-bbbbbb"), reference("4-cart-dev-bbbbbb", organization=None)
    assert await store.create(configured) and await store.create(legacy)
    assert not await store.redis.exists(KEYS.build_deployments(configured.build_key))
    assert [r.id for r in await store.for_build(legacy.build_key)] == [legacy.id]
