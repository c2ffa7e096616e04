"""Slack in ``/metrics``: every Web API request by method and outcome (a 429 included), and how
long a run's message lagged behind the run, through the real Bolt app and the fake Slack."""

from __future__ import annotations

from core.access import Role
from tests.metrics.scrape import TOKEN, fetch
from tests.pipelines import failing
from tests.slack.harness import ALICE, StartBot, run_named, until


async def test_slack_calls_and_a_rate_limit_are_counted_and_the_edit_lag_measured(
    start_bot: StartBot,
) -> None:
    bot = await start_bot(
        {"failing": failing(first="sleep 0.2; ")}, {ALICE: [Role.DEPLOYER]}, metrics_token=TOKEN
    )
    assert bot.client is not None
    before = await fetch(bot.client)
    bot.fake.rate_limit_next("chat.update", retry_after=1)
    reply = await bot.say(ALICE, "run failing")
    ref = run_named(reply)
    message = await bot.run_post(ref)
    await bot.until_status(ref, "failed")
    await bot.fake.wait_for("chat.update", lambda c: c.status == 429, timeout=10)
    ts = message.response["ts"]
    await until(lambda: "failed" in bot.run_message(ts)["text"], timeout=10, what="the final state shown")

    after = await fetch(bot.client)
    calls = "shipyard_slack_api_calls_total"
    assert after.delta(before, calls, method="chat.update", outcome="rate_limited") == 1
    updates = [c for c in bot.fake.calls_to("chat.update") if c.ok]
    assert after.delta(before, calls, method="chat.update", outcome="ok") == len(updates) >= 1
    assert after.delta(before, calls, method="chat.postMessage", outcome="ok") >= 1
    assert after.delta(before, "shipyard_slack_message_edit_lag_seconds_count") >= 1
    # (the rate-limited edit waited its Retry-After of 1 s)
    assert after.delta(before, "shipyard_slack_message_edit_lag_seconds_sum") >= 1.0
