"""A person's schedule in Slack that can no longer start a run: the clock pauses it once, its
owner is told once in the pipeline's channel, ``/deploy schedules`` shows it paused and why, and
``/deploy resume-schedule`` refuses until the cause is gone; ``pause-schedule`` by hand. Through
the real Bolt endpoint with signed requests, on SQLite and PostgreSQL, fire times given."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from bot.app import CLOCK
from bot.scheduler import ScheduleLoop
from core.access import Role
from storage.schedules import ScheduleStore
from tests.pipelines import one_job
from tests.slack import signing
from tests.slack.harness import ALICE, BOB, CHANNEL, SECRET, Bot, StartBot, until


@pytest.fixture
async def bot(start_bot: StartBot, db_url: str) -> Bot:
    return await start_bot(
        {"nightly": one_job("nightly")},
        {ALICE: [Role.DEPLOYER], BOB: [Role.DEPLOYER]},
        database_url=db_url,
        slack_channel=CHANNEL,
    )


def _clock(bot: Bot) -> ScheduleLoop:
    clock = bot.app[CLOCK]
    assert clock.scheduler is not None
    clock.scheduler.pause()  # (the test ticks it by hand)
    return clock


async def _said(bot: Bot, user: str, text: str) -> str:
    return str((await bot.say(user, text)).get("text", ""))


def _told(bot: Bot) -> list[str]:
    return [
        c.args["text"]
        for c in bot.fake.calls_to("chat.postMessage")
        if c.args.get("channel") == CHANNEL and "is paused" in c.args.get("text", "")
    ]


async def test_a_schedule_of_an_archived_pipeline_is_paused_shown_and_its_owner_told_once(bot: Bot) -> None:
    clock = _clock(bot)
    said = await _said(bot, ALICE, 'schedule nightly "0 2 * * *"')
    short = said.split("`")[1]
    (schedule,) = ScheduleStore(bot.store).all()
    await bot.shipyard.orchestrator.db(bot.shipyard.service.set_archived, "nightly", True)

    for night in range(3):
        await clock.tick(schedule.next_fire_at + timedelta(days=night, seconds=1))
    await clock.sync_files()

    told = await until(lambda: _told(bot) or None, what="the owner told")
    assert told == [
        f"<@{ALICE}>: your schedule `{short}` of nightly is paused, it can no longer start a run: "
        "pipeline 'nightly' is archived (restore it, then resume the schedule). See `/deploy schedules`. "
        f"`/deploy resume-schedule {short}` once that is fixed, or remove it."
    ]
    listing = await _said(bot, ALICE, "schedules")
    assert f"`{short}` nightly '0 2 * * *' (UTC)" in listing
    assert "*paused*: pipeline 'nightly' is archived" in listing and "next " not in listing
    refused = await bot.say(ALICE, f"resume-schedule {short}")
    assert refused["response_type"] == "ephemeral" and "is archived" in refused["text"]
    assert "belongs to" in await _said(bot, BOB, f"resume-schedule {short}")
    entries = [e for e in bot.store.audit_entries(100) if e.target == f"schedule {schedule.id}"]
    assert [e.action for e in entries] == ["schedule_paused"]

    await bot.shipyard.orchestrator.db(bot.shipyard.service.set_archived, "nightly", False)
    assert "Resumed schedule" in await _said(bot, ALICE, f"resume-schedule {short}")
    assert "next " in await _said(bot, ALICE, "schedules")
    await clock.sync_files()
    assert len(_told(bot)) == 1  # told once


async def test_a_schedule_is_paused_by_hand_and_skips_its_fires_until_resumed(bot: Bot) -> None:
    clock = _clock(bot)
    short = (await _said(bot, ALICE, 'schedule nightly "0 2 * * *"')).split("`")[1]
    (schedule,) = ScheduleStore(bot.store).all()
    assert "belongs to" in await _said(bot, BOB, f"pause-schedule {short}")
    assert "Paused schedule" in await _said(bot, ALICE, f"pause-schedule {short}")
    assert "paused already" in await _said(bot, ALICE, f"pause-schedule {short}")
    assert f"*paused*: paused by {ALICE}" in await _said(bot, ALICE, "schedules")
    assert await clock.tick(schedule.next_fire_at + timedelta(seconds=1)) == []
    assert "Resumed schedule" in await _said(bot, ALICE, f"resume-schedule {short}")
    assert _told(bot) == []  # (paused by its owner: nothing to tell)


async def test_a_long_list_of_schedules_says_how_many_more_there_are(bot: Bot) -> None:
    """``/deploy schedules`` shows 40; past that it says how many it left out and how to see them,
    so Slack and ``GET /schedules`` (every one) do not seem to disagree."""
    (first,) = [await _said(bot, ALICE, 'schedule nightly "0 2 * * *"')]
    (made,) = ScheduleStore(bot.store).all()
    ScheduleStore(bot.store).add_many([replace(made, id=f"more{i:02}") for i in range(44)])
    listing = await _said(bot, ALICE, "schedules")
    assert "Scheduled" in first and listing.count("\n`") == 39
    assert listing.endswith(
        "… and 5 more: `/deploy schedules <pipeline>` lists one pipeline's, `GET /api/v1/schedules` all."
    )


async def test_app_home_shows_the_viewers_paused_schedules_with_why_until_resumed(bot: Bot) -> None:
    clock = _clock(bot)
    short = (await _said(bot, ALICE, 'schedule nightly "0 2 * * *"')).split("`")[1]
    opened = signing.event_callback(
        SECRET, {"type": "app_home_opened", "user": ALICE, "tab": "home", "event_ts": "1.0"}, event_id="Ev1"
    )
    assert (await bot.post(opened))[0] == 200
    first = await bot.fake.wait_for("views.publish", lambda c: c.args.get("user_id") == ALICE)
    assert "paused" not in json.dumps(first.args["view"])
    await bot.shipyard.orchestrator.db(bot.shipyard.service.set_archived, "nightly", True)

    await clock.sync_files()  # (finds it can no longer start a run)

    shown = await bot.fake.wait_for(
        "views.publish",
        lambda c: c.args.get("user_id") == ALICE and "Your paused schedules" in json.dumps(c.args["view"]),
    )
    view = json.dumps(shown.args["view"])
    assert f"`{short}` nightly '0 2 * * *' (UTC): paused, pipeline 'nightly' is archived" in view
    await bot.shipyard.orchestrator.db(bot.shipyard.service.set_archived, "nightly", False)
    before = len(bot.fake.calls_to("views.publish"))
    assert "Resumed schedule" in await _said(bot, ALICE, f"resume-schedule {short}")

    def refreshed() -> str | None:
        later = bot.fake.calls_to("views.publish")[before:]
        return next((json.dumps(c.args["view"]) for c in later if c.args.get("user_id") == ALICE), None)

    assert "Your paused schedules" not in await until(refreshed, what="App Home refreshed")


async def test_a_cron_expression_too_long_to_store_is_refused_with_what_to_do(bot: Bot) -> None:
    """Valid, but longer than a schedule keeps (120 characters, as REST says): refused in words,
    not an internal error from the database."""
    every = ",".join(str(m) for m in range(60))
    said = await bot.say(ALICE, f'schedule nightly "{every} * * * *"')
    assert said["response_type"] == "ephemeral"
    assert "too long: at most 120 characters" in said["text"] and "*/5" in said["text"]
    assert ScheduleStore(bot.store).all() == []
