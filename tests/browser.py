"""Debian's Chromium for the web view's tests (driven by Playwright): skipped when it is not
installed, unless ``SHIPYARD_REQUIRE_BROWSER=1`` (CI), which turns that into a failure."""

from __future__ import annotations

import os

import pytest

CHROMIUM = os.environ.get("SHIPYARD_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("SHIPYARD_REQUIRE_BROWSER") == "1"


def chromium_path() -> str:
    """The browser to run; skips the test (fails it when required) when there is none."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if REQUIRE:
        pytest.fail(message + " (required: SHIPYARD_REQUIRE_BROWSER=1)")
    pytest.skip(message)
