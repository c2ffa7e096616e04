"""Input no one means to send, end to end through the Bolt endpoint: characters a database
cannot store, button values that are not Shipyard's, buttons it does not know, durations and
names that are almost right. Each gets an ephemeral answer saying what was wrong, and nothing
changes: no run, no lock, no decided gate."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bot.chat.parse import Line, parse
from core.access import Role
from core.errors import InvalidInput
from tests.pipelines import GATED_ON_REF, SHOP
from tests.slack import signing
from tests.slack.fake_slack import settle_bolt_tasks
from tests.slack.harness import (
    ALICE,
    BOB,
    CHANNEL,
    RELEASE_MANAGERS,
    ROOT,
    SECRET,
    Bot,
    StartBot,
    button,
    top_level_posts,
)

GRANTS = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER, RELEASE_MANAGERS], ROOT: [Role.ADMIN]}
ENVIRONMENTS = {"staging": {}, "production": {}}


@pytest.fixture
async def bot(start_bot: StartBot, db_url: str) -> Bot:
    return await start_bot(
        {"shop": SHOP, "gated": GATED_ON_REF}, GRANTS, database_url=db_url, environments=ENVIRONMENTS
    )


def _ephemeral(reply: dict[str, Any]) -> str:
    assert reply["response_type"] == "ephemeral", reply
    return str(reply["text"])


async def _gate_card(bot: Bot) -> tuple[str, str]:
    """gated#1 started by Alice and waiting at its gate: the Approve button's value, and the card's ts."""
    assert "Started *gated#1*" in _ephemeral(await bot.say(ALICE, "run gated ref=abc1234"))
    card = await bot.gate_card("gated#1")
    return button(card, "gate_approve")["value"], card.args["thread_ts"]


@pytest.mark.parametrize(
    "text",
    ["status a\x00b", "run shop version=1\x00", 'lock production "incident\x00"', "why production\x00"],
)
async def test_a_nul_character_in_a_command_is_named_instead_of_failing_in_the_database(
    bot: Bot, text: str
) -> None:
    said = _ephemeral(await bot.say(ROOT, text))
    assert said.startswith(":warning: cannot read that: it contains a NUL character"), said
    assert "nothing" in _ephemeral(await bot.say(ROOT, "envs"))  # no run, no lock
    assert "No environment is locked" in _ephemeral(await bot.say(ROOT, "locks"))
    assert not top_level_posts(bot.fake)


@pytest.mark.parametrize(
    "text",
    [
        "status\u00a0web#1",  # a no-break space (macOS types one with Option-Space)
        "status web#1\u00a0",
        "status\u3000web#1",  # an ideographic space
        "status\u2003 web#1",
        "\u200bstatus web\u200b#1",  # zero-width spaces pasted along with the text
        "\ufeffstatus web#1",
    ],
)
def test_unicode_spaces_part_words_like_spaces(text: str) -> None:
    assert parse(text) == Line("status", ["web#1"])


def test_half_an_emoji_is_named_too() -> None:
    """Socket Mode carries a command's text as JSON, which can escape a lone surrogate."""
    with pytest.raises(InvalidInput, match="half of an emoji"):
        parse("status web#\ud83d")


@pytest.mark.parametrize(
    ("action_id", "value"),
    [
        ("gate_approve", '{"run": "\\ud800"}'),
        ("gate_approve", '{"run": "gated#1\\u0000"}'),
        ("review_ack", '{"run": "\\ud800"}'),
        ("run_confirm", "null"),
        ("run_confirm", "[]"),
    ],
)
async def test_a_button_value_that_is_not_shipyards_is_told_so(bot: Bot, action_id: str, value: str) -> None:
    await _gate_card(bot)
    assert _ephemeral(await bot.answer(BOB, action_id, value)) == ":warning: That button is not one of mine."
    assert bot.gate("gated#1").status == "open"


async def test_a_button_shipyard_does_not_know_is_answered(bot: Bot) -> None:
    token = await bot.press(BOB, "deploy_everything", "{}", "1.0")  # (200, not Bolt's 404)
    answer = (await bot.fake.wait_response(token)).body
    assert "not one of mine" in _ephemeral(answer)


async def test_reject_with_a_value_that_is_not_shipyards_asks_for_no_reason(bot: Bot) -> None:
    _, ts = await _gate_card(bot)
    token = await bot.press(BOB, "gate_reject", "{", ts, trigger_id=signing.new_trigger_id())
    assert "not one of mine" in _ephemeral((await bot.fake.wait_response(token)).body)
    await settle_bolt_tasks()
    assert not bot.fake.calls_to("views.open")


async def test_a_reject_reason_with_a_nul_character_is_shown_in_the_form(bot: Bot) -> None:
    value, _ = await _gate_card(bot)
    reason = {"reason": {"value": {"type": "plain_text_input", "value": "broken\x00"}}}
    answer = await bot.submit(BOB, "gate_reject_form", reason, value)
    assert answer is not None and "NUL character" in answer["errors"]["reason"]
    assert bot.gate("gated#1").status == "open"


