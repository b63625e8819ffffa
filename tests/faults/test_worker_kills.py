"""kill -9 of workers: at every named step boundary (deterministic crash points), and at random moments of a burst."""

from __future__ import annotations

import random
import time

import pytest

from workers.faults import POINTS

from .conftest import FaultFactory

pytestmark = pytest.mark.slow


def test_kill_9_at_every_step_boundary_loses_nothing(faults: FaultFactory) -> None:
    f = faults(workers=0)
    armed = f.spawn_worker("armed-0", crash_at=POINTS)  # kills itself once at each point, the test restarts it
    builds, crashes = [], []
    deadline = time.monotonic() + 150
    while len(crashes) < len(POINTS):
        assert time.monotonic() < deadline, f"points reached: {sorted(p.name for p in f.markers.iterdir())}"
        if len(builds) < 4 * len(POINTS):
            builds.append(f.send(("cart", "search")[len(builds) % 2]))
        assert armed.process is not None
        if armed.process.poll() is not None:
            assert armed.process.returncode == -9, armed.output()  # SIGKILL, by a crash point: nothing else
            f.killed.add(armed.process.pid)
            crashes.append(armed.process.pid)
            armed = f.spawn_worker(f"armed-{len(crashes)}", crash_at=POINTS)
        time.sleep(0.25)
    reached = {p.name: int(p.read_text()) for p in f.markers.iterdir()}
    assert set(reached) == set(POINTS)  # every point was reached, each by a worker that then died
    assert sorted(reached.values()) == sorted(crashes)
    f.assert_invariants(builds)


def test_repeated_kill_9_of_one_of_two_workers_during_a_burst(faults: FaultFactory) -> None:
    f = faults(workers=2)
    rng = random.Random(20261127)
    kill_after = set(rng.sample(range(2, 28), 6))

    def maybe_kill(i: int) -> None:
        if i in kill_after:
            victim = f.workers[-1] if rng.random() < 0.5 else f.workers[-2]
            f.kill(victim)
            f.workers.remove(victim)
            f.spawn_worker(f"worker-r{i}")
        time.sleep(rng.uniform(0.0, 0.3))

    builds = f.burst(30, during=maybe_kill)
    f.assert_invariants(builds)
