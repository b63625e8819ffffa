"""Serve an ASGI app on a free loopback port in a background thread (for fakes in tests and the demo)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn


class ServedApp:
    """A running uvicorn server in a daemon thread; `url` has no trailing slash. Use as a context manager.

    Fakes run without a lifespan; the bridge's own app needs `lifespan=True` (its Redis pool lives there).
    """

    def __init__(
        self, app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0, *, lifespan: bool = False
    ) -> None:
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on" if lifespan else "off",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"fake-{port}", daemon=True)

    def start(self, timeout: float = 10.0) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
