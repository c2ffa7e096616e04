"""The verbs no other Slack test sends, end to end through the real Bolt endpoint of
``create_app`` with requests signed like Slack's and the fake Slack Web API: ``envs``,
``promote``, ``artifacts``, ``mark-bad``, ``fail``, ``front`` and ``ack``. Each test reads what
the person sees: the reply posted to the command's ``response_url``, who else sees it
(``response_type``), and the run messages the bot edits in the channel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.access import Role
from tests.pipelines import SHOP, one_build, one_job
from tests.slack.harness import ALICE, BOB, CAROL, CHANNEL, ROOT, Bot, StartBot, run_named, until

#: Alice deploys, Bob approves, Root administers; Carol holds nothing
GRANTS = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER], ROOT: [Role.ADMIN]}


@pytest.fixture
async def bot(start_bot: StartBot, tmp_path: Path) -> AsyncIterator[Bot]:
    # "hold" deploys to qa and stays there until the test creates the file ``go``
    go = tmp_path / "go"
    hold = f'["sh", "-c", "while [ ! -f {go} ]; do sleep 0.05; done"]'
    pipelines = {"shop": SHOP, "hold": one_job("hold", hold, stage="qa", job="deploy", environment="qa")}
    yield await start_bot(pipelines, GRANTS, environments={"staging": {}, "production": {}, "qa": {}})
    go.touch()  # let a held run end before the app stops


async def _released(bot: Bot, version: str, user: str = ALICE) -> str:
    reply = await bot.say(user, f"run shop version={version}")
    assert reply["text"].startswith("Started *shop#"), reply
    ref = run_named(reply)
    await bot.until_status(ref, "succeeded")
    return ref


def _ephemeral(reply: dict[str, Any]) -> str:
    assert reply["response_type"] == "ephemeral", reply
    return str(reply["text"])


def _public(reply: dict[str, Any]) -> str:
    assert reply["response_type"] == "in_channel", reply
    return str(reply["text"])


def _message_of(bot: Bot, ref: str) -> str | None:
    """The run's message in the channel (not its thread), as the bot last posted or edited it."""
    for (channel, _), message in bot.fake.messages.items():
        if channel == CHANNEL and "thread_ts" not in message and f" {ref} " in f"{message['text']} ":
            return json.dumps(message, ensure_ascii=False)
    return None


async def test_envs_tells_what_runs_where_and_what_holds_each_environment(bot: Bot) -> None:
    assert "read needs one of" in _ephemeral(await bot.say(CAROL, "envs"))
    empty = _ephemeral(await bot.say(ALICE, "envs")).splitlines()
    assert empty == ["• *staging*: nothing yet", "• *production*: nothing yet", "• *qa*: nothing yet"]

    ref = await _released(bot, "1.0.0")
    _public(await bot.say(ALICE, 'lock production "incident 4711"'))
    rows = _ephemeral(await bot.say(ALICE, "envs")).splitlines()
    assert rows[0].startswith(f"• *staging*: *shop@1.0.0* ({ref}, ")
    assert rows[1].startswith(f"• *production*: *shop@1.0.0* ({ref}, ")
    assert "locked by" in rows[1] and "incident 4711" in rows[1]
    assert rows[2] == "• *qa*: nothing yet"


async def test_promote_deploys_a_known_artifact_without_rebuilding(bot: Bot) -> None:
    await _released(bot, "1.0.0")
    await _released(bot, "2.0.0")

    said = _public(await bot.say(ALICE, "promote shop@1.0.0 to staging"))
    assert said.startswith("Promoting *shop@1.0.0* to *staging* as *shop#3*.")
    done = await bot.until_status("shop#3", "succeeded")
    assert done.run.kind == "promotion"
    assert [s.name for s in done.stages if s.status == "succeeded"] == ["staging"]  # no build
    await until(
        lambda: "*shop#3* — *succeeded* · promotion" in (_message_of(bot, "shop#3") or ""),
        what="shop#3's message to show a finished promotion",
    )

    rows = _ephemeral(await bot.say(ALICE, "envs")).splitlines()
    assert rows[0].startswith("• *staging*: *shop@1.0.0* (shop#3, ")
    assert rows[1].startswith("• *production*: *shop@2.0.0* (shop#2, ")

    assert "No artifact `shop@9.9.9`" in _ephemeral(await bot.say(ALICE, "promote shop@9.9.9 to staging"))
    usage = _ephemeral(await bot.say(ALICE, "promote shop@1.0.0 staging"))
    assert "Usage: `/deploy promote <name@version> to <environment>`" in usage
    assert "trigger needs one of" in _ephemeral(await bot.say(CAROL, "promote shop@1.0.0 to staging"))


async def test_artifacts_lists_versions_and_mark_bad_keeps_one_from_being_deployed(bot: Bot) -> None:
    assert _ephemeral(await bot.say(ALICE, "artifacts")).startswith("No artifacts yet.")
    await _released(bot, "1.0.0")
    await _released(bot, "2.0.0")

    listed = _ephemeral(await bot.say(ALICE, "artifacts")).splitlines()
    assert [row.split("*")[1] for row in listed] == ["shop@2.0.0", "shop@1.0.0"]
    assert all(f"— <@{ALICE}> from shop, " in row for row in listed)
    one = _ephemeral(await bot.say(ALICE, "artifacts shop@1.0.0"))
    assert f"`sha256:{'0' * 61}100`" in one and "oci://r/shop" in one
    assert "Did you mean `shop`?" in _ephemeral(await bot.say(ALICE, "artifacts shpo"))

    refused = _ephemeral(await bot.say(ALICE, 'mark-bad shop@1.0.0 "500s on login"'))
    assert "approve needs one of" in refused  # deployers may not
    assert "Say which artifact and why" in _ephemeral(await bot.say(BOB, "mark-bad shop@1.0.0"))
    assert "No artifact `shop@9.9.9`" in _ephemeral(await bot.say(BOB, 'mark-bad shop@9.9.9 "typo"'))
    marked = _public(await bot.say(BOB, 'mark-bad shop@1.0.0 "500s on login"'))
    assert marked.startswith(f":no_entry_sign: <@{BOB}> marked *shop@1.0.0* (`")
    assert marked.endswith("bad: 500s on login. It will not be deployed or promoted again.")

    shown = _ephemeral(await bot.say(ALICE, "artifacts shop")).splitlines()
    assert shown[1].startswith(":no_entry_sign: *shop@1.0.0*")
    assert f"*marked bad* by <@{BOB}>" in shown[1] and shown[1].endswith(": 500s on login")
    promoted = _ephemeral(await bot.say(ALICE, "promote shop@1.0.0 to staging"))
    assert "bad" in promoted and "500s on login" in promoted


