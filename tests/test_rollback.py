"""Rollbacks, the parts without processes: the ordering exemption, the trailers, the plan and its refusals, the
"last succeeded" list written with the verdict, the routing fields."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from bridge.errors import ConfigError
from bridge.queue import Keys
from bridge.records import DeploymentRecord, DeploymentStore
from bridge.rollbacks import RollbackRefused, launch_rollback, plan_rollback
from bridge.routing import RoutingConfig, parse_routing
from workers.demo import routing_document
from workers.ordering import Candidate, Setter, decide
from workers.writer import Bump, commit_message

DB = 14


def cand(dep: str, build: int, *, rollback: bool = False, seq: float = 0.0) -> Candidate:
    return Candidate(dep, ("cart", "dev"), (("v.yaml", "image.tag"),), Setter(build, None, dep), "build-id", seq,
                     rollback=rollback)


def test_only_a_rollback_may_write_an_older_tag() -> None:
    last = {("v.yaml", "image.tag"): Setter(7, None, "seven")}
    assert [c.deployment_id for c in decide([cand("rb", 5, rollback=True)], last).apply] == ["rb"]
    older = decide([cand("five", 5)], last)
    assert older.apply == () and "newer build 7" in older.superseded[0][1]
    # in one batch the rollback wins over a newer build of the same environment
    both = decide([cand("eight", 8, seq=2), cand("rb", 5, rollback=True, seq=1)], last)
    assert [c.deployment_id for c in both.apply] == ["rb"]


def test_a_rollback_commit_carries_rollback_of_build_id_and_deployment_id() -> None:
    bump = Bump("rollback-1-cart-dev", "cart", "dev", "v.yaml", ("image.tag",), "5", build_id=5, rollback_of=7)
    lines = commit_message("ci: {app} {tag}", [bump]).splitlines()
    assert lines[0] == "rollback: cart dev to 5 (build 5)"
    assert lines[-4:] == ["Rollback-Of: 7", "Build-Id: 5", "Environment: dev", "Deployment-Id: rollback-1-cart-dev"]
    plain = commit_message("ci: {app} {tag}", [Bump("d", "cart", "dev", "v.yaml", ("image.tag",), "8", build_id=8)])
    assert "Rollback-Of" not in plain


def test_routing_policies_default_off_and_hold() -> None:
    routing = parse_routing(routing_document(Path("/tmp/gitops.git")), "test")
    env = routing.route("cart").environment("dev")
    assert (env.on_failure, env.rollback_on_timeout, env.on_manual_change) == ("none", False, "hold")
    doc = routing_document(Path("/tmp/gitops.git"))
    doc["routes"][1]["environments"][0]["on_failure"] = "retry"
    with pytest.raises(ConfigError, match=r"routes\[1\] \(cart\): environments\[0\].on_failure"):
        parse_routing(doc, "test")


@pytest.fixture
async def store(redis_url: Callable[[int], str]) -> AsyncIterator[DeploymentStore]:
    client = Redis.from_url(redis_url(DB))
    yield DeploymentStore(client, Keys(prefix="rb-test"), queue_name="rb-queue")
    await client.aclose()


@pytest.fixture
def routing() -> RoutingConfig:
    return parse_routing(routing_document(Path("/tmp/gitops.git")), "test")


async def deployed(store: DeploymentStore, build: int, verdict: Any = "succeeded") -> DeploymentRecord:
    """A cart/dev deployment of `build` that reached `verdict`, with the writer's last setter pointing at it."""
    record = DeploymentRecord(id=f"{build}-cart-dev", build_key=f"contoso:p:{build}", build_id=build, route="cart",
                              environment="dev", repository="gitops", file="helm/cart/values-dev.yaml",
                              keys=["image.tag"], tag=str(build), state="verifying", commit_sha=f"sha{build}")
    assert await store.create(record)
    await store.redis.set(store.keys.last_setter("gitops", record.file, "image.tag"),
                          Setter(build, None, record.id, record.tag, record.commit_sha).to_json())
    effects = [store.last_succeeded_effect(record)] if verdict == "succeeded" else []
    finished = await store.finish(record.id, verdict, "test", then=effects)
    assert finished is not None
    return finished


async def test_plan_restores_the_newest_success_that_is_not_what_runs(store: DeploymentStore,
                                                                       routing: RoutingConfig) -> None:
    with pytest.raises(RollbackRefused, match="nothing to roll back to"):
        await plan_rollback(store, routing, "cart", "dev")
    await deployed(store, 5)
    await deployed(store, 6)
    await deployed(store, 7, "failed")
    assert [h["build_id"] for h in await store.last_succeeded("cart", "dev")] == [6, 5]

    plan = await plan_rollback(store, routing, "cart", "dev", reason="boom", by="alice")

    r = plan.record
    assert (r.kind, r.build_id, r.tag, r.state, plan.rolled_back_build) == ("rollback", 6, "6", "queued", 7)
    assert r.details["rollback_of"] == {"build_id": 7, "deployment_id": "7-cart-dev", "tag": "7"}
    assert (r.details["by"], r.details["reason"], r.details["cause"]) == ("alice", "boom", "manual")
    named = await plan_rollback(store, routing, "cart", "dev", to_build=5)
    assert named.record.tag == "5" and named.record.id != r.id
    with pytest.raises(RollbackRefused, match="never succeeded"):
        await plan_rollback(store, routing, "cart", "dev", to_build=7)
    with pytest.raises(RollbackRefused) as unknown:
        await plan_rollback(store, routing, "cart", "qa")
    assert unknown.value.status == 404

    await launch_rollback(store, plan)
    hold = await store.get_hold("cart", "dev")
    assert hold is not None and (hold["rollback"], hold["by"], hold["cause"]) == (r.id, "alice", "rollback")
    assert "rolled back to build 6 (from build 7)" in hold["reason"]
    assert await store.redis.zcard("rb-queue") == 1  # its advance_deployment job, stored with it
    # a rollback in flight is never overridden, not even with force
    with pytest.raises(RollbackRefused, match="still in flight"):
        await plan_rollback(store, routing, "cart", "dev", to_build=5, force=True)


async def test_a_newer_build_in_flight_refuses_unless_forced(store: DeploymentStore, routing: RoutingConfig) -> None:
    await deployed(store, 5)
    await deployed(store, 6)
    newer = DeploymentRecord(id="8-cart-dev", build_key="contoso:p:8", build_id=8, route="cart", environment="dev",
                             repository="gitops", file="helm/cart/values-dev.yaml", keys=["image.tag"], state="writing")
    assert await store.create(newer)
    with pytest.raises(RollbackRefused, match="build 8 .* still in flight"):
        await plan_rollback(store, routing, "cart", "dev")
    forced = await plan_rollback(store, routing, "cart", "dev", force=True)
    assert forced.record.tag == "5" and forced.record.details["force"] is True
