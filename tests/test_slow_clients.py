"""Slow clients over real sockets: a body that trickles in is cut off with 408 and a closed connection on every
endpoint that reads one, while /healthz and /readyz keep answering."""

from __future__ import annotations

import hashlib
import hmac
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from bridge.app import create_app
from bridge.routing import parse_routing
from bridge.settings import Settings

DB = 13
HOOK, WRITE, GH_SECRET = "hook-tok-slow", "write-tok-slow", "gh-secret-slow"
ROUTING = parse_routing({
    "repositories": {"gitops": {"url": "https://git.example.invalid/gitops.git"}},
    "routes": [{"name": "api", "match": {"project": "P", "definition": "1"},
                "environments": [{"name": "dev", "repository": "gitops", "file": "api/dev.yaml"}]}],
})
DECLARED = 4000  # bytes the client announces; it sends only a few


def headers_for(path: str) -> dict[str, str]:
    if path == "/webhooks/azure-devops":
        return {"X-Bridge-Token": HOOK}
    if path == "/webhooks/github":  # a signature is checked only once the body is in
        return {"X-GitHub-Event": "pull_request",
                "X-Hub-Signature-256": "sha256=" + hmac.new(GH_SECRET.encode(), b"", hashlib.sha256).hexdigest()}
    return {"Authorization": f"Bearer {WRITE}"}


@pytest.fixture
def server(redis_url: Callable[[int], str], serve: Callable[[Any], Any]) -> Iterator[tuple[str, int, str]]:
    settings = Settings(redis_url=redis_url(DB), webhook={"tokens": [HOOK], "body_timeout_seconds": 0.5},
                        api={"write_tokens": [WRITE]}, github={"webhook_secret": GH_SECRET})
    served = serve(create_app(settings, ROUTING))
    parts = urlsplit(served.url)
    assert parts.hostname is not None and parts.port is not None
    yield parts.hostname, parts.port, served.url


def trickle(host: str, port: int, method: str, path: str) -> socket.socket:
    """Headers complete, then 10 of the DECLARED body bytes, then silence."""
    sock = socket.create_connection((host, port), timeout=15)
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
            f"Content-Length: {DECLARED}", *(f"{k}: {v}" for k, v in headers_for(path).items())]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b'{"build":1')
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout bounds the wait)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/webhooks/azure-devops"),
    ("POST", "/webhooks/github"),
    ("POST", "/api/promotions"),
    ("PUT", "/api/holds/api/dev"),
])
def test_a_trickled_body_is_408_and_the_connection_closed(server: tuple[str, int, str], method: str,
                                                          path: str) -> None:
    host, port, _ = server
    with trickle(host, port, method, path) as sock:
        answer = read_until_closed(sock)  # returns only because the server closed the connection
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    assert b"connection: close" in rest.lower()
    assert b"body not received within 0.5 s" in rest


def test_probes_answer_while_slow_clients_hold_connections(server: tuple[str, int, str]) -> None:
    host, port, url = server
    socks = [trickle(host, port, "POST", "/webhooks/azure-devops") for _ in range(50)]
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
        for sock in socks:  # and every one of them is cut off
            assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in socks:
            sock.close()
