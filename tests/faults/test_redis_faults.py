"""Redis faults mid-burst: dropped connections, restarts (SIGTERM and SIGKILL, append-only with appendfsync always)
and a pause longer than the client timeout. The web process answers 503 meanwhile (never 2xx for a build it could
not queue), the workers keep running, and every build answered 202 is deployed and reported once."""

from __future__ import annotations

import time

import pytest

from .conftest import FaultFactory, FaultStack

pytestmark = pytest.mark.slow


def _client_kill(f: FaultStack) -> None:
    with f.redis_client() as client:
        client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


def test_connections_dropped_mid_burst(faults: FaultFactory) -> None:
    f = faults(workers=2)
    builds = f.burst(24, during=lambda i: _client_kill(f) if i in (5, 11, 17) else time.sleep(0.1))
    f.assert_invariants(builds)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_redis_restarted_mid_burst(faults: FaultFactory, how: str) -> None:
    f = faults(workers=2)

    def restart(i: int) -> None:
        if i == 8:
            f.redis.stop() if how == "sigterm" else f.redis.kill()
            time.sleep(1.5)
            f.redis.start()
        time.sleep(0.1)

    builds = f.burst(20, during=restart)
    f.assert_invariants(builds)


def test_redis_paused_longer_than_the_client_timeout(faults: FaultFactory) -> None:
    f = faults(workers=2)

    def pause(i: int) -> None:
        if i == 6:
            with f.redis_client() as client:
                client.execute_command("CLIENT", "PAUSE", "7000", "ALL")
        time.sleep(0.1)

    builds = f.burst(16, during=pause)
    f.assert_invariants(builds)
