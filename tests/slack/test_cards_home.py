"""Gate cards and App Home end to end (signed requests to the real Bolt endpoint, the fake Slack):
a card mentions its approvers' Slack user groups and the Slack members of an access group
named as approvers (who are then notified, and may clear it), shows what it deploys, what is live now and
the compare link between them, the gates passed and the approvals so far (edited after each),
and keeps all of that once decided; App Home shows each environment's deployment and lock
(refreshed when a lock is taken or released over the REST API), only the gates the viewer may
clear, and the viewer's runs; a failure the run goes on after offers Cancel run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.access import Role
from tests.pipelines import GOING_ON, one_job, ship
from tests.slack import signing
from tests.slack.fake_slack import Call, FakeSlack
from tests.slack.harness import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    DAVE,
    RELEASE_MANAGERS,
    SECRET,
    Bot,
    StartBot,
    blocks_of,
    button,
    buttons_of,
    until,
)

OLD, NEW = "aaaaaaa1111111", "bbbbbbb2222222"
#: its first attempt fails (a network blip), the second runs on
BLIP = """'if [ "$SHIPYARD_ATTEMPT" = 1 ]; then echo "network blip" >&2; exit 1; fi; sleep 30'"""
MAPPED = "<!subteam^S0RELEASE>, <!subteam^S0ADMINS>"
#: release-managers as the card mentions it: Bob, its one member who is a Slack user
MANAGERS = f"<@{BOB}>"


@pytest.fixture
async def bot(start_bot: StartBot, fake: FakeSlack) -> Bot:
    fake.usergroups["S0RELEASE"] = [DAVE]  # Dave approves through the Slack user group
    fake.usergroups["S0ADMINS"] = []
    return await start_bot(
        {
            "ship": ship(staging=True, approvers="release-managers, S0RELEASE, admin", min_approvals=2),
            "going-on": GOING_ON,
            "retried": one_job("retried", BLIP, stage="build", job="flaky", retries=1),
        },
        {ALICE: [Role.DEPLOYER, Role.APPROVER], BOB: [Role.APPROVER, RELEASE_MANAGERS]},
        slack_roles={"S0RELEASE": ["approver"], "S0ADMINS": ["admin"]},
    )


def _dump(blocks: Any) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def _card_text(blocks: list[dict[str, Any]]) -> str:
    return str(blocks[0]["text"]["text"])


def _card_now(bot: Bot, card: Call) -> list[dict[str, Any]]:
    """The card as Slack shows it now (after its edits)."""
    return list(bot.fake.messages[(CHANNEL, card.response["ts"])]["blocks"])


async def _through_staging(bot: Bot, version: str, revision: str) -> tuple[str, Call]:
    """Alice starts ship; Bob clears staging's gate; returns the run and its production card."""
    ref = await bot.trigger(ALICE, f"run ship version={version} revision={revision}")
    staging = await bot.gate_card(ref)
    await bot.press(BOB, "gate_approve", button(staging, "gate_approve")["value"], staging.response["ts"])
    card = await bot.fake.wait_for(
        "chat.postMessage",
        lambda c: f"{ref} waits for approval before production" in c.args.get("text", ""),
        timeout=15,
    )
    return ref, card


async def _approve(bot: Bot, user: str, card: Call) -> None:
    await bot.press(user, "gate_approve", button(card, "gate_approve")["value"], card.response["ts"])


