"""The trigger form and the question before production, end to end: requests signed as Slack
signs them go to the real Bolt endpoint of ``create_app`` (SQLite, real runs); the bot's Web API
calls go to the fake Slack.

`/deploy` alone opens a picker; picking a pipeline rebuilds the form with one field per
parameter (views.update); a submit reports what is wrong field by field, starts the run, or,
for an environment marked ``confirm: true``, asks in the channel exactly as `/deploy run` does.
The question shows what goes where and what is live there now; two presses start one run.
`/deploy promote` to such an environment asks the same question, showing the artifact."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from core.access import Role
from storage.reads import Reads, RunFilter
from tests.pipelines import one_job
from tests.slack import signing
from tests.slack.harness import ALICE, BOB, CHANNEL, SECRET, Bot, StartBot, blocks_of, button

WEB = """
name: web
description: the storefront
compare_url: https://git.example/web/compare/{from}...{to}
parameters:
  - {name: ref, required: true, pattern: "^[0-9a-f]{7,40}$", description: the commit}
  - {name: region, type: choice, choices: [eu, us], default: eu}
  - {name: canary, type: boolean, default: false}
  - {name: replicas, type: number, default: 3}
  - {name: note, description: why now}
stages:
  - name: build
    jobs:
      - name: image
        run: |
          n=$SHIPYARD_RUN_NUMBER
          echo "artifact=web@1.0.$n digest=sha256:$(printf %064d $n) uri=oci://r/web" >> "$SHIPYARD_OUTPUT"
  - name: production
    environment: production
    jobs: [{name: deploy, run: "true"}]
