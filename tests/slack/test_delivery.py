"""Delivery to Slack end to end (signed requests to the real Bolt endpoint, the fake Slack): a
thread post whose send fails during a Slack outage arrives later, once, also across a restart;
one Slack refuses for good is given up at once; a run whose channel Slack refuses
(``channel_not_found``) is given up and logged once, and the runs after it report as usual,
while a run message lost to an outage is posted once Slack is back; a busy run's message is
edited at most about once a second; runs started outside Slack (REST API, schedules) report in
their pipeline's channel."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest
import sqlalchemy as sa

from core.access import Role
from core.commands import TriggerRun
from core.model import Actor
from core.states import PostStatus
from storage.slack import RunMessage, SlackState
from storage.store import SqlStore
from storage.tables import T
from tests.pipelines import gated, one_build
from tests.slack.fake_slack import Call, FakeSlack
from tests.slack.harness import ALICE, BOB, CHANNEL, RELEASE_MANAGERS, Bot, Grants, StartBot, button, until

PIPELINE_CHANNEL, DEFAULT_CHANNEL, GONE_CHANNEL = "C0PIPELINE", "C0DEFAULT", "C0GONE"
BUSY = "name: busy\nstages:\n" + "".join(
    f"  - {{name: s{n}, jobs: [{{name: j, run: 'sleep 0.25'}}]}}\n" for n in range(12)
)


PIPELINES = {
    "gated": gated(compile='"sleep 0.5"'),
    "busy": BUSY,
    "routed": one_build("routed", head=f"channel: {PIPELINE_CHANNEL}"),
    "unrouted": one_build("unrouted"),
    "lost-channel": one_build(
        "lost-channel", "\"echo 'it broke' >&2; exit 1\"", head=f"channel: {GONE_CHANNEL}"
    ),
}


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    grants: Grants = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER, RELEASE_MANAGERS]}
    return await start_bot(PIPELINES, grants, slack_channel=DEFAULT_CHANNEL)


def _cards(fake: FakeSlack, ref: str) -> list[Call]:
    """Every attempt to post ``ref``'s approval card, failed or not."""
    return [
        c
        for c in fake.calls_to("chat.postMessage")
        if "thread_ts" in c.args and f"{ref} waits for approval" in c.args.get("text", "")
    ]


async def _run_message_then_outage(bot: Bot, times: int) -> tuple[str, Call]:
    """Alice starts gated; once its message is up, Slack fails the next ``times`` posts."""
    ref = await bot.trigger(ALICE, "run gated")
    message = await bot.run_post(ref)
    assert bot.run(ref).run.status == "running"  # (its build takes half a second: no card yet)
    bot.fake.fail_next("chat.postMessage", "internal_error", status=500, times=times)
    return ref, message


async def test_a_gate_card_lost_to_a_slack_outage_arrives_later_once(bot: Bot) -> None:
    ref, message = await _run_message_then_outage(bot, times=2)
    await until(lambda: len(_cards(bot.fake, ref)) >= 1, what="the first try")
    card = await bot.fake.wait_for(
        "chat.postMessage", lambda c: c.ok and f"{ref} waits for approval" in c.args.get("text", ""), 10
    )
    first, second, third = _cards(bot.fake, ref)
    assert (first.status, first.response["error"]) == (500, "internal_error")
    assert (second.status, second.response["error"]) == (500, "internal_error")
    assert third is card and card.args["thread_ts"] == message.response["ts"]
    key = f"gate:{bot.gate(ref).id}"
    await until(
        lambda: SlackState(bot.store).post_ts(bot.run(ref).run.id, key) == card.response["ts"],
        what="the card's ts kept",
    )

    # the card that made it works like any other, and nothing is posted twice
    await bot.press(BOB, "gate_approve", button(card, "gate_approve")["value"], card.response["ts"])
    await bot.until_status(ref, "succeeded")
    await bot.fake.wait_for("chat.postMessage", lambda c: f"{ref} succeeded" in c.args.get("text", ""))
    await asyncio.sleep(1.5)  # (time for a wrong second try)
    assert len([c for c in _cards(bot.fake, ref) if c.ok]) == 1
    top = [c for c in bot.fake.calls_to("chat.postMessage") if "thread_ts" not in c.args]
    assert len(top) == 1


