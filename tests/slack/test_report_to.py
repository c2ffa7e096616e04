"""Where a run started from Slack reports: a typed ``/deploy retry`` where it was typed, a
Retry button where the retried run reported (its channel, and its thread when it was in one),
with the run's thread posts following its message."""

from __future__ import annotations

import asyncio

import pytest

from core.access import Role
from core.commands import ReportTarget, TriggerRun
from core.model import Actor
from tests.pipelines import failing
from tests.slack import signing
from tests.slack.harness import ALICE, CHANNEL, SECRET, Bot, StartBot, buttons_of

ELSEWHERE = "C0ELSEWHERE"
THREAD = "1700000000.000100"


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    return await start_bot({"failing": failing()}, {ALICE: [Role.DEPLOYER]}, slack_channel="C0DEFAULT")


async def test_a_typed_retry_reports_where_it_was_typed(bot: Bot) -> None:
    await bot.say(ALICE, "run failing")
    first = await bot.run_post("failing#1")
    assert first.args["channel"] == CHANNEL
    await bot.until_status("failing#1", "failed")

    token = "retry-elsewhere"
    request = signing.slash_command(
        SECRET,
        "retry failing#1",
        user_id=ALICE,
        channel_id=ELSEWHERE,
        response_url=bot.fake.response_url(token),
    )
    assert (await bot.post(request))[0] == 200
    assert "Retrying as failing#2" in (await bot.fake.wait_response(token)).body["text"]
    retried = await bot.run_post("failing#2")
    assert retried.args["channel"] == ELSEWHERE


async def test_a_retry_button_reports_in_the_thread_its_run_reported_in(bot: Bot) -> None:
    asked = ReportTarget(CHANNEL, THREAD)
    command = TriggerRun(pipeline="failing", actor=Actor(ALICE, "slack"), report_to=asked)
    await asyncio.to_thread(bot.shipyard.service.handle, command)
    first = await bot.fake.wait_for("chat.postMessage", lambda c: "failing#1" in c.args.get("text", ""))
    assert (first.args["channel"], first.args["thread_ts"]) == (CHANNEL, THREAD)
    failure = await bot.thread_post("build/compile", timeout=15)
    assert (failure.args["channel"], failure.args["thread_ts"]) == (CHANNEL, THREAD)  # its thread follows it

    retry = buttons_of(failure)["run_retry"]["value"]
    await bot.press(ALICE, "run_retry", retry, failure.response["ts"])
    second = await bot.fake.wait_for("chat.postMessage", lambda c: "failing#2" in c.args.get("text", ""))
    assert (second.args["channel"], second.args["thread_ts"]) == (CHANNEL, THREAD)
