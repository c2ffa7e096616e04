"""Who may clear a gate is fixed when it opens, in Slack as over REST: the bot does not check the
presser's roles now, the engine checks what they held when the gate opened. Requests signed as
Slack signs them go to the real Bolt endpoint of ``create_app`` (SQLite, real runs); roles are
edited in the real database while the gate waits, and a Slack user group's members are read
again from the fake Slack by the bot's own sync.

Bob held the approver role and Dave was in the approvers' user group when the gate opened; both
lost it afterwards and still clear the gate (a button, a command). Carol was granted the role
afterwards: she is refused both ways, and told why, by the engine's own words."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.backend import Backend
from bot.slack import roles
from core.access import Role
from storage.directory import Directory
from tests.pipelines import gated
from tests.slack.fake_slack import FakeSlack
from tests.slack.harness import ALICE, BOB, CAROL, DAVE, ERIN, Bot, StartBot, button, until

GROUP = "S0RELEASE"
SLACK_ROLES = {GROUP: [str(Role.APPROVER)]}


@pytest.fixture
async def bot(start_bot: StartBot, fake: FakeSlack) -> Bot:
    fake.usergroups[GROUP] = [DAVE]
    grants = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER], ERIN: [Role.APPROVER]}
    return await start_bot(
        {"gated": gated(approvers="approver", min_approvals=2, ref="")}, grants, slack_roles=SLACK_ROLES
    )


async def _waiting(bot: Bot, ref: str) -> str:
    """ALICE starts gated; the Approve button's value on its gate card once the gate is open."""
    run = await bot.trigger(ALICE, f"run gated ref={ref}")
    await bot.until_status(run, "waiting")
    return str(button(await bot.gate_card(run), "gate_approve")["value"])


async def _edit_roles_after_the_gate_opened(bot: Bot) -> None:
    """Bob and Erin lose the approver role, Dave leaves the user group (read again by the bot's
    own sync, as every few minutes), Carol is granted the role."""
    directory, at = Directory(bot.store), datetime.now(UTC)
    for user in (BOB, ERIN):
        directory.revoke_grant(user, "role", str(Role.APPROVER), at)
    directory.grant(CAROL, "role", str(Role.APPROVER), at)
    bot.fake.usergroups[GROUP] = []
    backend = Backend()
    backend.bind(bot.shipyard)
    try:
        await roles.sync(backend, AsyncWebClient(token="xoxb-test", base_url=bot.fake.base_url), SLACK_ROLES)
    finally:
        await backend.close()
    for user in (BOB, DAVE, ERIN):
        assert "Roles: none" in (await bot.say(user, "whoami"))["text"], user
    assert "Roles: approver." in (await bot.say(CAROL, "whoami"))["text"]


def _told_why(reply: dict[str, Any], ref: str) -> None:
    assert reply["response_type"] == "ephemeral", reply
    text = reply["text"]
    assert text.startswith(
        f":warning: {CAROL} did not hold the approver role when gate production of {ref} opened ("
    ), text
    assert text.endswith(" UTC); who may clear a gate is fixed when it opens"), text


async def test_approvers_when_the_gate_opened_clear_it_and_one_granted_later_is_told_why_not(
    bot: Bot,
) -> None:
    value = await _waiting(bot, "abc1234")
    await _edit_roles_after_the_gate_opened(bot)

    _told_why(await bot.answer(CAROL, "gate_approve", value), "gated#1")  # for her alone
    _told_why(await bot.say(CAROL, "approve gated#1 looks fine"), "gated#1")
    assert bot.gate("gated#1").approvals == ()

    token = await bot.press(BOB, "gate_approve", value, "1.0")
    await until(lambda: bot.gate("gated#1").approvals, what="Bob's approval")
    assert [a.actor for a in bot.gate("gated#1").approvals] == [BOB]
    said = await bot.say(DAVE, "approve gated#1 ship it")
    assert said == {**said, "response_type": "in_channel", "text": f"<@{DAVE}> approved gated#1."}
    await bot.until_status("gated#1", "succeeded")
    assert [a.actor for a in bot.gate("gated#1").approvals] == [BOB, DAVE]
    assert not bot.fake.responses_to(token)  # the card shows Bob's approval; nothing for him alone


async def test_a_revoked_approver_still_rejects_and_one_granted_later_cannot(bot: Bot) -> None:
    await _waiting(bot, "def5678")
    await _edit_roles_after_the_gate_opened(bot)

    refused = await bot.say(CAROL, "reject gated#1 not today")
    assert refused["response_type"] == "ephemeral" and "did not hold the approver role" in refused["text"]
    assert bot.gate("gated#1").status == "open"
    rejected = await bot.say(ERIN, "reject gated#1 not today")
    assert rejected["response_type"] == "in_channel"
    assert rejected["text"] == f"<@{ERIN}> rejected gated#1: not today"
    state = await bot.until_status("gated#1", "failed")
    assert bot.gate("gated#1").decided_by == ERIN and "not today" in state.run.reason
