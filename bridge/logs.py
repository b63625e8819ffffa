"""Structured logging: one line per record, text (`key=value` extras) or JSON, and a filter that scrubs secrets.

`configure_logging(settings)` is called once at start-up. The scrubbing filter sits on the handlers (a filter on a
logger does not see records propagated from its children), so every record that is written goes through it,
including uvicorn's and those of libraries that put a URL with a password into an exception message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from bridge.settings import Settings

MASK = "***"
# Attributes every LogRecord has; anything else on a record came in through `extra=` and is a structured field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[:1] != "_"}


# Credentials learnt while running (a pipeline gate's AuthToken): every SecretFilter masks them too, until forgotten.
_RUNTIME_SECRETS: set[str] = set()


def remember_secret(value: str) -> None:
    if value:
        _RUNTIME_SECRETS.add(value)


def forget_secret(value: str) -> None:
    _RUNTIME_SECRETS.discard(value)


class SecretFilter(logging.Filter):
    """Replaces every configured secret in the message, the exception text and extra fields with `***`."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def _all(self) -> list[str]:
        if not _RUNTIME_SECRETS:
            return self.secrets
        return [*self.secrets, *sorted(_RUNTIME_SECRETS, key=len, reverse=True)]

    def scrub(self, text: str) -> str:
        return _scrub(text, self._all())

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._all()  # once per record: a log line per webhook passes here
        if not secrets:
            return True
        message = record.getMessage()
        record.msg, record.args = _scrub(message, secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _scrub(record.exc_text, secrets)
            record.exc_info = None  # the scrubbed text is what gets written
        if record.stack_info:
            record.stack_info = _scrub(record.stack_info, secrets)
        for key, value in fields_of(record).items():
            if value is None or isinstance(value, int | float):  # bool is an int
                continue
            text = value if isinstance(value, str) else str(value)
            scrubbed = _scrub(text, secrets)
            if scrubbed is not value:
                setattr(record, key, scrubbed)
        return True


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`2025-01-01T00:00:00.000Z INFO bridge.webhook message key=value ...`"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        for key, value in fields_of(record).items():
            if value is not None:
                text = str(value)
                parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in fields_of(record).items() if v is not None})
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, default=str)


def _is_file(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return True


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, inside a running event loop and on a real file (stderr, a pipe, a file), writes the lines
    of one loop iteration together: one write and one flush, one system call, instead of one per line (the intake logs
    a line per webhook). Every line is written, in order, before the loop runs anything else; outside a loop, or to an
    in-memory stream, each line is written at once. `flush()` (also at exit) writes what is pending."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._coalesce = _is_file(stream)
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def emit(self, record: logging.LogRecord) -> None:
        if not self._coalesce:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flush_on is not loop:  # (a loop that stopped before running it would keep the lines: schedule anew)
            self._flush_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            if self._pending:
                lines, self._pending = self._pending, []
                try:
                    self.stream.write("".join(lines))
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "".join(lines)}))
            super().flush()
        finally:
            self.release()


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Root handler with our format and the secret filter; uvicorn's loggers write through it too."""
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    handler.addFilter(SecretFilter(settings.secret_values()))
    # Our formats show no caller, thread or process: the stack walk (findCaller), and the thread and process look-ups
    # of every LogRecord are skipped (logging HOWTO, "Optimization"). The intake logs one line per webhook.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bridge", False):
            old.flush()
            root.removeHandler(old)
    handler._bridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


def install_secret_filter(secrets: Iterable[str], loggers: Iterable[str] = ("", "uvicorn", "uvicorn.access")) -> None:
    """Add the scrubbing filter to every handler of the named loggers (for handlers configured elsewhere)."""
    secret_filter = SecretFilter(secrets)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, SecretFilter) for f in handler.filters):
                handler.addFilter(secret_filter)
