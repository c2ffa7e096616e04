"""Signatures against implementations that are not ours: the ``standardwebhooks`` package, and
the test vector GitHub publishes for ``X-Hub-Signature-256``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import standardwebhooks

from bot.webhooks import signing


def test_our_signatures_verify_with_the_standard_webhooks_package() -> None:
    secret = signing.new_secret()
    assert signing.valid_secret(secret) and secret != signing.new_secret()
    body = b'{"type":"run.finished","data":{"run":{"ref":"web#1"}}}'
    now = int(time.time())
    headers = signing.headers(secret, "msg_1", now, body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == {
        "type": "run.finished",
        "data": {"run": {"ref": "web#1"}},
    }
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body + b" ", headers)


def test_we_verify_what_the_standard_webhooks_package_signs() -> None:
    secret = signing.new_secret()
    at = datetime.now(UTC)
    body = '{"parameters":{}}'
    theirs = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": "v1,bm90IGl0 " + standardwebhooks.Webhook(secret).sign("msg_2", at, body),
    }
    assert signing.verify(secret, theirs, body.encode(), at.timestamp()) == "msg_2"
    with pytest.raises(signing.BadSignature, match="does not match"):
        signing.verify(secret, theirs, b'{"parameters":{"x":1}}', at.timestamp())
    with pytest.raises(signing.BadSignature, match="stale or replayed"):
        signing.verify(secret, theirs, body.encode(), at.timestamp() + 301)
    with pytest.raises(signing.BadSignature, match="unsigned"):
        signing.verify(secret, {"webhook-id": "m"}, body.encode(), at.timestamp())
    with pytest.raises(signing.BadSignature, match="Unix seconds"):
        signing.verify(secret, {**theirs, "webhook-timestamp": "soon"}, body.encode(), at.timestamp())


def test_github_signatures_match_githubs_published_example() -> None:
    # docs.github.com, "Validating webhook deliveries": this secret and payload give this signature
    secret, payload = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signing.github_signature(secret, payload) == expected
    signing.verify_github(secret, expected, payload)
    with pytest.raises(signing.BadSignature, match="does not match"):
        signing.verify_github(secret, expected, b"Hello, World?")
    with pytest.raises(signing.BadSignature, match="unsigned"):
        signing.verify_github(secret, None, payload)
