"""bridge.records' stored form (real Redis): compact records that every reader reads, legacy JSON records that still
read and update, and keys that only the legacy identity needs are not written for the others."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis_server import PrivateRedis

from bridge.queue import Keys
from bridge.records import DeploymentRecord, DeploymentStore, Effect, JobSpec, Restored, decode_record, encode_record

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


async def test_a_batch_writes_what_one_by_one_writes_in_one_command_per_shared_key(private_redis: PrivateRedis) -> None:
    """`finish_many` coalesces a batch's effects (`coalesce`): one queue write, one push per pointer list, one read of
    the restore clock, one index move per state. The outcome is the one of finishing the records one after another."""
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(private_redis.url))
    outcomes = []
    for prefix, batch in (("one", False), ("many", True)):
        keys = Keys(prefix=prefix)
        st = DeploymentStore(redis, keys, queue_name=f"{prefix}:queue")
        ids = [f"{n}-cart-dev-cccccc" for n in range(30)]
        for dep in ids:
            assert await st.create(reference(dep).model_copy(update={"state": "verifying", "verdict": None}))
        await redis.set(keys.failing_since("cart", "dev"), "1000.0")
        clocks: list[Restored] = []

        def then(record: DeploymentRecord, st: DeploymentStore = st, clocks: list[Restored] = clocks) -> list[Effect]:
            clocks.append(st.restored_effect(record))
            return [JobSpec("report_deployment", (record.id, "final"), f"report:{record.id}:final"),
                    st.last_succeeded_effect(record), clocks[-1]]

        await redis.config_resetstat()
        if batch:
            assert len(await st.finish_many(dict.fromkeys(ids, "healthy"), "succeeded", then=then)) == 30
        else:
            for dep in ids:
                record = await st.get(dep)
                assert record is not None and await st.finish(dep, "succeeded", "healthy", then=then(record))
        calls = {name.removeprefix("cmdstat_"): int(stats["calls"])
                 for name, stats in (await redis.info("commandstats")).items()}
        pointers = [p["deployment_id"] for p in await st.last_succeeded("cart", "dev")]
        queued = sorted(await redis.zrange(f"{prefix}:queue", 0, -1))
        index = (await redis.zcard(keys.state_index("verifying")), await redis.zcard(keys.state_index("reporting")))
        clock_left = await redis.exists(keys.failing_since("cart", "dev"))
        outcomes.append((calls, pointers, [c.since for c in clocks], queued, index, clock_left))
        for dep in ids:
            done = await st.get(dep)
            assert done is not None and (done.verdict, done.state) == ("succeeded", "reporting")
    (one_calls, *one), (many_calls, *many) = outcomes
    assert one == many  # pointers newest first, the clock stopped once, every report queued, indexes moved
    assert one[0] == [f"{n}-cart-dev-cccccc" for n in range(29, 9, -1)]
    assert one[1] == [1000.0] + [None] * 29 and len(one[2]) == 30 and one[3:] == [(0, 30), 0]
    assert (many_calls["lpush"], many_calls["getdel"], many_calls["zadd"], many_calls["zrem"]) == (1, 1, 2, 1)
    assert one_calls["lpush"] == one_calls["getdel"] == 30
    assert many_calls["set"] == one_calls["set"] == 30 and many_calls["psetex"] == one_calls["psetex"] == 30
    await redis.aclose()
