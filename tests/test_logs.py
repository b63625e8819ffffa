"""Log format and secret scrubbing."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge.logs import MASK, SecretFilter, configure_logging
from bridge.settings import Settings

SECRETS = {"webhook": {"tokens": ["hook-token-1"], "basic": ["ado:basic-pass-9"]},
           "argocd": {"token": "argo-token-77"}, "redis_url": "redis://:redis-pass-3@127.0.0.1:16379/1"}


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, Settings]]:
    settings = Settings(**SECRETS)  # type: ignore[arg-type]
    stream = io.StringIO()
    handler = configure_logging(settings, stream=stream)
    try:
        yield stream, settings
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


def test_secret_values_cover_every_group() -> None:
    values = Settings(**SECRETS).secret_values()  # type: ignore[arg-type]
    for expected in ("hook-token-1", "ado:basic-pass-9", "basic-pass-9", "argo-token-77"):
        assert expected in values


def test_scrubs_message_args_extras_and_tracebacks(capture: tuple[io.StringIO, Settings]) -> None:
    stream, settings = capture
    log = logging.getLogger("bridge.test")
    log.warning("token %s and %s", "hook-token-1", {"password": "basic-pass-9"}, extra={"url": "x argo-token-77 y"})
    try:
        raise RuntimeError("connect redis://:redis-pass-3@127.0.0.1:16379/1 failed")
    except RuntimeError:
        log.exception("failed")
    logging.getLogger("uvicorn.error").error("uvicorn says hook-token-1")
    output = stream.getvalue()
    for secret in settings.secret_values():
        assert secret not in output
    assert output.count(MASK) >= 5
    assert "uvicorn says ***" in output and "Traceback" in output


def test_text_format_has_key_value_fields(capture: tuple[io.StringIO, Settings]) -> None:
    stream, _ = capture
    logging.getLogger("bridge.webhook").info("azure-devops webhook queued",
                                             extra={"outcome": "queued", "build_id": 5, "reason": "a b", "x": None})
    line = stream.getvalue().strip()
    assert " INFO bridge.webhook azure-devops webhook queued outcome=queued build_id=5 reason=\"a b\"" in line
    assert "x=" not in line


def test_json_format() -> None:
    settings = Settings(log_json=True, **SECRETS)  # type: ignore[arg-type]
    stream = io.StringIO()
    handler = configure_logging(settings, stream=stream)
    try:
        logging.getLogger("bridge.webhook").info("hello %s", "hook-token-1", extra={"build_id": 7})
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    data = json.loads(stream.getvalue())
    assert data["message"] == f"hello {MASK}"
    assert data["build_id"] == 7 and data["level"] == "INFO" and data["logger"] == "bridge.webhook"
    assert data["time"].endswith("Z")


def test_reconfiguring_replaces_our_handler(capture: tuple[io.StringIO, Settings]) -> None:
    _, settings = capture
    second = configure_logging(settings, stream=io.StringIO())
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_bridge", False)]
    assert ours == [second]
    logging.getLogger().removeHandler(second)


def test_filter_masks_longest_secret_first() -> None:
    f = SecretFilter(["abcd", "abcdefgh", ""])
    assert f.scrub("x abcdefgh y abcd") == f"x {MASK} y {MASK}"
