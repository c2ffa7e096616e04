"""Input no one means to send, end to end through the Bolt endpoint: characters a database
cannot store, button values that are not Shipyard's, buttons it does not know, durations and
names that are almost right. Each gets an ephemeral answer saying what was wrong, and nothing
changes: no run, no lock, no decided gate."""

from __future__ import annotations

from typing import Any

import pytest

from core.access import Role
from tests.pipelines import GATED_ON_REF, SHOP
from tests.slack.harness import (
    ALICE,
    BOB,
    RELEASE_MANAGERS,
    ROOT,
    Bot,
    StartBot,
    button,
)

GRANTS = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER, RELEASE_MANAGERS], ROOT: [Role.ADMIN]}
ENVIRONMENTS = {"staging": {}, "production": {}}


@pytest.fixture
async def bot(start_bot: StartBot, db_url: str) -> Bot:
    return await start_bot(
        {"shop": SHOP, "gated": GATED_ON_REF}, GRANTS, database_url=db_url, environments=ENVIRONMENTS
    )


def _ephemeral(reply: dict[str, Any]) -> str:
    assert reply["response_type"] == "ephemeral", reply
    return str(reply["text"])


async def _gate_card(bot: Bot) -> tuple[str, str]:
    """gated#1 started by Alice and waiting at its gate: the Approve button's value, and the card's ts."""
    assert "Started *gated#1*" in _ephemeral(await bot.say(ALICE, "run gated ref=abc1234"))
    card = await bot.gate_card("gated#1")
    return button(card, "gate_approve")["value"], card.args["thread_ts"]


@pytest.mark.parametrize("duration", ["-5m", "+5m", "-1d"])
async def test_a_signed_lock_duration_is_refused_not_read_as_part_of_the_reason(
    bot: Bot, duration: str
) -> None:
    said = _ephemeral(await bot.say(ALICE, f'lock staging "db migration" for {duration}'))
    assert f"invalid lock duration '{duration}'" in said, said
    assert "No environment is locked" in _ephemeral(await bot.say(ALICE, "locks"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("why prodcution", "Unknown environment `prodcution`. Did you mean `production`?"),
        ("why production shpo", "Unknown pipeline `shpo`. Did you mean `shop`?"),
        ("why staging for 2h", "Unknown pipeline `for`."),
        ("queue prodcution", "Unknown environment `prodcution`. Did you mean `production`?"),
    ],
)
async def test_why_and_queue_name_an_environment_or_pipeline_that_does_not_exist(
    bot: Bot, text: str, expected: str
) -> None:
    """Before, each said all was clear ("Nothing stands in the way", "nothing deploying")."""
    assert expected in _ephemeral(await bot.say(ALICE, text))
