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
from typing import Any

from bridge.clock import iso_ms
from bridge.settings import Settings

MASK = "***"
# Attributes every LogRecord has; anything else on a record came in through `extra=` and is a structured field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields: what came in through `extra=`, in that order."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[:1] != "_"}


def _written_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields as SecretFilter left them (scrubbed, collected once per record), else read from the record."""
    fields: dict[str, Any] | None = record.__dict__.get("_fields")
    return fields if fields is not None else fields_of(record)


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

    def found_in(self, texts: Iterable[str]) -> list[str]:
        """The secrets (longest first) that occur in any of `texts`: one search per secret over all of them (the
        usual answer, nothing, costs no more). A secret inside any text is inside the whole."""
        secrets = self._all()
        if not secrets:
            return []
        whole = "\0".join(texts)
        return [secret for secret in secrets if secret in whole]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get("_scrubbed_with") == self.secrets:  # a PreparedLine with our secrets: done already
            return True
        secrets = self._all()  # once per record
        if not secrets:
            return True
        message = record.getMessage()
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None if record.exc_text else record.exc_info  # the scrubbed text is what gets written
        fields = fields_of(record)
        texts = {key: value if isinstance(value, str) else str(value) for key, value in fields.items()
                 if value is not None and not isinstance(value, int | float)}  # bool is an int
        found = self.found_in([message, record.exc_text or "", record.stack_info or "", *texts.values()])
        if found:  # only the secrets found are replaced, part by part
            record.msg = _scrub(message, found)
            if record.exc_text:
                record.exc_text = _scrub(record.exc_text, found)
            if record.stack_info:
                record.stack_info = _scrub(record.stack_info, found)
            for key, text in texts.items():
                scrubbed = _scrub(text, found)
                if scrubbed is not text:
                    setattr(record, key, scrubbed)
                    fields[key] = scrubbed
        record._fields = fields  # what the formatters write, already scrubbed
        return True


class PreparedLine:
    """A structured log line on a hot path (the intake writes one per webhook), cheaper than `logger.info(message,
    extra=fields)` and written the same: the message and the text fields are searched for secrets here, once, and
    only a secret found there is masked; the record then carries what it was checked against, so a SecretFilter with
    the same secrets lets it pass without searching again (one with other secrets searches as usual), and its fields,
    so the formatters need not collect them. Numbers are written as they are, as SecretFilter does."""

    def __init__(self, logger: logging.Logger, scrubber: SecretFilter) -> None:
        self.logger, self.scrubber = logger, scrubber

    def info(self, message: str, fields: dict[str, Any]) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        texts = {key: value if isinstance(value, str) else str(value) for key, value in fields.items()
                 if value is not None and not isinstance(value, int | float)}  # bool is an int
        found = self.scrubber.found_in([message, *texts.values()])
        if found:
            message = _scrub(message, found)
            fields = fields | {key: _scrub(text, found) for key, text in texts.items()}
        # `fields` again under `_fields`: the formatters' own copy (a filter that masks a field updates both)
        self.logger.info(message, extra={**fields, "_fields": fields, "_scrubbed_with": self.scrubber.secrets})


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class TextFormatter(logging.Formatter):
    """`2025-01-01T00:00:00.000Z INFO bridge.webhook message key=value ...`"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [iso_ms(record.created), record.levelname, record.name, record.getMessage()]
        for key, value in _written_fields(record).items():
            if value is not None:
                text = value if isinstance(value, str) else str(value)
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
            "time": iso_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in _written_fields(record).items() if v is not None})
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
