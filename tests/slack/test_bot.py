"""The Slack bot end to end: requests signed as Slack signs them hit the real Bolt endpoint of a
real ``shipyard serve`` app; its Web API calls go to a fake Slack on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from core.access import Role
from storage.schedules import ScheduleStore
from tests.pipelines import COMMIT_REF, GATED_ON_REF, failing, gated, one_deploy
from tests.slack import signing
from tests.slack.fake_slack import FakeSlack
from tests.slack.harness import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    RELEASE_MANAGERS,
    SECRET,
    Bot,
    StartBot,
    button,
    buttons_of,
)


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    return await start_bot(
        {
            "gated": GATED_ON_REF,
            # a failure the run can go on after, to ``ship``
            "failing": failing(
                first="echo compiling; ", then='  - {name: ship, jobs: [{name: upload, run: "true"}]}\n'
            ),
            "reminded": one_deploy(
                "reminded", gate="{approvers: [release-managers], remind_every: 1s, timeout: 1h}"
            ),
        },
        # Alice also approves, so that self-approval is what stops her
        {ALICE: [Role.DEPLOYER, Role.APPROVER], BOB: [Role.APPROVER, RELEASE_MANAGERS]},
    )


async def _command(
    bot: Bot,
    user: str,
    text: str,
    tamper: Callable[[signing.SignedRequest], signing.SignedRequest] | None = None,
) -> tuple[int, str, float]:
    """Send ``/deploy text`` as ``user`` (``tamper``ed with, if given); returns (status, response_url
    token, ack seconds)."""
    token, request = bot.command_request(user, text)
    started = time.perf_counter()
    status, _, _ = await bot.post(tamper(request) if tamper else request)
    return status, token, time.perf_counter() - started


async def _said(bot: Bot, user: str, text: str) -> str:
    """The text of the reply the bot posts to the command's response_url."""
    return str((await bot.say(user, text)).get("text", ""))


async def test_help_and_a_mistyped_verb_answer_only_the_asker(bot: Bot) -> None:
    status, token, took = await _command(bot, ALICE, "help")
    assert status == 200 and took < 3.0
    reply = (await bot.fake.wait_response(token)).body
    assert reply["response_type"] == "ephemeral" and "/deploy run <pipeline>" in reply["text"]
    assert "Did you mean `list`?" in await _said(bot, ALICE, "lsit")
    assert "Did you mean `gated`?" in await _said(bot, ALICE, "run gatd ref=abc1234")


async def test_bad_signatures_and_stale_requests_are_refused(bot: Bot) -> None:
    assert (await _command(bot, ALICE, "help", signing.with_wrong_secret))[0] == 401
    stale = await _command(bot, ALICE, "help", lambda r: signing.with_stale_timestamp(r, SECRET))
    assert stale[0] == 401  # signed 301 s ago: Slack's five minutes and one second


async def test_a_run_from_slack_gets_one_message_edited_in_place_and_a_gate_card(bot: Bot) -> None:
    reply = await _said(bot, ALICE, "run gated ref=abc1234")
    assert "Started *gated#1*" in reply
    first = await bot.fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == CHANNEL)
    assert "thread_ts" not in first.args
    card = await bot.thread_post("approval")
    approve = button(card, "gate_approve")

    token = await bot.press(ALICE, "gate_approve", approve["value"], card.args["thread_ts"])
    refusal = (await bot.fake.wait_response(token)).body
    assert refusal["response_type"] == "ephemeral" and "cannot approve its own gate" in refusal["text"]

    token = await bot.press(CAROL, "gate_approve", approve["value"], card.args["thread_ts"])
    assert "did not hold the approver role when gate" in (await bot.fake.wait_response(token)).body["text"]

    await bot.press(BOB, "gate_approve", approve["value"], card.args["thread_ts"])
    result = await bot.thread_post("gated#1 succeeded", timeout=15)
    assert result.args["thread_ts"] == card.args["thread_ts"]
    edited = await bot.fake.wait_for(
        "chat.update", lambda c: "succeeded" in c.args.get("text", ""), timeout=5
    )
    assert edited.args["ts"] == card.args["thread_ts"] or edited.args["channel"] == CHANNEL
    runs = [c for c in bot.fake.calls_to("chat.postMessage") if "thread_ts" not in c.args]
    assert len(runs) == 1  # one message per run, however many times it changed


