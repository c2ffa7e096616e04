"""Schemathesis hooks for CI (loaded with SCHEMATHESIS_HOOKS).

A fuzzer draws a few short Idempotency-Key values and reuses them across operations and
bodies, which the API rightly answers with 422 (a key reused for another request). Our own
tests check that; here every request gets a fresh key so the fuzzer tests the operations."""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
