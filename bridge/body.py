"""The one body reader of every endpoint: bounded in size, in time and in JSON nesting; any problem is a `BodyError`
carrying the status to answer (never a 5xx).

    413  over `webhook.max_body_bytes` (declared or counted while streaming; the rest is not read), connection closed
    408  the whole body did not arrive within `webhook.body_timeout_seconds`, connection closed
    400  the client went away mid-body; not UTF-8 JSON; NaN/Infinity; numbers out of range; nesting deeper than
         `webhook.max_json_depth` (the reason names the problem)

Every handler reads through `read_body`/`read_json`, so a limit configured once holds for every endpoint.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from bridge.settings import Settings

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_RUNS = re.compile(rb"\[+|\]+")
_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int = 2 * 1024 * 1024
    max_depth: int = 64
    timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        w = settings.webhook
        return cls(max_bytes=w.max_body_bytes, max_depth=w.max_json_depth, timeout_s=w.body_timeout_seconds)


class BodyError(Exception):
    """A body we will not use. `status` is 400, 408 or 413; `outcome` a metrics label; `close` asks to drop the
    connection (the rest of the body is never read)."""

    def __init__(self, status: int, outcome: str, reason: str, *, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.outcome = outcome
        self.reason = reason
        self.close = close

    @property
    def headers(self) -> dict[str, str]:
        return {"connection": "close"} if self.close else {}


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The raw body, whole, within the size and time limits; BodyError otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_bytes:
        raise BodyError(413, "too_large", f"body over {limits.max_bytes} bytes", close=True)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise BodyError(413, "too_large", f"body over {limits.max_bytes} bytes", close=True)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyError(408, "timeout", f"body not received within {limits.timeout_s:g} s", close=True) from None
    except ClientDisconnect:
        raise BodyError(400, "invalid", "client disconnected before the body was complete") from None
    return b"".join(chunks)


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Strict JSON (UTF-8, no NaN, numbers in range) no deeper than `max_depth`; BodyError(400) naming the problem.

    The depth is checked first, on the bytes, so a deep body is refused without building it; orjson then parses in
    C with its own nesting cap (1024), so no body can exhaust Python's stack."""
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw, max_depth + 1) > max_depth:
        raise BodyError(400, "invalid", f"JSON nested deeper than {max_depth} levels")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyError(400, "invalid", f"invalid JSON: {exc}") from None


def json_depth(raw: bytes, stop_at: int) -> int:
    """Nesting depth of JSON text; anything from `stop_at` up means "at least that deep" (exact for valid JSON;
    invalid text is refused by the parser anyway).

    Strings are dropped and only brackets kept; then each pass of `replace` removes every innermost pair, which
    lowers the depth by exactly one, in C. Once a pass would remove little (long chains: few runs left), the rest
    is counted run by run. Never a Python step per byte."""
    brackets = _STRING.sub(b"", raw).translate(_TO_SQUARE, _NOT_BRACKETS)
    depth = 0
    # A pass costs a C scan of what is left; a run costs a Python step. Passes while each removes at least an
    # eighth (innermost pairs are 2 bytes each), so they shrink geometrically; then the few runs left.
    while brackets and depth < stop_at and brackets.count(b"[]") * 16 >= len(brackets):
        brackets = brackets.replace(b"[]", b"")
        depth += 1
    level = deepest = 0
    for run in _RUNS.finditer(brackets):
        if depth + deepest >= stop_at:
            break
        length = run.end() - run.start()
        level += length if brackets[run.start()] == 0x5B else -length
        deepest = max(deepest, level)
    return depth + deepest


async def read_json(request: Request, limits: BodyLimits) -> Any:
    return parse_json(await read_body(request, limits), limits.max_depth)
