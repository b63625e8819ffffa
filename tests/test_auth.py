"""Credential checks (pure; no server)."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers

from bridge.auth import BearerAuth, WebhookAuth, basic_credentials, bearer_token, matches_any
from bridge.errors import ConfigError
from bridge.settings import WebhookSettings


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


def auth(**kwargs: object) -> WebhookAuth:
    return WebhookAuth(WebhookSettings.model_validate(kwargs))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        (basic("u:p"), b"u:p"),
        (basic(":pat-only"), b":pat-only"),
        (basic("u:p:with:colons"), b"u:p:with:colons"),
        ("basic " + base64.b64encode(b"u:p").decode(), b"u:p"),   # scheme is case-insensitive
        (basic("no-colon"), None),
        ("Basic", None),
        ("Basic !!!", None),
        ("Bearer abc", None),
    ],
)
def test_basic_credentials(header: str | None, expected: bytes | None) -> None:
    assert basic_credentials(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("Bearer abc", b"abc"), ("bearer  abc ", b"abc"), ("Bearer", None), ("Basic abc", None)],
)
def test_bearer_token(header: str | None, expected: bytes | None) -> None:
    assert bearer_token(header) == expected


def test_matches_any_is_exact() -> None:
    import hashlib

    accepted = (hashlib.sha256(b"secret-1").digest(), hashlib.sha256(b"secret-2").digest())
    assert matches_any(b"secret-2", accepted)
    assert not matches_any(b"secret-", accepted)
    assert not matches_any(b"secret-12", accepted)
    assert not matches_any(b"", accepted)
    assert not matches_any(b"secret-1", ())


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"X-Bridge-Token": "old-token"}, True),
        ({"x-bridge-token": "new-token"}, True),              # header names are case-insensitive
        ({"X-Bridge-Token": " new-token "}, True),
        ({"X-Bridge-Token": "NEW-TOKEN"}, False),             # values are not
        ({"X-Bridge-Token": ""}, False),
        ({"Authorization": basic("ado:pass-1")}, True),
        ({"Authorization": basic("ado:pass-2")}, False),
        ({"Authorization": basic("other:pass-1")}, False),
        ({"Authorization": basic("ado:pass-1"), "X-Bridge-Token": "wrong"}, True),   # any accepted credential
        ({"Authorization": basic("ado:wrong"), "X-Bridge-Token": "old-token"}, True),
        ({}, False),
    ],
)
def test_webhook_auth_accepts_any_configured_credential(headers: dict[str, str], ok: bool) -> None:
    checker = auth(tokens=["old-token", "new-token"], basic=["ado:pass-1"])
    assert checker.check(Headers(headers)) is ok


def test_custom_header_name() -> None:
    checker = auth(header_name="X-Hook-Key", tokens="k1,k2")
    assert checker.check(Headers({"x-hook-key": "k2"}))
    assert not checker.check(Headers({"X-Bridge-Token": "k2"}))
    headers, reason = checker.challenge
    assert headers == [("www-authenticate", 'Token realm="gitops-bridge", header="x-hook-key"')]
    assert reason == "authentication required: the x-hook-key header"


def test_no_credential_refuses_to_start_unless_insecure_is_explicit() -> None:
    with pytest.raises(ConfigError, match="ALLOW_UNAUTHENTICATED"):
        auth()
    with pytest.raises(ConfigError):
        auth(tokens=[""])  # an empty secret is no secret
    assert auth(allow_unauthenticated=True).check(Headers({}))


def test_insecure_flag_with_credentials_still_checks_them() -> None:
    checker = auth(tokens=["t1"], allow_unauthenticated=True)
    assert not checker.check(Headers({}))
    assert checker.check(Headers({"x-bridge-token": "t1"}))


def test_bearer_auth() -> None:
    checker = BearerAuth([SecretStr("read-1"), SecretStr("write-1")])
    assert checker.check(Headers({"Authorization": "Bearer write-1"}))
    assert not checker.check(Headers({"Authorization": "Bearer write-"}))
    assert not checker.check(Headers({"Authorization": basic("x:write-1")}))
    assert not BearerAuth([]).check(Headers({"Authorization": "Bearer "}))
    assert BearerAuth.challenge_header == ("www-authenticate", 'Bearer realm="gitops-bridge"')
