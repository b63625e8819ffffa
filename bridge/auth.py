"""Constant-time credential checks: the webhook's Basic pairs and secret header, and bearer tokens for /api/*.

Every presented value is compared with every accepted one (no early exit), and both sides are hashed first so the
comparison takes the same time whatever the lengths; the time taken says nothing about which secret was close.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping

from pydantic import SecretStr

from bridge.errors import ConfigError
from bridge.settings import WebhookSettings

REALM = "gitops-bridge"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _digests(secrets: Iterable[SecretStr]) -> tuple[bytes, ...]:
    return tuple(_digest(s.get_secret_value().encode()) for s in secrets if s.get_secret_value())


def matches_any(presented: bytes, accepted: tuple[bytes, ...]) -> bool:
    """True when `presented` equals one of the accepted values (given as sha256 digests), in constant time."""
    probe = _digest(presented)
    ok = False
    for digest in accepted:
        ok |= hmac.compare_digest(probe, digest)
    return ok


def basic_credentials(authorization: str | None) -> bytes | None:
    """The decoded `user:password` of an `Authorization: Basic ...` header, or None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if b":" in decoded else None


def bearer_token(authorization: str | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        return token.encode("latin-1")
    except UnicodeEncodeError:
        return None


class WebhookAuth:
    """Accepts a request that presents ANY configured credential: a Basic pair or a secret header value."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.header_name = settings.header_name.lower()
        self.tokens = _digests(settings.tokens)
        self.basic = _digests(settings.basic)
        self.insecure = settings.allow_unauthenticated
        if not self.tokens and not self.basic and not self.insecure:
            raise ConfigError(
                "webhook: no credential configured (set BRIDGE_WEBHOOK__TOKENS or BRIDGE_WEBHOOK__BASIC); "
                "to accept unauthenticated webhooks anyway set BRIDGE_WEBHOOK__ALLOW_UNAUTHENTICATED=true"
            )
        self.challenge = self._challenge()

    def _challenge(self) -> tuple[list[tuple[str, str]], str]:
        headers: list[tuple[str, str]] = []
        schemes: list[str] = []
        if self.basic:
            headers.append(("www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'))
            schemes.append("HTTP Basic")
        if self.tokens:
            headers.append(("www-authenticate", f'Token realm="{REALM}", header="{self.header_name}"'))
            schemes.append(f"the {self.header_name} header")
        return headers, "authentication required: " + " or ".join(schemes)

    def check(self, headers: Mapping[str, str]) -> bool:
        """True when the request may pass. `headers` is case-insensitive (Starlette's Headers)."""
        if self.insecure and not self.tokens and not self.basic:
            return True
        ok = False
        if self.tokens:
            value = headers.get(self.header_name)
            if value:
                ok |= matches_any(value.strip().encode("latin-1", "replace"), self.tokens)
        if self.basic:
            pair = basic_credentials(headers.get("authorization"))
            if pair is not None:
                ok |= matches_any(pair, self.basic)
        return ok


class BearerAuth:
    """Bearer tokens for the operator API; `check(headers)` is constant time over all accepted tokens."""

    def __init__(self, tokens: Iterable[SecretStr]) -> None:
        self.tokens = _digests(tokens)

    def check(self, headers: Mapping[str, str]) -> bool:
        token = bearer_token(headers.get("authorization"))
        return token is not None and matches_any(token, self.tokens)

    challenge_header = ("www-authenticate", f'Bearer realm="{REALM}"')
