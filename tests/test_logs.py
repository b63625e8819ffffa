"""Log format and secret scrubbing."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bridge.logs import MASK, PreparedLine, SecretFilter, configure_logging, forget_secret, remember_secret
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


# -- PreparedLine: the intake's line per webhook -------------------------------------------------------------------
FIELDS = {"outcome": "queued", "status": 202, "event_id": "e-1", "build_id": 5, "build_key": "org:p:5",
          "organization": None, "reason": "a b"}


def test_prepared_line_writes_what_logger_info_writes(capture: tuple[io.StringIO, Settings]) -> None:
    stream, settings = capture
    log = logging.getLogger("bridge.webhook")
    log.info("azure-devops webhook queued", extra=FIELDS)
    PreparedLine(log, SecretFilter(settings.secret_values())).info("azure-devops webhook queued", FIELDS)
    generic, prepared = (line.split(" ", 1)[1] for line in stream.getvalue().splitlines())  # after the time
    assert prepared == generic
    assert prepared == "INFO bridge.webhook azure-devops webhook queued outcome=queued status=202 event_id=e-1 " \
                       "build_id=5 build_key=org:p:5 reason=\"a b\""


def test_prepared_line_json_and_record_fields_match_logger_info() -> None:
    settings = Settings(log_json=True, **SECRETS)  # type: ignore[arg-type]
    stream = io.StringIO()
    handler = configure_logging(settings, stream=stream)
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("bridge.webhook")
    log.addHandler(keep)
    try:
        log.info("azure-devops webhook queued", extra=FIELDS)
        PreparedLine(log, SecretFilter(settings.secret_values())).info("azure-devops webhook queued", FIELDS)
    finally:
        log.removeHandler(keep)
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    generic, prepared = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {**prepared, "time": ""} == {**generic, "time": ""}
    assert all(getattr(records[1], key) == value for key, value in FIELDS.items())


class Shown:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def test_prepared_line_masks_a_secret_in_any_field(capture: tuple[io.StringIO, Settings]) -> None:
    stream, settings = capture
    line = PreparedLine(logging.getLogger("bridge.webhook"), SecretFilter(settings.secret_values()))
    remember_secret("gate-token-5150")
    try:
        for secret in [*settings.secret_values(), "gate-token-5150"]:
            for key in ("event_id", "build_key", "organization", "reason", "object"):
                value = Shown(f"x{secret}y") if key == "object" else f"https://x/{secret}/y"
                line.info(f"azure-devops webhook {secret}", {**FIELDS, key: value})
    finally:
        forget_secret("gate-token-5150")
    output = stream.getvalue()
    assert output.count("\n") == 5 * (len(settings.secret_values()) + 1)
    for secret in [*settings.secret_values(), "gate-token-5150"]:
        assert secret not in output
    assert "object=x***y" in output and "build_key=https://x/***/y" in output


def test_a_handler_with_other_secrets_still_scrubs_a_prepared_line(capture: tuple[io.StringIO, Settings]) -> None:
    stream, settings = capture
    other = io.StringIO()
    handler = logging.StreamHandler(other)
    handler.addFilter(SecretFilter(["elsewhere-secret-42"]))
    log = logging.getLogger("bridge.webhook")
    log.addHandler(handler)
    try:
        PreparedLine(log, SecretFilter(settings.secret_values())).info(
            "azure-devops webhook queued", {**FIELDS, "event_id": "elsewhere-secret-42 hook-token-1"})
    finally:
        log.removeHandler(handler)
    assert "elsewhere-secret-42" not in other.getvalue() and "event_id" not in other.getvalue()  # plain format
    assert 'event_id="*** ***"' in stream.getvalue()  # the record is shared: each filter's mask stays on it
