"""Hostile bodies against every endpoint of the web process (real uvicorn, real Redis db 12): never a 5xx, never a
job. Hand-made cases (nesting, huge numbers, invalid UTF-8, NaN, duplicate keys, chunked and oversized) and
hypothesis-generated ones. Every JSON endpoint reads through `bridge.body`, so each case is judged the same way."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.app import create_app
from bridge.body import BodyError, json_depth, parse_json
from bridge.routing import parse_routing
from bridge.settings import Settings

DB = 12
QUEUE = "hostile:queue"
HOOK, READ, WRITE, GH_SECRET = "hook-tok-hostile", "read-tok-hostile", "write-tok-hostile", "gh-secret-hostile"
MAX_BODY = 256 * 1024
ROUTING = parse_routing({
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [{"name": "api", "match": {"project": "P", "definition": "1"},
                "environments": [{"name": "dev", "repository": "gitops", "file": "api/dev.yaml"},
                                 {"name": "prod", "repository": "gitops", "file": "api/prod.yaml"}]}],
})


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": f"sha256={digest}"}


JSON_HEADERS = {"Content-Type": "application/json"}
# (method, path, headers for a body): every route of create_app(settings, routing)
ENDPOINTS: list[tuple[str, str, Callable[[bytes], dict[str, str]]]] = [
    ("POST", "/webhooks/azure-devops", lambda b: {"X-Bridge-Token": HOOK, **JSON_HEADERS}),
    ("POST", "/webhooks/github", lambda b: {**signed(b), **JSON_HEADERS}),
    ("POST", "/api/promotions", lambda b: {"Authorization": f"Bearer {WRITE}", **JSON_HEADERS}),
    ("PUT", "/api/holds/api/dev", lambda b: {"Authorization": f"Bearer {WRITE}", **JSON_HEADERS}),
    ("DELETE", "/api/holds/api/prod", lambda b: {"Authorization": f"Bearer {WRITE}", **JSON_HEADERS}),
    ("GET", "/api/deployments", lambda b: {"Authorization": f"Bearer {READ}", **JSON_HEADERS}),
    ("GET", "/api/deployments/some-id", lambda b: {"Authorization": f"Bearer {READ}", **JSON_HEADERS}),
    ("GET", "/api/holds", lambda b: {"Authorization": f"Bearer {READ}", **JSON_HEADERS}),
    ("GET", "/healthz", lambda b: JSON_HEADERS),
    ("GET", "/readyz", lambda b: JSON_HEADERS),
    ("GET", "/metrics", lambda b: JSON_HEADERS),
]
READS_JSON = ("/webhooks/azure-devops", "/webhooks/github", "/api/promotions", "/api/holds/api/dev")

NESTED = b"[" * 100_000 + b"]" * 100_000
HAND_MADE: dict[str, bytes] = {
    "100k nested arrays": NESTED,
    "nested objects": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "nesting just over the limit": b"[" * 65 + b"]" * 65,
    "deep inside a valid envelope": b'{"eventType": "build.complete", "resource": {"id": 1, "x": ' + b"[" * 500
                                    + b"]" * 500 + b"}}",
    "unbalanced": b"[" * 1000,
    "huge exponent": b'{"build_id": 1e999999, "to": "prod"}',
    "huge integer": b'{"build_id": ' + b"9" * 5000 + b', "to": "prod"}',
    "negative huge": b"[-1e400]",
    "NaN": b'{"build_id": NaN, "to": "prod", "reason": NaN}',
    "Infinity": b'{"build_id": Infinity, "to": "prod"}',
    "invalid UTF-8": b'{"reason": "\xff\xfe\xfd", "to": "prod"}',
    "lone surrogate escape": b'{"reason": "\\ud800", "to": "prod"}',
    "overlong UTF-8": b'{"reason": "\xc0\xaf"}',
    "UTF-8 BOM": b'\xef\xbb\xbf{"reason": "x"}',
    "duplicate keys": b'{"build_id": 1, "build_id": "one", "to": 5, "to": "prod", "eventType": "build.complete",'
                      b' "eventType": ["x"], "resource": 1, "resource": {"id": -1}}',
    "empty": b"",
    "null": b"null",
    "a string": b'"hello"',
    "an array": b"[1, 2, 3]",
    "whitespace": b" \n\t ",
    "NUL bytes": b"\x00" * 100,
    "two documents": b"{}{}",
    "oversized": b"[" + b"0," * (MAX_BODY // 2) + b"0]",
}


def settings_for(url: str) -> Settings:
    return Settings(redis_url=url, queue_name=QUEUE, key_prefix="hostile",
                    webhook={"tokens": [HOOK], "max_body_bytes": MAX_BODY},
                    api={"read_tokens": [READ], "write_tokens": [WRITE]},
                    github={"webhook_secret": GH_SECRET})


@pytest.fixture
def bridge(redis_url: Callable[[int], str], serve: Callable[[Any], Any]) -> Iterator[tuple[httpx.Client, str]]:
    url = redis_url(DB)
    server = serve(create_app(settings_for(url), ROUTING))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, url


def jobs(url: str) -> int:
    with redis.Redis.from_url(url) as r:
        return int(r.zcard(QUEUE))


def send(client: httpx.Client, method: str, path: str, headers: dict[str, str], body: Any) -> httpx.Response:
    return client.request(method, path, content=body, headers=headers)


def test_hand_made_bodies_on_every_endpoint(bridge: tuple[httpx.Client, str]) -> None:
    client, url = bridge
    for name, body in HAND_MADE.items():
        for method, path, headers in ENDPOINTS:
            response = send(client, method, path, headers(body), body)
            assert response.status_code < 500, (name, method, path, response.text)
            if path in READS_JSON and name in ("100k nested arrays", "nested objects", "nesting just over the limit"):
                assert response.status_code == 400, (name, path, response.text)
                assert "nested deeper than 64" in response.text or "depth limit" in response.text, response.text
            if path in READS_JSON and name == "oversized":
                assert response.status_code == 413, (name, path)
    assert jobs(url) == 0


def test_chunked_bodies_on_every_endpoint(bridge: tuple[httpx.Client, str]) -> None:
    """No Content-Length: the limit is counted while streaming, the answer comes without reading the rest."""
    client, url = bridge
    for method, path, headers in ENDPOINTS:
        def chunks(total: int = 4 * MAX_BODY, size: int = 16 * 1024) -> Iterator[bytes]:
            yield b"["
            for _ in range(total // size):
                yield b"0," * (size // 2)

        for body in (chunks(), iter([b"[" * 1000, b"]" * 1000]), iter([NESTED[:50_000], NESTED[-50_000:]])):
            hdrs = headers(b"") if path != "/webhooks/github" else {"X-Hub-Signature-256": "sha256=00", **JSON_HEADERS}
            try:
                response = send(client, method, path, hdrs, body)
            except httpx.RemoteProtocolError:
                continue  # the server answered early (413) and closed while we were still sending: fine
            assert response.status_code < 500, (method, path, response.text)
    assert jobs(url) == 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
hostile_bodies = st.one_of(
    st.binary(max_size=500),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.builds(lambda n, v: b'{"a":' * n + json.dumps(v).encode() + b"}" * n, st.integers(1, 2000), json_values),
    st.builds(lambda body, cut: body[:cut], json_values.map(lambda v: json.dumps(v).encode()), st.integers(0, 50)),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=hostile_bodies, endpoint=st.sampled_from(ENDPOINTS))
def test_generated_bodies_never_5xx_and_never_queue(
    body: bytes, endpoint: tuple[str, str, Callable[[bytes], dict[str, str]]], bridge: tuple[httpx.Client, str]
) -> None:
    client, url = bridge
    method, path, headers = endpoint
    response = send(client, method, path, headers(body), body)
    assert response.status_code < 500, (method, path, body[:80], response.text)
    assert jobs(url) == 0


# -- the reader alone (pure) -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "depth"), [
    (b"1", 0), (b'"[[["', 0), (b"[]", 1), (b"{}", 1), (b'{"a": [1, {"b": []}]}', 4), (b"[[], [[]], {}]", 3),
    (b'["\\\\", ["]"]]', 2), (b'{"k\\"[": [[[]]]}', 4),
    (b"[" * 10 + b"]" * 10, 10), (b"[[[[]]][[[]]][]]", 4), (b"[" + b"[[]]," * 100 + b"[]]", 3),
    (b"[" * 300 + b"[],[]" + b"]" * 300, 301), (b"[[" + b"[]" * 50 + b"]]", 3),
])
def test_json_depth(raw: bytes, depth: int) -> None:
    assert json_depth(raw, 100) == depth


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[" * 65 + b"]" * 65, "nested deeper than 64 levels"),
    (NESTED, "nested deeper than 64 levels"),  # refused on the bytes, before anything is built
    (b"[NaN]", "invalid JSON"),
    (b"[1e999]", "invalid JSON"),
    (b'"\xff"', "invalid JSON"),
    (b"", "invalid JSON"),
])
def test_parse_json_refuses(raw: bytes, reason: str) -> None:
    with pytest.raises(BodyError, match=reason) as info:
        parse_json(raw, 64)
    assert info.value.status == 400


def test_parse_json_accepts_up_to_the_limit() -> None:
    assert parse_json(b"[" * 64 + b"]" * 64, 64) is not None
    assert parse_json(b'{"a": "' + b"[" * 500 + b'"}', 64) == {"a": "[" * 500}  # brackets in strings do not count
