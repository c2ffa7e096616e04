"""The web view in a real headless browser: Debian's Chromium driven by Playwright, against the
Shipyard bot on the fake Slack (the Slack tests' fixtures); see ``tests/browser.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.browser import chromium_path
from tests.slack.conftest import fake, start_bot  # noqa: F401  (the bot the pages belong to)


@pytest.fixture
async def chromium() -> AsyncIterator[object]:
    """A headless Chromium (``playwright.async_api.Browser``)."""
    path = chromium_path()
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()
