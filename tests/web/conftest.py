"""The web view in a real headless browser: Debian's Chromium driven by Playwright, against the
Shipyard bot on the fake Slack (the Slack tests' fixtures). Skipped without ``/usr/bin/chromium``
unless ``SHIPYARD_REQUIRE_BROWSER=1`` (CI), which turns that into a failure."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from tests.slack.conftest import fake, start_bot  # noqa: F401  (the bot the pages belong to)

CHROMIUM = os.environ.get("SHIPYARD_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("SHIPYARD_REQUIRE_BROWSER") == "1"


@pytest.fixture
async def chromium() -> AsyncIterator[object]:
    """A headless Chromium (``playwright.async_api.Browser``)."""
    if not os.access(CHROMIUM, os.X_OK):
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE:
            pytest.fail(message + " (required: SHIPYARD_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()
