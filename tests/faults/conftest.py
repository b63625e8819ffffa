"""Fault injection with real processes: a private append-only `redis-server` the test may kill, pause and restart,
`gitops-bridge web` and `gitops-bridge worker` processes, the Argo CD and Azure DevOps fakes (counting every report
request) and a real bare GitOps repository.

    def test_x(faults: FaultFactory) -> None:
        f = faults(workers=2)
        builds = f.burst(12)                       # 202 for each, or the test fails
        f.redis.kill(); f.redis.start()            # ... any fault ...
        f.assert_invariants(builds)                # bounded settle, then every invariant of the fault issue

The invariants (checked after at most `SETTLE_SECONDS` of quiet): every build answered 202 reaches exactly one
verdict and one final report; it is listed by `/api/deployments`; no two commits carry one Deployment-Id; no value
went backwards; the workers the test did not kill still run; nothing is left in an active state.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.sentinel
from e2e.conftest import KEY_PREFIX, Options, Stack, WorkerProcess, settings_env
from redis_server import PrivateRedis, free_port

from bridge.lifecycle import ACTIVE_STATES

SETTLE_SECONDS = 60.0
APPS = ("cart", "search")  # push environments only: no pull request waits for a reviewer
LEASE_SECONDS = 4.0  # job lease and repository lock lease: recovery after kill -9 is bounded by these
FINAL_TAGS = {"deployed-dev", "pushed-dev", "deploy-failed-dev", "deploy-timed-out-dev", "deploy-superseded-dev",
              "deploy-held-dev", "deploy-rejected-dev"}


@dataclass
class Build:
    build_id: int
    app: str
    payload: dict[str, Any] = field(repr=False)


class FaultStack(Stack):
    """The e2e stack on a private Redis, with the web process and the workers as real processes."""

    def __init__(self, root: Path, redis_server: PrivateRedis, sentinel: tuple[str, str] | None = None, *,
                 lease_seconds: float = LEASE_SECONDS, sweep_seconds: float = 2.0) -> None:
        super().__init__(root, redis_server.url, Options(worker=False, deadline_seconds=45.0), serve=lambda app: None)
        self.redis = redis_server
        self.sentinel = sentinel  # (host:port, master name): the bridge finds the master through it
        self.lease_seconds, self.sweep_seconds = lease_seconds, sweep_seconds
        self.web: WorkerProcess | None = None
        self.killed: set[int] = set()  # pids the test killed on purpose
        self.next_build = 1000
        self.markers = root / "crash-markers"
        self.markers.mkdir()

    def start(self) -> FaultStack:
        for fake in (self.ado, self.github, self.argocd):
            fake.start()
            self._fakes.append(fake.stop)
        self.start_argocd_controller()
        self.org_url = self.ado.org_url("contoso")
        update: dict[str, Any] = {
            "job_lease_seconds": self.lease_seconds, "sweep_seconds": self.sweep_seconds,
            "git": self.make_settings().git.model_copy(update={"lock_lease_seconds": self.lease_seconds,
                                                                "lock_wait_seconds": 30.0}),
        }
        if self.sentinel is not None:
            update.update(redis_sentinels=[self.sentinel[0]], redis_sentinel_master=self.sentinel[1],
                          redis_min_replicas=1)
        self.settings = self.make_settings().model_copy(update=update)
        env = self.process_env()
        env["BRIDGE_PORT"] = str(self.port)
        self.web = WorkerProcess(env, self.root / "web.log", self.redis_url, role="web").start()
        self.url = self.web.url
        return self

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(settings_env(self.settings))
        env.update({"BRIDGE_SECRETS_DIR": str(self.root / "no-secrets"), "BRIDGE_LOG_LEVEL": "INFO"})
        return env

    def spawn_worker(self, name: str, crash_at: tuple[str, ...] = ()) -> WorkerProcess:
        env = self.process_env()
        env.update({"BRIDGE_WORKER_METRICS_PORT": str(free_port()), "BRIDGE_GIT__WORK_DIR": str(self.root / name)})
        if crash_at:
            env.update({"BRIDGE_FAULTS__CRASH_AT": ",".join(crash_at), "BRIDGE_FAULTS__MARKER_DIR": str(self.markers)})
        worker = WorkerProcess(env, self.root / f"{name}.log", self.redis_url)
        self.workers.append(worker)
        return worker.start(may_crash=bool(crash_at))

    def kill(self, worker: WorkerProcess) -> None:
        assert worker.process is not None
        self.killed.add(worker.process.pid)
        worker.process.kill()
        worker.process.wait(timeout=10)

    def stop(self) -> None:
        if self.web is not None:
            self.web.stop()
        super().stop()

    # -- load ------------------------------------------------------------------------------------------------------

    def send(self, app: str) -> Build:
        """One build of `app`, posted until it is answered 202 (a 503 while Redis is down means: not accepted)."""
        self.next_build += 1
        payload = self.build(self.next_build, app)
        deadline = time.monotonic() + 30
        while True:
            try:
                response = self.post(payload)
                if response.status_code == 202:
                    return Build(self.next_build, app, payload)
                assert response.status_code == 503, response.text  # never another answer
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the web process never accepted the build"
            time.sleep(0.2)

    def burst(self, count: int, during: Callable[[int], None] | None = None) -> list[Build]:
        """`count` builds over the apps; `during(i)` runs after the i-th build (to inject a fault mid-burst)."""
        builds = []
        for i in range(count):
            builds.append(self.send(APPS[i % len(APPS)]))
            if during is not None:
                during(i)
        return builds

    def redis_client(self) -> redis.Redis:
        """A client of the current master (through the Sentinel when there is one)."""
        if self.sentinel is not None:
            host, _, port = self.sentinel[0].rpartition(":")
            sentinel = redis.sentinel.Sentinel([(host, int(port))], socket_timeout=5)
            master: redis.Redis = sentinel.master_for(self.sentinel[1], socket_timeout=5)
            return master
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    # -- the invariants ----------------------------------------------------------------------------------------------

    def settled(self, builds: list[Build]) -> bool:
        with self.redis_client() as client:
            if any(client.zcard(f"{KEY_PREFIX}:state:{state}") for state in ACTIVE_STATES):
                return False
        records = {r["build_id"]: r for r in self.records()}
        return all(b.build_id in records and records[b.build_id]["state"] == "done" for b in builds)

    def assert_invariants(self, builds: list[Build], *, settle: float = SETTLE_SECONDS) -> None:
        try:
            self.wait("every build to reach its verdict and its final report", lambda: self.settled(builds), settle)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nweb log:\n{self.web.output() if self.web else ''}") from None
        records = {r["build_id"]: r for r in self.records()}
        # exactly one verdict per build, listed by the API (one environment each: dev)
        for b in builds:
            listed = self.records(b.build_id)
            assert [(r["environment"], r["state"]) for r in listed] == [("dev", "done")], listed
            assert listed[0]["verdict"] in ("succeeded", "superseded"), listed[0]
        # exactly one final report: one final commit status, the final tag and properties only with one state
        for b in builds:
            verdict = records[b.build_id]["verdict"]
            states = self.commit_states(b.payload, "dev")
            assert len([s for s in states if s != "pending"]) == 1, (b.build_id, states)
            assert states[-1] != "pending", (b.build_id, states)
            final_tags = [t for r in self.ado.requests_to("PATCH", f"/_apis/build/builds/{b.build_id}/tags")
                          for t in (r["body"] or {}).get("tagsToAdd", []) if t in FINAL_TAGS]
            assert len(set(final_tags)) == 1 and 1 <= len(final_tags) <= 2, (b.build_id, final_tags)
            assert set(self.tags(b.build_id)) & FINAL_TAGS == set(final_tags), self.tags(b.build_id)
            statuses = {op.get("value") for r in self.ado.requests_to("PATCH", f"/builds/{b.build_id}/properties")
                        for op in (r["body"] or []) if op.get("path") == "/gitops-bridge.dev.status"}
            assert statuses <= {"in-progress", verdict}, (b.build_id, statuses)
        # no duplicate commit per Deployment-Id, and every value is the newest build's
        trailers = re.findall(r"^Deployment-Id: (\S+)$", "\n".join(m for _, m in self.commits_since(self.initial)),
                              re.MULTILINE)
        assert len(trailers) == len(set(trailers)), sorted(trailers)
        for app in APPS:
            newest = max((b for b in builds if b.app == app), key=lambda b: b.build_id, default=None)
            if newest is not None:
                assert records[newest.build_id]["verdict"] == "succeeded", records[newest.build_id]
                assert self.values_tag(app, "dev") == records[newest.build_id]["tag"]
        # the workers the test did not kill still run
        for worker in self.workers:
            assert worker.process is not None
            if worker.process.pid not in self.killed:
                assert worker.process.poll() is None, f"a worker exited by itself:\n{worker.output()}"
        assert self.web is not None and self.web.process is not None and self.web.process.poll() is None


FaultFactory = Callable[..., FaultStack]


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[FaultFactory]:
    """`faults(workers=N)` → a started FaultStack with N plain workers; everything is stopped after the test."""
    started: list[FaultStack] = []
    server = PrivateRedis(tmp_path / "redis", appendonly=True)
    server.start()

    def make(workers: int = 1) -> FaultStack:
        stack = FaultStack(tmp_path, server)
        started.append(stack)
        stack.start()
        for i in range(workers):
            stack.spawn_worker(f"worker-{i + 1}")
        return stack

    try:
        yield make
    finally:
        for stack in started:
            stack.stop()
        server.stop()