async def test_a_failed_job_posts_its_last_log_lines_in_the_thread(bot: Bot) -> None:
    await bot.say(ALICE, "run failing")
    post = await bot.thread_post("build/compile", timeout=15)
    assert "error: it broke" in json.dumps(post.args["blocks"])


async def test_commands_are_acknowledged_fast_even_when_many_arrive_at_once(bot: Bot) -> None:
    results = await asyncio.gather(*(_command(bot, ALICE, "runs") for _ in range(20)))
    assert all(status == 200 for status, _, _ in results)
    assert max(took for _, _, took in results) < 3.0


async def test_slack_roles_come_from_configuration_and_user_groups(
    start_bot: StartBot, fake: FakeSlack
) -> None:
    fake.usergroups["S0RELEASE"] = [BOB]
    bot = await start_bot(
        {
            "gated": gated(
                compile='["sh", "-c", "echo built $SHIPYARD_PARAM_REF"]',
                ref=COMMIT_REF,
                approvers="S0RELEASE",
            )
        },
        slack_roles={ALICE: ["deployer"], "S0RELEASE": ["approver"]},
    )
    assert "Roles: approver. Groups: S0RELEASE" in await _said(bot, BOB, "whoami")
    assert "Roles: deployer." in await _said(bot, ALICE, "whoami")
    assert "Started *gated#1*" in await _said(bot, ALICE, "run gated ref=abc1234")
    card = await fake.wait_for("chat.postMessage", lambda c: "approval" in c.args.get("text", ""))
    await bot.press(BOB, "gate_approve", button(card, "gate_approve")["value"], card.args["thread_ts"])
    await fake.wait_for(
        "chat.postMessage", lambda c: "gated#1 succeeded" in c.args.get("text", ""), timeout=15
    )


async def test_a_failure_is_settled_in_the_thread_by_ignoring_it_and_going_on(bot: Bot) -> None:
    await bot.say(ALICE, "run failing")
    post = await bot.thread_post("build/compile", timeout=15)
    buttons = buttons_of(post)
    assert {"run_retry", "run_ignore_failure"} <= set(buttons)
    token = await bot.press(
        CAROL, "run_ignore_failure", buttons["run_ignore_failure"]["value"], post.args["thread_ts"]
    )
    assert "approver role" in (await bot.fake.wait_response(token)).body["text"]
    await bot.press(
        ALICE, "run_ignore_failure", buttons["run_ignore_failure"]["value"], post.args["thread_ts"]
    )
    done = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "failing#2 succeeded" in c.args.get("text", ""), timeout=15
    )
    assert done.args["channel"] == CHANNEL
    edited = await bot.fake.wait_for(
        "chat.update", lambda c: "failing#2" in c.args.get("text", "") and "succeeded" in c.args["text"]
    )
    assert "failure of compile ignored by U0ALICE" in json.dumps(edited.args["blocks"])


async def test_a_deploy_to_a_confirm_environment_asks_first_and_the_question_expires(
    start_bot: StartBot, fake: FakeSlack
) -> None:
    bot = await start_bot(
        {"gated": GATED_ON_REF}, {ALICE: [Role.DEPLOYER]}, environments={"production": {"confirm": True}}
    )
    status, token, _ = await _command(bot, ALICE, "run gated ref=abc1234")
    assert status == 200
    question = (await fake.wait_response(token)).body
    assert question["response_type"] == "ephemeral"
    assert "deploys to *production*" in question["text"] or "production" in json.dumps(question["blocks"])
    assert "live in production now: nothing yet" in json.dumps(question["blocks"])
    deploy = next(e for b in question["blocks"] if b["type"] == "actions" for e in b["elements"])
    assert not [c for c in fake.calls_to("chat.postMessage") if c.args.get("channel") == CHANNEL]

    stale = json.dumps({**json.loads(deploy["value"]), "until": time.time() - 1})
    assert "expired" in (await bot.answer(ALICE, "run_confirm", stale))["text"]

    assert "Started *gated#1*" in (await bot.answer(ALICE, "run_confirm", deploy["value"]))["text"]
    await fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == CHANNEL)