async def test_the_retries_wait_longer_each_time(bot: Bot) -> None:
    ref, _ = await _run_message_then_outage(bot, times=3)
    tries = []
    for n in range(1, 5):
        await until(lambda n=n: len(_cards(bot.fake, ref)) >= n, timeout=15, what=f"try {n}")
        tries.append(time.monotonic())
    assert [c.ok for c in _cards(bot.fake, ref)] == [False, False, False, True]
    waits = [b - a for a, b in itertools.pairwise(tries)]
    assert waits[0] >= 0.9 and waits[1] >= 1.9 and waits[2] >= 3.9, waits  # 1 s, 2 s, 4 s
    assert waits[2] < 6.0, waits


async def test_a_post_waiting_for_its_retry_is_sent_after_a_restart(bot: Bot) -> None:
    ref, _ = await _run_message_then_outage(bot, times=1)
    await until(lambda: _cards(bot.fake, ref), what="the failed try")
    started = time.monotonic()
    await bot.stop()  # before the retry is due (1 s after the failure)
    assert time.monotonic() - started < 1.0
    assert len(_cards(bot.fake, ref)) == 1
    pending = SlackState(SqlStore(bot.settings.database_url)).pending_posts()
    assert [(p.key.split(":")[0], p.attempts) for p in pending] == [("gate", 1)]

    await bot.start()
    card = await bot.fake.wait_for(
        "chat.postMessage", lambda c: c.ok and f"{ref} waits for approval" in c.args.get("text", ""), 10
    )
    assert card.args["channel"] == CHANNEL
    await asyncio.sleep(1.5)
    assert [c.ok for c in _cards(bot.fake, ref)] == [False, True]
    assert SlackState(bot.store).pending_posts() == []


async def test_a_busy_run_edits_its_message_at_most_about_once_a_second(bot: Bot) -> None:
    edits: dict[str, list[float]] = {}

    async def stamp() -> None:
        seen = 0
        while True:
            calls = await bot.fake.wait_for_count("chat.update", seen + 1, timeout=60)
            at = time.monotonic()
            for call in calls[seen:]:
                edits.setdefault(call.args["ts"], []).append(at)
            seen = len(calls)

    watcher = asyncio.create_task(stamp())
    try:
        ref = await bot.trigger(ALICE, "run busy")
        message = await bot.run_post(ref)
        await bot.until_status(ref, "succeeded", timeout=30)
        ts = message.response["ts"]
        await until(lambda: "succeeded" in bot.run_message(ts)["text"], what="the final edit")
    finally:
        watcher.cancel()
    transitions = len(bot.events(ref))
    times = edits[ts]
    # (it ran for seconds, so it was edited several times, and far fewer than it moved)
    assert transitions >= 60 and 3 <= len(times) < transitions / 4, (transitions, times)
    # every edit but the last waits a second after the one before; the final state shows at once
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.9 for gap in gaps[:-1]), gaps
    per_second = [sum(1 for t in times if start <= t < start + 1.0) for start in times]
    assert max(per_second) <= 2, per_second
    assert set(edits) == {ts}  # (no other message was edited)


async def test_runs_started_outside_slack_report_in_their_pipelines_channel(bot: Bot) -> None:
    assert bot.client is not None
    auth = bot.api_auth("ci")

    over_rest = await bot.client.post("/api/v1/pipelines/routed/runs", json={}, headers=auth)
    assert over_rest.status == 202, await over_rest.text()
    posted = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "routed#1" in c.args.get("text", "") and "thread_ts" not in c.args
    )
    assert posted.args["channel"] == PIPELINE_CHANNEL
    assert "triggered by ci via rest" in str(posted.args["blocks"])

    # the scheduler triggers through the same service, as its schedule's owner
    decision = await bot.shipyard.orchestrator.handle(
        TriggerRun(pipeline="routed", actor=Actor("nightly", "schedule"))
    )
    assert decision.accepted, decision.reason
    scheduled = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "routed#2" in c.args.get("text", "") and "thread_ts" not in c.args
    )
    assert scheduled.args["channel"] == PIPELINE_CHANNEL
    assert "triggered by nightly via schedule" in str(scheduled.args["blocks"])
    result = await bot.fake.wait_for(
        # (in the thread: the run's message says "succeeded" too when the run ends before it is posted)
        "chat.postMessage",
        lambda c: "routed#2 succeeded" in c.args.get("text", "") and "thread_ts" in c.args,
        timeout=10,
    )
    assert result.args["channel"] == PIPELINE_CHANNEL and result.args["thread_ts"] == scheduled.response["ts"]

    # a pipeline that names no channel reports in the configured default
    unrouted = await bot.client.post("/api/v1/pipelines/unrouted/runs", json={}, headers=auth)
    assert unrouted.status == 202, await unrouted.text()
    fallback = await bot.fake.wait_for("chat.postMessage", lambda c: "unrouted#1" in c.args.get("text", ""))
    assert fallback.args["channel"] == DEFAULT_CHANNEL
    assert not [c for c in bot.fake.calls_to("chat.postMessage") if c.args.get("channel") == CHANNEL]


