"""`/deploy dora` through the real Bolt endpoint (signed requests, fake Slack): the four keys
as Block Kit, each with the deployments it rests on; bad input answered with the usage."""

from __future__ import annotations

import pytest

from core.access import Role
from tests.pipelines import SHOP
from tests.slack.harness import ALICE, Bot, StartBot, blocks_of


@pytest.fixture
async def bot(start_bot: StartBot, db_url: str) -> Bot:
    return await start_bot({"shop": SHOP}, {ALICE: [Role.ADMIN]}, database_url=db_url)


async def test_dora_answers_with_the_four_keys_and_refuses_bad_input(bot: Bot) -> None:
    ref = await bot.trigger(ALICE, "run shop version=1.0.0")
    await bot.until_status(ref, "succeeded", "waiting")

    reply = await bot.say(ALICE, "dora staging 30d")
    text = reply["text"]
    assert text.startswith("DORA's four keys for *staging* over 30d")
    assert "*Deployment frequency*: 0.2 a week (1 successful deployments)" in text
    assert "(0 deployments with a known commit time, 1 unknown)" in text
    assert "*Change failure rate*: 0% (0 of 1 deployments)" in text
    assert "*Time to restore*: median n/a (0 restores" in text
    assert [b["type"] for b in blocks_of(reply)] == ["section", "section", "context"]
    assert reply.get("response_type", "ephemeral") == "ephemeral"

    default = await bot.say(ALICE, "dora staging")
    assert "over 30d" in default["text"]

    for line, says in (
        ("dora", "Usage: `/deploy dora <environment> [window]`"),
        ("dora staging month", "for example 7d, 30d or 90d"),
        ("dora moon", "No environment `moon`"),
    ):
        refused = await bot.say(ALICE, line)
        assert refused["text"].startswith(":warning:") and says in refused["text"], refused["text"]
        assert refused.get("response_type", "ephemeral") == "ephemeral"
        assert "Usage: `/deploy dora" in refused["text"]
