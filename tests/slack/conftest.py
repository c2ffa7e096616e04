"""The fake Slack, and ``start_bot``: the Shipyard bot on it (see :mod:`tests.slack.harness`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.slack.fake_slack import FakeSlack
from tests.slack.harness import Bot, Grants, StartBot, bot_settings


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def start_bot(
    request: pytest.FixtureRequest, tmp_path: Path, fake: FakeSlack
) -> AsyncIterator[StartBot]:
    """``await start_bot(pipelines, grants, database_url=None, **settings)``: a started bot on ``fake``
    and a database (default: a fresh SQLite one), with ``pipelines`` (name → YAML) and ``grants``
    written first; stopped after the test (and before ``fake``)."""
    started: list[Bot] = []

    async def start(
        pipelines: Mapping[str, str] | None = None,
        grants: Grants | None = None,
        *,
        database_url: str | None = None,
        **settings: Any,
    ) -> Bot:
        url = database_url or str(request.getfixturevalue("sqlite_url"))
        bot = Bot(fake, bot_settings(tmp_path, url, fake, pipelines or {}, grants or {}, **settings))
        started.append(bot)
        await bot.start()
        return bot

    yield start
    for bot in reversed(started):
        await bot.stop()
