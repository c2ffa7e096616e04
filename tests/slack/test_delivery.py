"""Delivery to Slack end to end (signed requests to the real Bolt endpoint, the fake Slack): a
thread post whose send fails during a Slack outage arrives later, once, also across a restart;
a busy run's message is edited at most about once a second; runs started outside Slack (REST
API, schedules) report in their pipeline's channel."""

from __future__ import annotations

import asyncio
import itertools
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.app import SHIPYARD
from bot.config import load_settings
from core.access import Role
from core.commands import TriggerRun
from core.model import Actor
from storage.directory import Directory
from storage.slack import SlackState
from storage.store import SqlStore
from tests.slack.fake_slack import Call, FakeSlack
from tests.slack.test_bot_more import ALICE, BOB, CHANNEL, SECRET, Bot, _button, until

PIPELINE_CHANNEL, DEFAULT_CHANNEL = "C0PIPELINE", "C0DEFAULT"
GATED = """
name: gated
stages:
  - name: build
    jobs: [{name: compile, run: "sleep 0.5"}]
  - name: production
    environment: production
    gate: {approvers: [release-managers]}
    jobs: [{name: deploy, run: "true"}]
"""
BUSY = "name: busy\nstages:\n" + "".join(
    f"  - {{name: s{n}, jobs: [{{name: j, run: 'sleep 0.25'}}]}}\n" for n in range(12)
)
ROUTED = f"""
name: routed
channel: {PIPELINE_CHANNEL}
stages:
  - name: build
    jobs: [{{name: compile, run: "true"}}]
"""
UNROUTED = """
name: unrouted
stages:
  - name: build
    jobs: [{name: compile, run: "true"}]
"""


@pytest.fixture
async def bot(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Bot]:
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    for name, text in (("gated", GATED), ("busy", BUSY), ("routed", ROUTED), ("unrouted", UNROUTED)):
        (pipes / f"{name}.yml").write_text(textwrap.dedent(text))
    store = SqlStore(sqlite_url)
    directory = Directory(store)
    now = datetime.now(UTC)
    directory.grant(ALICE, "role", str(Role.DEPLOYER), now)
    directory.grant(BOB, "role", str(Role.APPROVER), now)
    directory.grant(BOB, "group", "release-managers", now)
    store.dispose()
    async with FakeSlack() as fake:
        settings = load_settings(
            database_url=sqlite_url,
            pipelines_dir=pipes,
            work_dir=tmp_path / "work",
            poll_interval=0.05,
            runner_name="slack-delivery-test",
            slack_bot_token="xoxb-test",
            slack_api_url=fake.base_url,
            slack_signing_secret=SECRET,
            slack_channel=DEFAULT_CHANNEL,
        )
        harness = Bot(fake, settings)
        await harness.start()
        try:
            yield harness
        finally:
            await harness.stop()


def _cards(fake: FakeSlack, ref: str) -> list[Call]:
    """Every attempt to post ``ref``'s approval card, failed or not."""
    return [
        c
        for c in fake.calls_to("chat.postMessage")
        if "thread_ts" in c.args and f"{ref} waits for approval" in c.args.get("text", "")
    ]


async def _run_message_then_outage(bot: Bot, times: int) -> tuple[str, Call]:
    """Alice starts gated; once its message is up, Slack fails the next ``times`` posts."""
    reply = await bot.say(ALICE, "run gated")
    ref = reply["text"].split("*")[1]
    message = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "thread_ts" not in c.args and ref in c.args.get("text", "")
    )
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
    await bot.press(BOB, "gate_approve", _button(card, "gate_approve")["value"], card.response["ts"])
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
        reply = await bot.say(ALICE, "run busy")
        ref = reply["text"].split("*")[1]
        message = await bot.fake.wait_for(
            "chat.postMessage", lambda c: "thread_ts" not in c.args and ref in c.args.get("text", "")
        )
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
    secret = Directory(bot.store).create_token("ci", [Role.DEPLOYER], datetime.now(UTC), by="test")
    auth = {"Authorization": f"Bearer {secret}"}

    over_rest = await bot.client.post("/api/v1/pipelines/routed/runs", json={}, headers=auth)
    assert over_rest.status == 202, await over_rest.text()
    posted = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "routed#1" in c.args.get("text", "") and "thread_ts" not in c.args
    )
    assert posted.args["channel"] == PIPELINE_CHANNEL
    assert "triggered by ci via rest" in str(posted.args["blocks"])

    # the scheduler triggers through the same service, as its schedule's owner
    yard = bot.client.server.app[SHIPYARD]
    decision = await yard.orchestrator.handle(
        TriggerRun(pipeline="routed", actor=Actor("nightly", "schedule"))
    )
    assert decision.accepted, decision.reason
    scheduled = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "routed#2" in c.args.get("text", "") and "thread_ts" not in c.args
    )
    assert scheduled.args["channel"] == PIPELINE_CHANNEL
    assert "triggered by nightly via schedule" in str(scheduled.args["blocks"])
    result = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "routed#2 succeeded" in c.args.get("text", ""), timeout=10
    )
    assert result.args["channel"] == PIPELINE_CHANNEL and result.args["thread_ts"] == scheduled.response["ts"]

    # a pipeline that names no channel reports in the configured default
    unrouted = await bot.client.post("/api/v1/pipelines/unrouted/runs", json={}, headers=auth)
    assert unrouted.status == 202, await unrouted.text()
    fallback = await bot.fake.wait_for("chat.postMessage", lambda c: "unrouted#1" in c.args.get("text", ""))
    assert fallback.args["channel"] == DEFAULT_CHANNEL
    assert not [c for c in bot.fake.calls_to("chat.postMessage") if c.args.get("channel") == CHANNEL]