"""
ENVIRONMENTS = {"production": {"confirm": True, "branches": ["main"]}}


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    grants = {ALICE: [Role.DEPLOYER], BOB: [Role.DEPLOYER]}
    docs = one_job("docs", stage="publish", job="upload", head="parameters: [{name: verbose, type: boolean}]")
    return await start_bot({"web": WEB, "docs": docs}, grants, environments=ENVIRONMENTS)


def _refs(bot: Bot) -> list[str]:
    return sorted(s.run.ref for s in Reads(bot.store).runs(RunFilter(), None, 50))


def _question_text(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(b["text"]["text"] for b in blocks if b["type"] == "section")


# -- the form ----------------------------------------------------------------------------------------
def _option(value: str, text: str | None = None) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text or value}, "value": value}


async def _open_form(bot: Bot) -> dict[str, Any]:
    """``/deploy`` alone as ALICE; the modal as the fake Slack holds it (id, hash, blocks)."""
    trigger = signing.new_trigger_id()
    await bot.command(ALICE, "", trigger_id=trigger)
    opened = await bot.fake.wait_for("views.open", lambda c: c.args.get("trigger_id") == trigger)
    assert opened.ok, opened.response
    return dict(bot.fake.views[opened.response["view"]["id"]])


async def _pick(bot: Bot, view: dict[str, Any], pipeline: str) -> dict[str, Any]:
    """Pick ``pipeline`` in the form (a block_actions from the modal); the view it becomes."""
    before = len(bot.fake.calls_to("views.update"))
    selected = {"type": "static_select", "selected_option": _option(pipeline)}
    request = signing.block_actions(
        SECRET,
        user_id=ALICE,
        action_id="trigger_pipeline",
        value=None,
        block_id="pipeline",
        view=view,
        action_type="static_select",
        action_fields={"selected_option": _option(pipeline)},
        state_values={"pipeline": {"trigger_pipeline": selected}},
    )
    status, _, text = await bot.post(request)
    assert status == 200, text
    calls = await bot.fake.wait_for_count("views.update", before + 1)
    update = calls[before]
    assert update.ok, update.response
    assert update.args["view_id"] == view["id"] and update.args["hash"] == view["hash"]
    return dict(bot.fake.views[view["id"]])


def _field(view: dict[str, Any], block_id: str) -> dict[str, Any]:
    return next(b for b in view["blocks"] if b.get("block_id") == block_id)


async def _submit(
    bot: Bot, view: dict[str, Any], pipeline: str, fields: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """Submit ``view`` with ``pipeline`` picked and ``fields`` (block id → element state)."""
    values: dict[str, dict[str, Any]] = {
        "pipeline": {"trigger_pipeline": {"type": "static_select", "selected_option": _option(pipeline)}}
    }
    values.update({block_id: {"value": state} for block_id, state in fields.items()})
    request = signing.view_submission(
        SECRET,
        user_id=ALICE,
        callback_id="trigger_form",
        values=values,
        private_metadata=view["private_metadata"],
        blocks=view["blocks"],
        view_id=view["id"],
    )
    status, _, text = await bot.post(request)
    assert status == 200, text
    return json.loads(text) if text else None


def _text(value: str | None) -> dict[str, Any]:
    return {"type": "plain_text_input", "value": value}


def _menu(value: str | None) -> dict[str, Any]:
    return {"type": "static_select", "selected_option": _option(value) if value else None}


async def test_deploy_alone_opens_a_picker_that_asks_slack_to_tell_when_it_changes(bot: Bot) -> None:
    view = await _open_form(bot)
    assert view["callback_id"] == "trigger_form" and view["private_metadata"] == CHANNEL
    picker = _field(view, "pipeline")
    assert picker["dispatch_action"] is True and picker["type"] == "input"
    assert picker["element"]["action_id"] == "trigger_pipeline"
    assert [o["value"] for o in picker["element"]["options"]] == ["docs", "web"]
    assert "initial_option" not in picker["element"]
    assert not [b for b in view["blocks"] if str(b.get("block_id", "")).startswith("param:")]
    assert not bot.fake.responses  # the modal is the whole answer


async def test_picking_a_pipeline_rebuilds_the_form_with_a_field_per_parameter(bot: Bot) -> None:
    view = await _pick(bot, await _open_form(bot), "web")
    assert _field(view, "pipeline")["element"]["initial_option"]["value"] == "web"
    assert view["submit"]["text"] == "Continue"  # production asks first
    about = json.dumps(view["blocks"])
    assert "deploys to production" in about and "production asks first" in about

    ref = _field(view, "param:web:ref")
    assert ref["optional"] is False and ref["element"]["type"] == "plain_text_input"
    assert "Must match ^[0-9a-f]{7,40}$" in ref["hint"]["text"] and "the commit" in ref["hint"]["text"]
    region = _field(view, "param:web:region")["element"]
    assert region["type"] == "static_select" and [o["value"] for o in region["options"]] == ["eu", "us"]
    assert region["initial_option"]["value"] == "eu"
    canary = _field(view, "param:web:canary")["element"]
    assert [o["value"] for o in canary["options"]] == ["true", "false"]
    assert canary["initial_option"]["value"] == "false"
    replicas = _field(view, "param:web:replicas")["element"]
    assert replicas["type"] == "number_input" and replicas["initial_value"] == "3"
    assert _field(view, "param:web:note")["optional"] is True
    branch = _field(view, "branch")  # production takes only main
    assert branch["optional"] is False and "main" in branch["hint"]["text"]
    assert not [b for b in view["blocks"] if b.get("block_id") == "revision"]  # ref is the revision

    view = await _pick(bot, view, "docs")
    assert view["submit"]["text"] == "Start"
    assert not [b for b in view["blocks"] if str(b.get("block_id", "")).startswith("param:web:")]
    verbose = _field(view, "param:docs:verbose")
    assert verbose["optional"] is True and "initial_option" not in verbose["element"]
    assert _field(view, "revision")["optional"] is True
    assert not [b for b in view["blocks"] if b.get("block_id") == "branch"]


async def test_a_submitted_form_says_which_field_is_wrong_or_starts_the_run(bot: Bot) -> None:
    web = await _pick(bot, await _open_form(bot), "web")
    wrong = await _submit(bot, web, "web", {"param:web:ref": _text("zzz"), "branch": _text("main")})
    assert wrong is not None and wrong["response_action"] == "errors"
    assert list(wrong["errors"]) == ["param:web:ref"] and "does not match" in wrong["errors"]["param:web:ref"]
    missing = await _submit(bot, web, "web", {"param:web:ref": _text(None)})
    assert missing is not None and missing["errors"] == {"param:web:ref": "ref is required"}
    # picked docs, but the form still shows web's fields (the update has not landed)
    early = await _submit(bot, web, "docs", {})
    assert early is not None and list(early["errors"]) == ["pipeline"]

    docs = await _pick(bot, web, "docs")
    done = await _submit(bot, docs, "docs", {"param:docs:verbose": _menu("true"), "revision": _text("v2.1")})
    assert done is None  # the form closes
    state = await bot.until_status("docs#1", "succeeded")
    assert state.run.parameters == {"verbose": "true"} and state.run.source_revision == "v2.1"
    posted = await bot.fake.wait_for("chat.postMessage", lambda c: "docs#1" in c.args.get("text", ""))
    assert posted.args["channel"] == CHANNEL
    assert _refs(bot) == ["docs#1"]


async def test_a_form_for_production_asks_in_the_channel_like_the_command_then_deploys(bot: Bot) -> None:
    web = await _pick(bot, await _open_form(bot), "web")
    fields = {"param:web:ref": _text("abc1234"), "param:web:region": _menu("us"), "branch": _text("main")}
    assert await _submit(bot, web, "web", fields) is None
    asked = await bot.fake.wait_for("chat.postEphemeral")
    assert asked.ok and asked.args["channel"] == CHANNEL and asked.args["user"] == ALICE
    text = _question_text(blocks_of(asked))
    assert "*web* deploys to *production*" in text and "revision: `abc1234` (parameter `ref`)" in text
    assert "branch: `main`" in text and "`region=us`" in text
    assert "live in production now: nothing yet" in text
    assert _refs(bot) == []  # nothing starts before the answer

    deploy = button(asked, "run_confirm")
    token = await bot.press(ALICE, deploy["action_id"], deploy["value"], asked.response["message_ts"])
    answer = (await bot.fake.wait_response(token)).body
    assert "Started *web#1*" in answer["text"] and answer["replace_original"] is True
    state = await bot.until_status("web#1", "succeeded")
    assert state.run.branch == "main" and state.run.parameters["region"] == "us"
    await bot.fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == CHANNEL)

    # a channel the bot is not in: the question comes as a direct message instead
    bot.fake.fail_next("chat.postEphemeral", "not_in_channel")
    assert await _submit(bot, web, "web", fields) is None
    direct = await bot.fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == ALICE)
    assert "live in production now: artifact `web@1.0.1`" in _question_text(blocks_of(direct))


# -- the question before production ----------------------------------------------------------------
async def _press(bot: Bot, user: str, value: str) -> dict[str, Any]:
    return await bot.answer(user, "run_confirm", value)


async def test_the_question_shows_what_goes_where_and_two_presses_start_one_run(bot: Bot) -> None:
    question = await bot.say(ALICE, "run web ref=abc1234 branch=main")
    assert question["response_type"] == "ephemeral"
    text = _question_text(question["blocks"])
    for line in (
        "*web* deploys to *production*. Start it?",
        "pipeline: *web* v1",
        "revision: `abc1234` (parameter `ref`)",
        "branch: `main`",
        "parameters: `ref=abc1234` `region=eu` `canary=false` `replicas=3`",
        "live in production now: nothing yet",
        "expires in 60 seconds",
    ):
        assert line in text, line
    assert _refs(bot) == []
    value = button(question, "run_confirm")["value"]

    assert "was for <@U0ALICE>" in (await _press(bot, BOB, value))["text"]
    first, second = await asyncio.gather(_press(bot, ALICE, value), _press(bot, ALICE, value))
    answers = sorted([first["text"], second["text"]])
    assert answers[0].startswith("Already started as *web#1*"), answers
    assert answers[1].startswith("Started *web#1*, confirmed by <@U0ALICE>"), answers
    # the answer takes the question's place, so its button is gone
    assert {first.get("replace_original"), second.get("replace_original")} == {True}
    state = await bot.until_status("web#1", "succeeded")
    assert state.run.branch == "main"  # kept from the command: production takes only main
    assert _refs(bot) == ["web#1"]

    again = await bot.say(ALICE, "run web ref=def5678 branch=main region=us")
    text = _question_text(again["blocks"])
    assert "live in production now: artifact `web@1.0.1`, revision `abc1234` (web#1, since " in text
    assert "<https://git.example/web/compare/abc1234...def5678|compare abc1234…def5678>" in text
    stale = json.loads(button(again, "run_confirm")["value"]) | {"until": time.time() - 1}
    late = await _press(bot, ALICE, json.dumps(stale))
    assert "That question expired; type `/deploy run web …` again." in late["text"]
    assert _refs(bot) == ["web#1"]


async def test_a_bad_parameter_is_refused_before_anything_is_asked(bot: Bot) -> None:
    reply = await bot.say(ALICE, "run web ref=NOT-HEX branch=main")
    assert "does not match" in reply["text"] and "/deploy run web ref=…" in reply["text"]
    assert not reply.get("blocks")


async def test_runs_of_a_mistyped_pipeline_name_the_closest_one(bot: Bot) -> None:
    reply = await bot.say(ALICE, "runs wbe")
    assert reply["text"].startswith(":warning: Unknown pipeline `wbe`. Did you mean `web`?")
    assert (await bot.say(ALICE, "runs docs"))["text"] == "No runs of `docs` yet."


# -- promotion asks the same question ----------------------------------------------------------------
async def test_promote_to_production_asks_what_goes_and_what_is_live_then_starts_one_run(bot: Bot) -> None:
    for number, ref in ((1, "abc1234"), (2, "def5678")):
        question = await bot.say(ALICE, f"run web ref={ref} branch=main")
        assert (await _press(bot, ALICE, button(question, "run_confirm")["value"]))["text"].startswith(
            f"Started *web#{number}*"
        )
        await bot.until_status(f"web#{number}", "succeeded")

    asked = await bot.say(ALICE, "promote web@1.0.1 to production")
    assert asked["response_type"] == "ephemeral" and asked["text"] == "Deploy web to production?"
    text = _question_text(asked["blocks"])
    for line in (
        ":warning: *web* promotes `web@1.0.1` to *production*. Start it?",
        "pipeline: *web* v1 · promotion",
        "revision: `abc1234` (parameter `ref`)",  # the artifact's build, as the engine fills it in
        "branch: `main`",
        "artifact: `web@1.0.1`",
        "live in production now: artifact `web@1.0.2`, revision `def5678` (web#2, since ",
        "<https://git.example/web/compare/def5678...abc1234|compare def5678…abc1234>",
    ):
        assert line in text, line
    assert _refs(bot) == ["web#1", "web#2"]  # nothing starts before the answer

    value = button(asked, "run_confirm")["value"]
    first, second = await asyncio.gather(_press(bot, ALICE, value), _press(bot, ALICE, value))
    answers = sorted([first["text"], second["text"]])
    assert answers[0].startswith("Already started as *web#3*"), answers
    assert answers[1].startswith("Started *web#3*, confirmed by <@U0ALICE>"), answers
    state = await bot.until_status("web#3", "succeeded")
    assert state.run.kind == "promotion" and state.run.parameters["ref"] == "abc1234"
    assert _refs(bot) == ["web#1", "web#2", "web#3"]
    assert "live in production now: artifact `web@1.0.1`" in _question_text(
        (await bot.say(ALICE, "promote web@1.0.2 to production"))["blocks"]
    )