async def test_a_gate_card_shows_what_goes_where_and_keeps_it_once_decided(bot: Bot) -> None:
    first, card = await _through_staging(bot, "1.0.0", OLD)
    shown = _card_text(blocks_of(card))
    assert f"approvers: {MANAGERS}, {MAPPED}" in shown
    assert f"deploys `ship@1.0.0` (revision `{OLD}`)" in shown
    assert "live in production now: nothing yet" in shown and "compare" not in shown
    await _approve(bot, BOB, card)
    await _approve(bot, DAVE, card)
    await bot.until_status(first, "succeeded", timeout=15)

    second, card = await _through_staging(bot, "2.0.0", NEW)
    shown = _card_text(blocks_of(card))
    assert shown.startswith(
        f":raised_hand: *{second}* waits for approval before *production* to *production*"
    )
    assert f"asked by <@{ALICE}>; approvers: {MANAGERS}, {MAPPED}" in shown
    assert f"deploys `ship@2.0.0` (revision `{NEW}`)" in shown
    live = f"live in production now: `ship@1.0.0` (revision `{OLD}`) · {first} since "
    assert live in shown and f"by <@{ALICE}>" in shown
    link = f"<https://git.example/acme/ship/compare/{OLD}...{NEW}|compare aaaaaaa…bbbbbbb>"
    assert link in shown
    assert "gates passed: staging" in shown and "approvals: 0 of 2" in shown

    # the first approval edits the card (not only the run message): 1 of 2, and by whom
    await _approve(bot, BOB, card)
    await until(
        lambda: f"approvals: 1 of 2 — so far <@{BOB}>" in _card_text(_card_now(bot, card)),
        what="1 of 2 on the card",
    )
    assert button(card, "gate_approve")  # still open: the buttons stay
    assert any(b["type"] == "actions" for b in _card_now(bot, card))

    await _approve(bot, DAVE, card)
    await bot.until_status(second, "succeeded", timeout=15)
    await until(lambda: "approved by" in _dump(_card_now(bot, card)), what="the decision on the card")
    decided = _card_now(bot, card)
    assert not [b for b in decided if b["type"] == "actions"]  # the buttons gave way to the decision
    outcome = decided[-1]["elements"][0]["text"]
    assert outcome.startswith(f":white_check_mark: approved by <@{BOB}>, <@{DAVE}> at ") and "UTC" in outcome
    kept = _card_text(decided)
    # what was live when it was decided, not the run's own deployment since
    assert live in kept and link in kept and "gates passed: staging" in kept
    assert f"deploys `ship@2.0.0` (revision `{NEW}`)" in kept


async def _failure(bot: Bot, pipeline: str, job: str) -> tuple[str, Call, str]:
    """Alice runs ``pipeline``: the run, the post in its thread about ``job`` failing, and its text."""
    ref = await bot.trigger(ALICE, f"run {pipeline}")
    post = await bot.thread_post(job, timeout=15)
    return ref, post, blocks_of(post)[0]["text"]["text"]


async def test_a_failure_the_run_goes_on_after_offers_cancel_and_cancel_ends_it(bot: Bot) -> None:
    ref, post, said = await _failure(bot, "going-on", "build/lint")
    assert said.startswith(":warning: *build/lint* failed") and "the run goes on" in said
    assert "lint: 3 warnings" in _dump(blocks_of(post))
    assert set(buttons_of(post)) == {"run_cancel"}  # nothing to retry or ignore: the run has not failed
    cancel = button(post, "run_cancel")
    assert cancel["confirm"]["title"]["text"] == "Cancel this run?"
    assert bot.run(ref).run.status == "running"

    await bot.press(ALICE, "run_cancel", cancel["value"], post.response["ts"])
    state = await bot.until_status(ref, "canceled")
    assert next(j for j in state.jobs if j.name == "compile").status == "canceled"


async def test_a_failed_attempt_that_is_retried_says_so_and_offers_cancel(bot: Bot) -> None:
    ref, post, said = await _failure(bot, "retried", "build/flaky")
    assert said.startswith(":x: *build/flaky* failed") and "Shipyard runs it again (`retries: 1`)" in said
    assert "network blip" in _dump(blocks_of(post))
    assert button(post, "run_cancel")
    await bot.press(ALICE, "run_cancel", button(post, "run_cancel")["value"], post.response["ts"])
    await bot.until_status(ref, "canceled")


async def _open_home(bot: Bot, user: str) -> dict[str, Any]:
    event = {"type": "app_home_opened", "user": user, "channel": f"D{user}", "tab": "home"}

    def published() -> int:
        return len([c for c in bot.fake.calls_to("views.publish") if c.args.get("user_id") == user])

    before = published()
    status, _, _ = await bot.post(signing.event_callback(SECRET, event, event_id=f"Ev{user}{before}"))
    assert status == 200
    await until(lambda: published() > before, what=f"{user}'s App Home")
    return bot.fake.home_views[user]


def _home(bot: Bot, user: str) -> str:
    return _dump(bot.fake.home_views[user]["blocks"])


