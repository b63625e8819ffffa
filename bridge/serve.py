"""Running the processes: web and worker in one event loop (`serve`, also the demo's), and the signal handling that
stops them cleanly. The worker side is imported lazily: the web process alone never loads it."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from pydantic import SecretStr

from bridge.routing import RoutingConfig
from bridge.settings import Settings

log = logging.getLogger("bridge.serve")


class _ArqShutdownLine(logging.Filter):
    """arq's `Worker.close()` logs `shutdown on SIGUSR1` whatever stopped it (it fakes that signal when it does not
    own the signal handlers); we log the real signal ourselves, so drop that misleading line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("shutdown on %s") and record.args
                    and isinstance(record.args, tuple) and record.args[0] == "SIGUSR1")


_ARQ_FILTER = _ArqShutdownLine()


def quiet_arq_shutdown_line() -> None:
    logger = logging.getLogger("arq.worker")
    if _ARQ_FILTER not in logger.filters:
        logger.addFilter(_ARQ_FILTER)


def _log_signal(signum: int) -> None:
    log.info("shutdown on %s", signal.Signals(signum).name)


async def until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until it ends or SIGTERM/SIGINT arrives; then cancel it so it closes cleanly.

    Jobs cut short are re-run by arq later (every job is idempotent).
    """
    quiet_arq_shutdown_line()
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        _log_signal(signum)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    try:
        await task
    except asyncio.CancelledError:
        pass


async def serve(settings: Settings, routing: RoutingConfig, redis_url: str | None, *, host: str, port: int) -> None:
    """Web and worker in one event loop, on one Redis (`redis_url`: an embedded one, else the settings')."""
    import uvicorn

    from bridge.app import create_app
    from workers.main import run_worker

    quiet_arq_shutdown_line()
    if redis_url is not None:  # an embedded Redis
        settings = settings.model_copy(update={"redis_url": SecretStr(redis_url), "redis_sentinels": []})
    app = create_app(settings, routing)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    web = asyncio.ensure_future(server.serve())
    worker = asyncio.ensure_future(run_worker(settings, routing, redis_url=redis_url, serve_health=False))
    # SIGTERM stops both cleanly, so the caller can stop the embedded Redis. (uvicorn re-raises the SIGTERM it
    # captured once it has stopped; with the default handler that killed the process and orphaned redis-server.)
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        _log_signal(signum)
        server.handle_exit(signum, None)

    try:
        loop.add_signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
        handling_sigterm = True
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (the demo), or Windows
        handling_sigterm = False
    try:
        done, _ = await asyncio.wait([web, worker], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        server.should_exit = True
        worker.cancel()
        await asyncio.gather(web, worker, return_exceptions=True)
        if handling_sigterm:
            loop.remove_signal_handler(signal.SIGTERM)
