"""A Sentinel failover in the middle of a burst: the documented replicated setup (one replica, the webhook waiting
for it with BRIDGE_REDIS_MIN_REPLICAS=1) loses no acknowledged build, and the bridge follows the new master."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import PrivateRedis, free_port, redis_binary

from .conftest import FaultStack

pytestmark = pytest.mark.slow

MASTER = "bridge-master"


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[PrivateRedis, PrivateRedis, str]]:
    """A master, a replica and one Sentinel (quorum 1) watching them; yields (master, replica, sentinel address)."""
    # The documented setup: the master refuses writes without a replica (so a master that lost its replica in a
    # failover cannot accept work that the new master will never see), the webhook waits for a replica (WAIT).
    master = PrivateRedis(tmp_path / "master", appendonly=True,
                          extra=("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"))
    master.start()
    replica = PrivateRedis(tmp_path / "replica", appendonly=True,
                           extra=("--replicaof", "127.0.0.1", str(master.port), "--min-replicas-to-write", "1",
                                  "--min-replicas-max-lag", "10"))
    replica.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 10000\n")
    sentinel = subprocess.Popen([redis_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:  # the Sentinel knows the master and has found the replica
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
                if client.execute_command("SENTINEL", "replicas", MASTER):
                    break
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline and sentinel.poll() is None, "the Sentinel did not find the replica"
        time.sleep(0.1)
    try:
        yield master, replica, f"127.0.0.1:{port}"
    finally:
        sentinel.terminate()
        sentinel.wait(timeout=10)
        replica.stop()
        master.stop()


def test_sentinel_failover_mid_burst_loses_nothing(tmp_path: Path,
                                                   replicated: tuple[PrivateRedis, PrivateRedis, str]) -> None:
    master, replica, address = replicated
    f = FaultStack(tmp_path, master, sentinel=(address, MASTER))
    try:
        f.start()
        f.spawn_worker("worker-1")
        f.spawn_worker("worker-2")

        def failover(i: int) -> None:
            if i == 8:
                with redis.Redis.from_url(f"redis://{address}", socket_timeout=5) as sentinel:
                    sentinel.execute_command("SENTINEL", "FAILOVER", MASTER)
            time.sleep(0.1)

        builds = f.burst(20, during=failover)
        with redis.Redis.from_url(f"redis://{address}", socket_timeout=5) as sentinel:
            promoted = sentinel.execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
        assert int(promoted[1]) == replica.port  # the failover really happened
        f.assert_invariants(builds)
    finally:
        f.stop()