async def test_fail_ends_a_run_failed_and_its_message_shows_it(bot: Bot) -> None:
    ref = await bot.trigger(ALICE, "run hold")
    await bot.until_status(ref, "running")

    assert "control needs one of" in _ephemeral(await bot.say(CAROL, f"fail {ref}"))
    assert _public(await bot.say(ALICE, f"fail {ref} runner vanished mid-deploy")) == f"{ref} marked failed."
    state = await bot.until_status(ref, "failed")
    assert "runner vanished mid-deploy" in state.run.reason
    assert "already failed" in _ephemeral(await bot.say(ALICE, f"fail {ref}"))
    await until(
        lambda: f"*{ref}* — *failed*" in (_message_of(bot, ref) or ""),
        what=f"{ref}'s message to show it failed",
    )


async def test_front_moves_a_queued_run_first_for_admins_only(bot: Bot, tmp_path: Path) -> None:
    refs = []
    for _ in range(3):
        refs.append(await bot.trigger(ALICE, "run hold"))
    first, second, third = refs
    await bot.until_status(first, "running")
    for ref in (second, third):
        await bot.until_status(ref, "queued")
    assert _ephemeral(await bot.say(ALICE, "queue qa")).splitlines()[1:] == [f"1. {second}", f"2. {third}"]

    refused = _ephemeral(await bot.say(ALICE, f'front {third} "customer outage"'))
    assert "manage needs one of: admin" in refused
    assert "Usage: `/deploy front <run> <reason>`" in _ephemeral(await bot.say(ROOT, f"front {third}"))
    moved = _public(await bot.say(ROOT, f'front {third} "customer outage"'))
    assert moved == f"<@{ROOT}> moved *{third}* to the front of the queue: customer outage"
    assert _ephemeral(await bot.say(ALICE, "queue qa")).splitlines()[1:] == [f"1. {third}", f"2. {second}"]
    assert "first" in _ephemeral(await bot.say(ROOT, f"front {third} again"))

    (tmp_path / "go").touch()
    for ref in refs:
        await bot.until_status(ref, "succeeded")
    never = datetime.max.replace(tzinfo=UTC)
    in_order = sorted(refs, key=lambda ref: bot.run(ref).stages[0].started_at or never)
    assert in_order == [first, third, second]  # deployed in the order the queue said


async def test_ack_settles_a_break_glass_review_by_someone_else(bot: Bot) -> None:
    glass = _public(await bot.say(ROOT, 'run shop version=3.0.0 --break-glass "checkout is down"'))
    assert glass.startswith(f":rotating_light: <@{ROOT}> broke the glass: *shop#1* goes through")
    await bot.until_status("shop#1", "succeeded")
    ordinary = await _released(bot, "3.0.1")

    assert "approve needs one of" in _ephemeral(await bot.say(ALICE, "ack shop#1"))
    own = _ephemeral(await bot.say(ROOT, "ack shop#1"))
    assert "someone other than whoever broke the glass" in own
    assert "did not break the glass" in _ephemeral(await bot.say(BOB, f"ack {ordinary}"))
    assert "Usage: `/deploy ack <run>`" in _ephemeral(await bot.say(BOB, "ack"))
    done = _public(await bot.say(BOB, "ack shop#1"))
    assert done == f":white_check_mark: <@{BOB}> acknowledged the break-glass review of *shop#1*."
    again = _ephemeral(await bot.say(BOB, "ack shop#1"))
    assert f"already acknowledged by {BOB}" in again


async def test_every_pipeline_is_known_to_the_verbs_however_many_there_are(start_bot: StartBot) -> None:
    """Verbs that take a pipeline look it up by name: the 205th of 205 runs and is suggested
    for a typo; an archived one is said to be archived, not unknown."""
    names = [f"p{n:03}" for n in range(205)]
    bot = await start_bot({name: one_build(name) for name in names}, {ALICE: [Role.DEPLOYER]})
    listed = (await bot.say(ALICE, "list"))["text"]
    assert "*p099*" in listed and "*p100*" not in listed
    assert "…and 105 more, after *p099*" in listed
    assert "Started *p204#1*" in (await bot.say(ALICE, "run p204"))["text"]
    assert "Did you mean `p204`?" in (await bot.say(ALICE, "run p2044"))["text"]
    assert "p204#1" in (await bot.say(ALICE, "runs p204"))["text"]
    assert "Scheduled" in (await bot.say(ALICE, 'schedule p204 "0 2 * * *"'))["text"]
    await bot.shipyard.orchestrator.db(bot.shipyard.service.set_archived, "p204", True)
    assert "`p204` is archived" in (await bot.say(ALICE, "run p204"))["text"]
    assert "p204#1" in (await bot.say(ALICE, "runs p204"))["text"]  # (its runs stay readable)
