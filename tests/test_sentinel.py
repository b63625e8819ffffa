"""Redis through Sentinel: the web app and the worker find the master from the Sentinels (real redis-sentinel)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from arq.connections import create_pool

from bridge.app import create_app
from bridge.embedded_redis import redis_executable
from bridge.queue import build_job_id, redis_settings
from bridge.routing import parse_routing
from bridge.settings import Settings
from workers.main import build_worker

SAMPLE = Path(__file__).resolve().parent / "data" / "azure-devops-events" / "build.complete.2-full.json"
ROUTING = {
    "repositories": {"platform": {"url": "/nowhere.git"}},
    "routes": [{"name": "chat", "match": {"project": "FabrikamFiberChat", "definition": "MainRepo (1)"},
                "environments": [{"name": "dev", "repository": "platform", "file": "chat/values-dev.yaml"}]}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def sentinel(private_redis: Any, tmp_path: Path) -> Iterator[str]:
    """A Sentinel watching the private Redis as master `bridge-master`; yields `host:port`."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor bridge-master 127.0.0.1 {private_redis.port} 1\n")
    process = subprocess.Popen([redis_executable(), str(conf), "--sentinel"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
                if client.execute_command("SENTINEL", "get-master-addr-by-name", "bridge-master"):
                    break
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("redis sentinel did not start")
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def sentinel_settings(address: str) -> Settings:
    return Settings.model_validate({
        "redis_sentinels": [address], "redis_sentinel_master": "bridge-master", "queue_name": "sentinel:queue",
        "key_prefix": "sentinel", "webhook": {"tokens": ["sentinel-token"]},
    })


def test_sentinel_addresses_are_validated() -> None:
    with pytest.raises(ValueError, match="not host:port"):
        Settings.model_validate({"redis_sentinels": "redis-1:26379,redis-2"})
    parsed = Settings.model_validate({"redis_sentinels": "redis-1:26379, redis-2:26380"})
    assert parsed.has_redis and parsed.redis_sentinels == ["redis-1:26379", "redis-2:26380"]


async def test_webhook_is_queued_on_the_master_the_sentinel_names(
    sentinel: str, private_redis: Any, serve: Callable[[Any], Any]
) -> None:
    settings = sentinel_settings(sentinel)
    connection = redis_settings(settings)
    assert connection.sentinel and connection.host == [("127.0.0.1", int(sentinel.rsplit(":", 1)[1]))]

    server = serve(create_app(settings, parse_routing(ROUTING)))
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    body = json.loads(SAMPLE.read_text())
    answer = httpx.post(f"{server.url}/webhooks/azure-devops", json=body,
                        headers={"X-Bridge-Token": "sentinel-token"})
    assert answer.status_code == 202 and answer.json()["status"] == "queued"

    with redis.Redis.from_url(private_redis.url) as master:  # the job is on the master itself
        assert master.zcard("sentinel:queue") == 1
        build_key = "dev.azure.com/fabrikamfiber:33dd33dd-ee44-ff55-aa66-77bb77bb77bb:2727068"
        assert master.exists(f"arq:job:{build_job_id(build_key)}") == 1

    pool = await create_pool(connection, default_queue_name=settings.queue_name)  # the worker's way in
    try:
        assert [job.function for job in await pool.queued_jobs(queue_name=settings.queue_name)] == ["process_build"]
    finally:
        await pool.aclose()
    worker = build_worker(settings, parse_routing(ROUTING))
    assert type(worker.pool.connection_pool).__name__ == "SentinelConnectionPool"  # the master comes from Sentinel
    assert await worker.pool.ping()
    await worker.pool.aclose()
