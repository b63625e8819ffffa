"""Shared fixtures: Redis (the suite's own shared server, one db per test module owner; or a private server that tests
may stop) and a real uvicorn server for an ASGI app with its lifespan."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_server import ENV, PrivateRedis, free_port, shared_redis_url

from workers.fakes.server import ServedApp

__all__ = ["free_port"]


def pytest_configure(config: pytest.Config) -> None:
    """Start the suite's own shared Redis before collection (test modules build URLs from it at import)."""
    workdir = Path(tempfile.mkdtemp(prefix="gitops-bridge-test-redis-"))
    server = PrivateRedis(workdir)
    server.start()
    os.environ[ENV] = f"redis://127.0.0.1:{server.port}"
    config.stash[_SHARED] = server


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SHARED, None)
    if server is not None:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


_SHARED = pytest.StashKey[PrivateRedis]()


@pytest.fixture
def redis_url() -> Callable[[int], str]:
    """`redis_url(db)`: the URL of that db on the suite's shared Redis, flushed first; use only your own db."""

    def make(db: int) -> str:
        url = shared_redis_url(db)
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url

    return make


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], ServedApp]]:
    """`serve(app)` → a started server WITH the app's lifespan (`.url`); stopped after the test."""
    started: list[ServedApp] = []

    def run(app: Any) -> ServedApp:
        server = ServedApp(app, lifespan=True).start()
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()
