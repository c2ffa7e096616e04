"""Environment verbs end to end through the real Bolt endpoint (signed requests, fake Slack):
`why` lists every blocker at once, `queue` shows places, `rollback` asks the deploy question
(the artifact it goes back to, what is live now) and its button starts one rollback however
often it is pressed, `history` tells what went where."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from core.access import Role
from storage.locks import LockStore
from storage.reads import Reads, RunFilter
from tests.pipelines import SHOP
from tests.slack.harness import ALICE, Bot, StartBot, blocks_of, until

ENVIRONMENTS = {
    "staging": {},
    "production": {
        "approvals": {"from": ["release-managers"], "count": 2},
        "freezes": [{"every": "* * * * *", "until": "0 0 1 1 *", "reason": "year-end freeze"}],
    },
}


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    return await start_bot({"shop": SHOP}, {ALICE: [Role.ADMIN]}, environments=ENVIRONMENTS)


async def _released(bot: Bot, version: str) -> str:
    ref = await bot.trigger(ALICE, f"run shop version={version}")
    await bot.until_status(ref, "queued", "waiting", "succeeded", "failed")
    return ref


async def test_why_lists_every_blocker_at_once_and_queue_shows_places(bot: Bot) -> None:
    LockStore(bot.store).acquire("production", ALICE, "incident 4711", 7200, datetime.now(UTC))
    ref = await _released(bot, "1.0.0")
    state = await bot.until_status(ref, "waiting", "queued")
    assert state.run.status == "waiting", state.run.reason  # the production gate comes first

    reply = await bot.say(ALICE, "why production shop")
    text = reply["text"]
    assert text.startswith("A deployment to *production* would wait or be refused:")
    for kind in ("lock", "freeze", "approvals"):
        assert f"• *{kind}*:" in text, kind
    assert "incident 4711" in text and "year-end freeze" in text and "release-managers" in text
    assert "`/deploy unlock production`" in text
    clear = await bot.say(ALICE, "why staging")
    assert clear["text"] == "Nothing stands in the way: a deployment to *staging* would start now."

    queue = await bot.say(ALICE, "queue production")
    assert queue["text"].startswith("*production*: nothing deploying")


async def test_rollback_asks_first_then_its_button_rolls_back(bot: Bot) -> None:
    for version in ("1.0.0", "2.0.0"):
        ref = await _released(bot, version)
        await until(lambda r=ref: bot.run(r).stages[1].status == "succeeded", what=f"{ref} in staging")
    # a finished run's thread offers "Roll back staging", which asks the same question
    await bot.say(ALICE, "cancel shop#1")  # (it waits at production's gate)
    result = await bot.fake.wait_for(
        "chat.postMessage",
        lambda c: "thread_ts" in c.args and "Roll back staging" in json.dumps(c.args),
        timeout=10,
    )
    offer = next(e for b in blocks_of(result) if b["type"] == "actions" for e in b["elements"])
    token = await bot.press(ALICE, offer["action_id"], offer["value"], result.response["ts"])
    question = (await bot.fake.wait_response(token)).body
    assert isinstance(question, dict) and question["text"] == "Roll staging back to shop@1.0.0?"

    # the deploy question, as before a confirm: true environment, wherever a rollback goes
    asked = await bot.say(ALICE, "rollback staging")
    assert asked["response_type"] == "ephemeral" and asked["text"] == "Roll staging back to shop@1.0.0?"
    text = asked["blocks"][0]["text"]["text"]
    for line in (
        ":rewind: *shop* rolls *staging* back to `shop@1.0.0` (a new run; nothing is rebuilt). Start it?",
        "pipeline: *shop* v1 · rollback",
        "artifact: `shop@1.0.0`",
        "parameters: `version=1.0.0`",  # the artifact's build's, as the engine fills them in
        "live in staging now: artifact `shop@2.0.0` (shop#2, since ",
    ):
        assert line in text, line
    assert "revision: not given" not in text  # the artifact says what is deployed
    button = asked["blocks"][1]["elements"][0]
    assert button["action_id"] == "run_confirm" and button["text"]["text"] == "Roll back"

    tokens = await asyncio.gather(*(bot.press(ALICE, "run_confirm", button["value"], "0") for _ in range(2)))
    answers = sorted([(await bot.fake.wait_response(t)).body["text"] for t in tokens])
    assert answers[0].startswith("Already started as *shop#3*"), answers
    assert answers[1].startswith(f"Started *shop#3*, confirmed by <@{ALICE}>"), answers
    done = await bot.until_status("shop#3", "succeeded")
    assert done.run.kind == "rollback" and done.run.parameters == {"version": "1.0.0"}
    assert len(Reads(bot.store).runs(RunFilter(pipeline="shop"), None, 10)) == 3  # one rollback
    history = await bot.say(ALICE, "history staging")
    assert "shop@1.0.0 — rollback" in history["text"].splitlines()[1]

    held = await bot.fake.wait_for(
        "chat.postMessage",
        lambda c: "thread_ts" in c.args and "acknowledge" in json.dumps(c.args).lower(),
        timeout=10,
    )
    ack = next(
        e
        for b in blocks_of(held)
        if b["type"] == "actions"
        for e in b["elements"]
        if e["text"]["text"] == "Acknowledge"
    )
    assert LockStore(bot.store).current("staging", datetime.now(UTC)) is not None
    await bot.press(ALICE, ack["action_id"], ack["value"], held.response["ts"])
    await until(
        lambda: LockStore(bot.store).current("staging", datetime.now(UTC)) is None,
        what="the lock to go",
    )

    expired = json.loads(button["value"]) | {"until": 0}
    token = await bot.press(ALICE, "run_confirm", json.dumps(expired), "0")
    late = (await bot.fake.wait_response(token)).body
    assert late["text"] == ":warning: That question expired; type `/deploy rollback staging` again."
    # a Roll back button posted before rollbacks asked the deploy question
    token = await bot.press(ALICE, "env_rollback", json.dumps({"env": "staging", "until": 0}), "0")
    old = (await bot.fake.wait_response(token)).body
    assert old["text"] == ":warning: That question expired; type `/deploy rollback staging` again."
    assert len(Reads(bot.store).runs(RunFilter(pipeline="shop"), None, 10)) == 3
