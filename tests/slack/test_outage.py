"""Slack while the database is away (SQLite and PostgreSQL, ``tests.outage``): commands and
buttons are answered, to the asker alone, that the database is unreachable, not left unanswered
with a traceback in the log; once it is back, the same press goes through."""

from __future__ import annotations

import logging

import pytest

from core.access import Role
from tests.outage import Outage
from tests.pipelines import gated
from tests.slack.harness import ALICE, BOB, RELEASE_MANAGERS, StartBot, button

UNREACHABLE = ":warning: The database is unreachable; try again shortly."


async def test_commands_and_buttons_during_a_database_outage_say_so_to_the_asker(
    start_bot: StartBot, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bot = await start_bot(
        {"gated": gated()},
        {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER, RELEASE_MANAGERS]},
        database_url=outage.url,
    )
    assert "Started *gated#1*" in (await bot.say(ALICE, "run gated"))["text"]
    card = await bot.gate_card("gated#1")
    approve = button(card, "gate_approve")

    outage.begin(bot.store)
    for text in ("run gated", "runs", "status gated#1"):
        reply = await bot.say(ALICE, text)
        assert (reply["text"], reply["response_type"]) == (UNREACHABLE, "ephemeral"), text
    for action in ("gate_approve", "gate_reject"):  # (reject looks at the gate before its form)
        token = await bot.press(BOB, action, button(card, action)["value"], card.args["thread_ts"])
        pressed = (await bot.fake.wait_response(token)).body
        assert (pressed["text"], pressed["response_type"]) == (UNREACHABLE, "ephemeral"), action
    assert outage.proxy is not None or outage.refused > 0  # the fault happened
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "a traceback"

    outage.end()
    await bot.press(BOB, "gate_approve", approve["value"], card.args["thread_ts"])
    await bot.until_status("gated#1", "succeeded", timeout=30)
    health = [r.getMessage() for r in caplog.records if r.name == "core.runtime.health"]
    assert [m.split(":")[0].split(" after")[0] for m in health] == [
        "database unreachable",
        "database reachable again",
    ]
