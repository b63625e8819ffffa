"""kill -9 of the worker while it writes a rollback: the rollback still ends once, with exactly one commit."""

from __future__ import annotations

import time

import pytest

from .conftest import FaultFactory

pytestmark = pytest.mark.slow

CRASH_AT = ("after-commit", "after-push", "after-record", "after-verdict")


def test_worker_killed_during_a_rollback_writes_exactly_one_rollback_commit(faults: FaultFactory) -> None:
    f = faults(workers=1)
    good = f.send("cart")
    f.wait_finished(good.build_id, "dev")
    bad = f.send("cart")
    f.wait_finished(bad.build_id, "dev")
    assert f.record(bad.build_id, "dev")["verdict"] == "succeeded"  # type: ignore[index]
    plain = f.workers[0]
    f.kill(plain)
    f.workers.remove(plain)

    armed = f.spawn_worker("armed-0", crash_at=CRASH_AT)  # dies once at each point; the test restarts it
    answer = f.api("POST", "/api/rollbacks", json={"route": "cart", "environment": "dev", "reason": "kill test"})
    assert answer.status_code == 202, answer.text
    rollback_id = answer.json()["id"]
    crashes = 0
    deadline = time.monotonic() + 120
    while True:
        record = f.api("GET", f"/api/deployments/{rollback_id}").json()
        if record.get("state") == "done":
            break
        assert time.monotonic() < deadline, f"rollback not done: {record}\n{armed.output()}"
        assert armed.process is not None
        if armed.process.poll() is not None:
            assert armed.process.returncode == -9, armed.output()
            f.killed.add(armed.process.pid)
            crashes += 1
            armed = f.spawn_worker(f"armed-{crashes}", crash_at=CRASH_AT)
        time.sleep(0.2)

    assert crashes == len(CRASH_AT), sorted(p.name for p in f.markers.iterdir())
    assert record["verdict"] == "succeeded" and record["kind"] == "rollback"
    messages = [m for _, m in f.commits_since(f.initial)]
    assert sum(f"Deployment-Id: {rollback_id}" in m.splitlines() for m in messages) == 1
    assert sum("Rollback-Of: " in m for m in messages) == 1
    assert f.values_tag("cart", "dev") == str(good.build_id)
    assert f.tag_patches(bad.build_id, "rolled-back-dev") == 1
    assert f.tags(good.build_id) == ["deployed-dev"]