async def test_a_trigger_form_field_with_a_nul_character_is_marked(bot: Bot) -> None:
    values = {
        "pipeline": {"pipeline": {"type": "static_select", "selected_option": {"value": "shop"}}},
        "param:shop:version": {"value": {"type": "plain_text_input", "value": "1.0\x00"}},
    }
    answer = await bot.submit(ALICE, "trigger_form", values, CHANNEL)
    assert answer is not None
    assert answer["errors"] == {"param:shop:version": "Type it again without a NUL character"}
    assert not top_level_posts(bot.fake)


@pytest.mark.parametrize("duration", ["-5m", "+5m", "-1d"])
async def test_a_signed_lock_duration_is_refused_not_read_as_part_of_the_reason(
    bot: Bot, duration: str
) -> None:
    said = _ephemeral(await bot.say(ALICE, f'lock staging "db migration" for {duration}'))
    assert f"invalid lock duration '{duration}'" in said, said
    assert "No environment is locked" in _ephemeral(await bot.say(ALICE, "locks"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("why prodcution", "Unknown environment `prodcution`. Did you mean `production`?"),
        ("why production shpo", "Unknown pipeline `shpo`. Did you mean `shop`?"),
        ("why staging for 2h", "`why` does not take `2h`. Usage: `/deploy why <environment> [pipeline]"),
        ("queue prodcution", "Unknown environment `prodcution`. Did you mean `production`?"),
    ],
)
async def test_why_and_queue_name_an_environment_or_pipeline_that_does_not_exist(
    bot: Bot, text: str, expected: str
) -> None:
    """Before, each said all was clear ("Nothing stands in the way", "nothing deploying")."""
    assert expected in _ephemeral(await bot.say(ALICE, text))


async def test_approve_pressed_twice_at_once_approves_once(bot: Bot) -> None:
    value, ts = await _gate_card(bot)
    tokens = await asyncio.gather(*(bot.press(BOB, "gate_approve", value, ts) for _ in range(2)))
    await bot.until_status("gated#1", "succeeded", timeout=15)
    await settle_bolt_tasks()
    approvals = [e for e in bot.events("gated#1") if e.name == "gate.approval_added"]
    assert len(approvals) == 1, approvals
    answers = [r.body for t in tokens for r in bot.fake.responses_to(t)]
    assert len(answers) <= 1 and all("approved" in json.dumps(a) for a in answers), answers


# -- presses in a modal or App Home (no response_url to answer through) ---------------------------
def _view(bot: Bot, kind: str) -> dict[str, Any]:
    """A view as Slack holds it: a modal the bot opened, or ALICE's App Home."""
    spec = {"type": kind, "blocks": []}
    if kind == "modal":
        spec["title"] = {"type": "plain_text", "text": "Old form"}
    view_id = f"V{kind.upper()}"
    bot.fake.views[view_id] = {**spec, "id": view_id, "hash": "1.x", "callback_id": "old_form"}
    return bot.fake.views[view_id]


@pytest.mark.parametrize(("kind", "method"), [("modal", "views.push"), ("home", "views.open")])
async def test_a_stale_button_in_a_modal_or_app_home_is_answered_over_it(
    bot: Bot, kind: str, method: str
) -> None:
    trigger = signing.new_trigger_id()
    request = signing.block_actions(
        SECRET,
        user_id=ALICE,
        action_id="deploy_everything",
        value="{}",
        view=_view(bot, kind),
        trigger_id=trigger,
    )
    status, _, text = await bot.post(request)
    assert (status, text) == (200, "")
    shown = await bot.fake.wait_for(method, lambda c: c.args.get("trigger_id") == trigger)
    assert shown.ok, shown.response
    assert "no longer in use" in json.dumps(shown.args["view"])


async def test_a_refused_press_on_app_home_is_told_to_the_presser(bot: Bot) -> None:
    value, _ = await _gate_card(bot)  # Alice's own run: she cannot approve it
    trigger = signing.new_trigger_id()
    request = signing.block_actions(
        SECRET,
        user_id=ALICE,
        action_id="gate_approve",
        value=value,
        view=_view(bot, "home"),
        trigger_id=trigger,
    )
    assert (await bot.post(request))[0] == 200
    shown = await bot.fake.wait_for("views.open", lambda c: c.args.get("trigger_id") == trigger)
    assert "cannot approve" in json.dumps(shown.args["view"]), shown.args["view"]
    assert bot.gate("gated#1").status == "open"


async def test_a_press_in_app_home_slack_will_not_show_a_modal_for_is_told_directly(bot: Bot) -> None:
    trigger = signing.new_trigger_id()
    bot.fake.expire_trigger(trigger)  # (worked on after more than 3 s)
    request = signing.block_actions(
        SECRET,
        user_id=ALICE,
        action_id="deploy_everything",
        value="{}",
        view=_view(bot, "home"),
        trigger_id=trigger,
    )
    assert (await bot.post(request))[0] == 200
    told = await bot.fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == ALICE)
    assert "no longer in use" in told.args["text"]
