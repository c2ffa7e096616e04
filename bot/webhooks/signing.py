"""Signatures, both ways.

Outgoing deliveries, incoming generic triggers and gate callbacks follow Standard Webhooks
(https://www.standardwebhooks.com): the headers ``webhook-id``, ``webhook-timestamp`` (Unix
seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed
with the base64 secret after ``whsec_``. A receiver checks the signature and refuses timestamps
more than five minutes away from its clock, which is what makes a captured request useless later.

GitHub signs ``push`` events its own way: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the
body>`` keyed with the secret text as given (no timestamp; the delivery id deduplicates).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

PREFIX = "whsec_"
#: how far a signed timestamp may be from our clock, either way
TOLERANCE_S = 300


class BadSignature(Exception):
    """A request whose signature or timestamp does not check out; the message says which."""


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_github_secret() -> str:
    """A secret to paste into GitHub's webhook form (any text works there; this is random)."""
    return secrets.token_urlsafe(32)


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for ``body``."""
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(secret: str, sent: Mapping[str, str], body: bytes, now: float) -> str:
    """Check a Standard Webhooks request; returns its ``webhook-id`` or raises ``BadSignature``.
    Several space-separated signatures may be sent (during a secret rotation): one must match."""
    msg_id = sent.get("webhook-id", "")
    stamp = sent.get("webhook-timestamp", "")
    given = sent.get("webhook-signature", "")
    if not (msg_id and stamp and given):
        raise BadSignature("unsigned: send webhook-id, webhook-timestamp and webhook-signature")
    if not (msg_id.isascii() and given.isascii()):  # (other bytes arrive as surrogates: unsignable)
        raise BadSignature("webhook-id and webhook-signature must be ASCII")
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise BadSignature("webhook-timestamp must be Unix seconds")
    if abs(now - int(stamp)) > TOLERANCE_S:
        raise BadSignature(
            f"webhook-timestamp is {int(now) - int(stamp)} s away from the server's clock "
            f"(at most {TOLERANCE_S} s): a stale or replayed request"
        )
    expected = sign(secret, msg_id, int(stamp), body).partition(",")[2]
    for part in given.split():
        version, _, value = part.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected.encode()):
            return msg_id
    raise BadSignature("webhook-signature does not match the body and the secret")


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_github(secret: str, given: str | None, body: bytes) -> None:
    """Check ``X-Hub-Signature-256``; raises ``BadSignature``."""
    if not given:
        raise BadSignature("unsigned: GitHub sends X-Hub-Signature-256 when the webhook has a secret")
    if not given.isascii() or not hmac.compare_digest(
        given.strip().encode(), github_signature(secret, body).encode()
    ):
        raise BadSignature("X-Hub-Signature-256 does not match the body and the secret")


def valid_secret(secret: str) -> bool:
    try:
        return secret.startswith(PREFIX) and len(_key(secret)) >= 24
    except (binascii.Error, ValueError):
        return False