async def test_app_home_is_refreshed_when_a_gate_starts_waiting(bot: Bot) -> None:
    opened = signing.event_callback(
        SECRET, {"type": "app_home_opened", "user": BOB, "tab": "home", "event_ts": "1.0"}, event_id="Ev1"
    )
    status, _, _ = await bot.post(opened)
    assert status == 200
    first = await bot.fake.wait_for("views.publish", lambda c: c.args.get("user_id") == BOB)
    assert "Nothing is waiting for you" in json.dumps(first.args["view"])
    await bot.say(ALICE, "run gated ref=abc1234")
    again = await bot.fake.wait_for(
        "views.publish",
        lambda c: c.args.get("user_id") == BOB and "gate_approve" in json.dumps(c.args["view"]),
        15,
    )
    assert "*gated#1* waits for approval before *production*" in json.dumps(again.args["view"])


async def test_schedules_from_slack(bot: Bot, tmp_path: Path) -> None:
    said = await _said(bot, ALICE, 'schedule gated "0 2 * * 1-5" tz=Europe/Berlin ref=abc1234')
    assert "Scheduled `" in said and "gated '0 2 * * 1-5' (Europe/Berlin) ref=abc1234" in said
    assert "five fields" in await _said(bot, ALICE, 'schedule gated "0 2 * *"')
    odd = await bot.say(ALICE, 'schedule gated "*/61 * * * *"')  # (croniter: hourly)
    assert odd["response_type"] == "ephemeral" and "would fire only at 0" in odd["text"]
    assert "unknown parameter 'rev'" in await _said(bot, ALICE, 'schedule gated "0 2 * * *" rev=abc1234')
    assert "unknown time zone" in await _said(bot, ALICE, 'schedule gated "0 2 * * *" tz=Mars/Base')
    listing = await _said(bot, ALICE, "schedules")
    short = listing.split("`")[1]
    assert "by <@U0ALICE>" in listing
    assert "trigger needs one of" in await _said(bot, BOB, f"unschedule {short}")
    assert "Removed schedule" in await _said(bot, ALICE, f"unschedule {short}")
    assert "No schedules" in await _said(bot, ALICE, "schedules")


async def test_unschedule_of_a_schedule_removed_meanwhile_says_so(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _said(bot, ALICE, 'schedule gated "0 2 * * 1-5" ref=abc1234')
    short = (await _said(bot, ALICE, "schedules")).split("`")[1]
    real = ScheduleStore.remove
    raced: list[bool] = []

    def remove(self: ScheduleStore, schedule_id: str, at: datetime) -> bool:
        raced.append(real(self, schedule_id, at))  # another person's removal, a moment before
        return real(self, schedule_id, at)

    monkeypatch.setattr(ScheduleStore, "remove", remove, raising=True)
    reply = await bot.say(ALICE, f"unschedule {short}")
    assert raced == [True]  # the fault: it was gone before this removal
    assert reply["response_type"] == "ephemeral" and "was removed meanwhile" in reply["text"]


async def test_a_waiting_gate_reminds_its_approvers_in_the_thread(bot: Bot) -> None:
    await bot.say(ALICE, "run reminded")
    card = await bot.fake.wait_for("chat.postMessage", lambda c: "approval" in c.args.get("text", ""))
    reminder = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "still waits for approval" in c.args.get("text", ""), timeout=10
    )
    assert reminder.args["thread_ts"] == card.args["thread_ts"]
    body = json.dumps(reminder.args["blocks"])
    assert f"approvers: <@{BOB}>" in body and "it times out at" in body  # release-managers' Bob
    assert f"approvers: <@{BOB}>" in reminder.args["text"]