async def test_a_post_slack_refuses_for_good_is_given_up_at_once(bot: Bot) -> None:
    # (the channel was archived after the run's message was posted: no wait makes a retry work)
    ref, _ = await _run_message_then_outage(bot, times=0)
    bot.fake.fail_next("chat.postMessage", "is_archived")
    await until(lambda: _cards(bot.fake, ref), what="the refused card")
    key = f"gate:{bot.gate(ref).id}"
    post = T["slack_post"]

    def row() -> tuple[str, int, str | None] | None:
        with bot.store.engine.connect() as conn:
            found = conn.execute(
                sa.select(post.c.status, post.c.attempts, post.c.last_error).where(
                    post.c.run_id == bot.run(ref).run.id, post.c.key == key
                )
            ).first()
        return None if found is None else (found[0], found[1], found[2])

    await until(lambda: row() == (PostStatus.GAVE_UP, 1, "is_archived"), what="the card given up")
    assert SlackState(bot.store).pending_posts() == []
    await asyncio.sleep(1.5)  # (a retry would be due after 1 s)
    assert len(_cards(bot.fake, ref)) == 1


async def test_a_run_whose_channel_slack_refuses_holds_up_no_other_run(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.slack.notifier")
    bot.fake.channels[GONE_CHANNEL] = None  # (deleted, or the bot was never invited)
    assert bot.client is not None
    auth = bot.api_auth("ci")

    lost = await bot.client.post("/api/v1/pipelines/lost-channel/runs", json={}, headers=auth)
    assert lost.status == 202, await lost.text()
    refused = await bot.fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == GONE_CHANNEL)
    assert (refused.status, refused.response) == (200, {"ok": False, "error": "channel_not_found"})
    await bot.until_status("lost-channel#1", "failed")

    after = await bot.client.post("/api/v1/pipelines/routed/runs", json={}, headers=auth)
    assert after.status == 202, await after.text()
    message = await bot.fake.wait_for(
        "chat.postMessage",
        lambda c: c.ok and "routed#1" in c.args.get("text", "") and "thread_ts" not in c.args,
    )
    assert message.args["channel"] == PIPELINE_CHANNEL
    result = await bot.fake.wait_for(
        "chat.postMessage",
        lambda c: c.ok and "routed#1 succeeded" in c.args.get("text", "") and "thread_ts" in c.args,
        timeout=10,
    )
    assert result.args["thread_ts"] == message.response["ts"]

    # the refused run was tried once, its failure and result were not sent to the same refusal,
    # and saying so took one warning naming the run, the channel and the error
    assert [c.args["channel"] for c in bot.fake.calls_to("chat.postMessage")].count(GONE_CHANNEL) == 1
    given_up = SlackState(bot.store).message(bot.run("lost-channel#1").run.id)
    assert given_up is not None and given_up.ts is None and given_up.gave_up_at is not None
    assert given_up.last_error == "channel_not_found"
    warned = [r.getMessage() for r in caplog.records if "lost-channel#1" in r.getMessage()]
    assert warned == [
        f"gave up posting the message of lost-channel#1 to Slack channel {GONE_CHANNEL}: "
        "channel_not_found (it is not reported there)"
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records if "lost-channel#1" in r.getMessage())


async def test_a_run_message_lost_to_an_outage_is_posted_once_slack_is_back(bot: Bot) -> None:
    bot.fake.fail_next("chat.postMessage", "internal_error", status=500, times=2)
    assert bot.client is not None
    posted = await bot.client.post("/api/v1/pipelines/routed/runs", json={}, headers=bot.api_auth("ci"))
    assert posted.status == 202, await posted.text()
    message = await bot.fake.wait_for(
        "chat.postMessage",
        lambda c: c.ok and "routed#1" in c.args.get("text", "") and "thread_ts" not in c.args,
    )
    tries = [c for c in bot.fake.calls_to("chat.postMessage") if "thread_ts" not in c.args]
    assert [c.status for c in tries] == [500, 500, 200] and tries[-1] is message
    run_id, state = bot.run("routed#1").run.id, SlackState(bot.store)
    await until(lambda: (m := state.message(run_id)) and m.ts == message.response["ts"], what="its ts")
    assert state.message(run_id) == RunMessage(run_id, PIPELINE_CHANNEL, message.response["ts"])