async def test_app_home_shows_deployments_locks_gates_for_their_approvers_and_own_runs(bot: Bot) -> None:
    first, card = await _through_staging(bot, "1.0.0", OLD)
    await until(lambda: bot.run(first).stages[2].status == "waiting", what="the production gate")

    bob = _dump((await _open_home(bot, BOB))["blocks"])
    assert f"*staging*: `ship@1.0.0` (revision `{OLD}`) · {first} since " in bob
    assert f"by <@{ALICE}>" in bob and ":unlock: not locked" in bob
    assert "*production*: nothing deployed yet" in bob
    # DORA's four keys over 30 days under each environment, each with what it rests on
    assert ":bar_chart: 30d: 0.2/week (1) · lead n/a (0 of 1) · failure rate 0% (1) · restore n/a (0)" in bob
    assert ":bar_chart: 30d: 0.0/week (0) · lead n/a (0 of 0) · failure rate n/a (0) · restore n/a (0)" in bob
    assert f"*{first}* waits for approval before *production*" in bob and "gate_approve" in bob
    assert f"approvers: {MANAGERS}, {MAPPED}" in bob
    assert "You have not started a run yet" in bob

    dave = _dump((await _open_home(bot, DAVE))["blocks"])  # an approver by his Slack group
    assert f"*{first}* waits for approval" in dave and "gate_approve" in dave
    for nobody in (CAROL, ALICE):  # no approver role; the run's own trigger
        home = _dump((await _open_home(bot, nobody))["blocks"])
        assert "Nothing is waiting for you." in home and "gate_approve" not in home
    assert f"{first} waiting" in _home(bot, ALICE)  # her recent runs

    # a lock taken over the REST API shows (who, why, until when) without anyone reopening it
    auth = bot.api_auth("ops")
    assert bot.client is not None
    locked = await bot.client.post(
        "/api/v1/environments/staging/lock", json={"reason": "incident 4711", "duration": "2h"}, headers=auth
    )
    assert locked.status == 201, await locked.text()
    await until(lambda: "incident 4711" in _home(bot, BOB), what="the lock on Bob's home")
    assert ":lock: staging is locked by ops since " in _home(bot, BOB) and "; expires " in _home(bot, BOB)
    freed = await bot.client.delete("/api/v1/environments/staging/lock", headers=auth)
    assert freed.status == 200, await freed.text()
    await until(lambda: "incident 4711" not in _home(bot, BOB), what="the lock gone from Bob's home")

    # once Bob approved, the gate no longer waits for him (it still waits for one more)
    await _approve(bot, BOB, card)
    await until(lambda: "gate_approve" not in _home(bot, BOB), what="the gate gone from Bob's home")
    assert "Nothing is waiting for you." in _home(bot, BOB)
    await until(lambda: "1 of 2" in _home(bot, DAVE), what="the progress on Dave's home")


async def test_a_gate_for_an_access_group_mentions_its_members_in_slack_who_may_clear_it(
    start_bot: StartBot, fake: FakeSlack
) -> None:
    fake.usergroups["S0ONCALL"] = [DAVE]  # the on-call user group is in release-managers
    bot = await start_bot(
        {"ship": ship(gates=False)},
        {
            ALICE: [Role.DEPLOYER],
            BOB: [Role.APPROVER, RELEASE_MANAGERS],
            CAROL: [RELEASE_MANAGERS],  # in the group, without the approver role: cannot clear it
            "ci-bot": [Role.APPROVER, RELEASE_MANAGERS],  # an API token: no one to mention
            "S0ONCALL": [RELEASE_MANAGERS],
        },
        slack_roles={"S0ONCALL": ["approver"]},
        environments={"production": {"approvals": {"from": ["release-managers"]}}},
    )
    ref = await bot.trigger(ALICE, "run ship version=1.0.0")
    card = await bot.gate_card(ref)
    mentioned = f"approvers: <!subteam^S0ONCALL>, <@{BOB}>"
    assert mentioned in card.args["text"], card.args["text"]  # the notification's own text
    shown = _card_text(blocks_of(card))
    assert mentioned in shown
    for not_mentioned in ("release-managers", CAROL, "ci-bot"):
        assert not_mentioned not in card.args["text"] and not_mentioned not in shown

    await _approve(bot, DAVE, card)  # notified through the on-call group, and may clear the gate
    await bot.until_status(ref, "succeeded", timeout=15)
