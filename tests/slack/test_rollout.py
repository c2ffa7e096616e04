"""A canary rollout in Slack: its run message shows the weight bar, the step and its time left,
and offers Promote, Promote fully, Pause/Resume and Abort. An open-ended pause is a gate: who
triggered the run is told privately that someone else must promote it; an approver's press
moves it on. Abort asks why in a form and ends the run with that reason.

The router is a ``command`` router running ``true`` (it prints nothing, so the weights it was
given count as applied): the served app's router driver confirms each step's weights."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bot.slack import notifier
from core.access import Role
from tests.pipelines import APPROVER_PAUSE, canary, one_job
from tests.slack import signing
from tests.slack.harness import ALICE, BOB, CAROL, Bot, StartBot, button, buttons_of, until

CANARY = canary(
    "web",
    ["set_weight: 10", APPROVER_PAUSE, "set_weight: 50", "pause: {duration: 10m}"],
)
ROUTED = {
    "production": {
        "routers": {"web": {"command": ["true"], "pools": {"stable": ["web-1"], "canary": ["web-2"]}}}
    }
}
GRANTS = {ALICE: [Role.DEPLOYER, Role.APPROVER], BOB: [Role.APPROVER]}


def _text(message: dict[str, Any]) -> str:
    return "\n".join(
        b["text"]["text"] if b["type"] == "section" else str(b) for b in message.get("blocks", [])
    )


async def _shows(bot: Bot, ts: str, *words: str) -> dict[str, Any]:
    try:
        return await until(lambda: (m := bot.run_message(ts)) and all(w in _text(m) for w in words) and m)
    except AssertionError:
        raise AssertionError(f"the run message never showed {words}:\n{_text(bot.run_message(ts))}") from None


async def _waiting(start_bot: StartBot) -> tuple[Bot, str, str]:
    bot = await start_bot({"web": CANARY}, GRANTS, environments=ROUTED)
    ref = await bot.trigger(ALICE, "run web")
    await bot.until_status(ref, "waiting")
    post = await bot.run_post(ref)
    return bot, ref, post.response["ts"]


async def test_the_run_message_shows_the_rollout_and_an_approver_promotes_it(start_bot: StartBot) -> None:
    bot, ref, ts = await _waiting(start_bot)
    message = await _shows(bot, ts, "stable ▮▮▮▮▮▮▮▮▮▯ canary", "step 2 of 4: pause until a person promotes")
    assert "stable 90 / canary 10" in _text(message) and "router `web`" in _text(message)
    steer = {"rollout_promote", "rollout_promote_fully", "run_pause", "rollout_abort"}
    assert steer <= set(buttons_of(message))
    assert "run_resume" not in buttons_of(message)
    promote = button(message, "rollout_promote")

    # the pause is a gate: who triggered the run may not promote past it, and is told so alone
    refused = await bot.answer(ALICE, "rollout_promote", promote["value"], ts)
    assert refused["response_type"] == "ephemeral" and "separation of duties" in refused["text"], refused
    assert bot.run(ref).run.status == "waiting"

    await bot.press(BOB, "rollout_promote", promote["value"], ts)
    await bot.until_status(ref, "running")
    message = await _shows(bot, ts, "stable ▮▮▮▮▮▯▯▯▯▯ canary", "step 4 of 4: pause for 10m", "left (until ")
    rollout = bot.run(ref).stages[0].rollout
    assert rollout is not None and rollout.applied == {"stable": 50, "canary": 50}

    # Pause stops the timed step's clock (who triggered the run may; an approver may not
    # steer another's run); the message then offers Resume
    pause = button(message, "run_pause")["value"]
    not_bobs = await bot.answer(BOB, "run_pause", pause, ts)
    assert not_bobs["response_type"] == "ephemeral" and not_bobs["text"].startswith(":warning:"), not_bobs
    await bot.press(ALICE, "run_pause", pause, ts)
    await bot.until_status(ref, "paused")
    message = await _shows(bot, ts, "left when the run resumes")
    assert "run_pause" not in buttons_of(message)
    await bot.press(ALICE, "run_resume", button(message, "run_resume")["value"], ts)
    await bot.until_status(ref, "running")

    message = await _shows(bot, ts, "left (until ")
    fully = button(message, "rollout_promote_fully")
    assert fully["confirm"]["title"]["text"] == "Promote fully?"
    await bot.press(BOB, "rollout_promote_fully", fully["value"], ts)
    state = await bot.until_status(ref, "succeeded")
    rollout = state.stages[0].rollout
    assert rollout is not None and rollout.status == "promoted"
    done = await _shows(bot, ts, "promoted", "stable 100 / canary 0")
    assert not {"rollout_promote", "rollout_abort"} & set(buttons_of(done))
    by = [e for e in bot.events(ref) if e.name == "rollout.promoted_by"]
    assert [(e.data["by"], e.data["full"]) for e in by] == [(BOB, False), (BOB, True)]


async def test_abort_asks_why_in_a_form_and_ends_the_run_with_it(start_bot: StartBot) -> None:
    bot, ref, ts = await _waiting(start_bot)
    message = await _shows(bot, ts, "stable ▮▮▮▮▮▮▮▮▮▯ canary")
    value = button(message, "rollout_abort")["value"]
    trigger = signing.new_trigger_id()
    await bot.press(BOB, "rollout_abort", value, ts, trigger_id=trigger)
    opened = await bot.fake.wait_for("views.open")
    assert opened.ok and opened.args["trigger_id"] == trigger
    view = opened.args["view"]
    assert view["callback_id"] == "rollout_abort_form"
    assert bot.run(ref).run.status == "waiting"  # pressing Abort only asks why

    def reason(text: str) -> dict[str, dict[str, Any]]:
        return {"reason": {"value": {"type": "plain_text_input", "value": text}}}

    empty = await bot.submit(BOB, "rollout_abort_form", reason(" "), view["private_metadata"])
    assert empty is not None and empty["response_action"] == "errors" and "reason" in empty["errors"]
    assert bot.run(ref).run.status == "waiting"

    submitted = await bot.submit(BOB, "rollout_abort_form", reason("p99 doubled"), view["private_metadata"])
    assert submitted is None
    state = await bot.until_status(ref, "canceled")
    assert state.run.reason == f"rollout aborted by {BOB}: p99 doubled"
    rollout = state.stages[0].rollout
    assert rollout is not None and rollout.status == "aborted"
    assert rollout.applied == {"stable": 100, "canary": 0}
    await _shows(bot, ts, "aborted", "p99 doubled")

    # the rollout is over: a second abort, from the form of an old message, is refused in the form
    again = await bot.submit(BOB, "rollout_abort_form", reason("again"), view["private_metadata"])
    assert again is not None and "no rollout under way" in again["errors"]["reason"], again


async def test_promote_and_abort_verbs(start_bot: StartBot) -> None:
    bot, ref, _ = await _waiting(start_bot)
    mine = await bot.say(ALICE, f"promote-canary {ref}")
    assert mine["response_type"] == "ephemeral" and "triggered" in mine["text"], mine
    said = await bot.say(BOB, f"promote-canary {ref} looks fine")
    assert said["response_type"] == "in_channel", said
    assert said["text"] == (
        f"<@{BOB}> promoted {ref} past step 2 of 4 (pause until a person promotes), "
        "now wanting stable 50 / canary 50: looks fine"
    )
    await bot.until_status(ref, "running")

    aborted = await bot.say(ALICE, f'abort {ref} "latency is off"')
    assert aborted["text"] == f"<@{ALICE}> aborted the rollout of {ref}: latency is off", aborted
    state = await bot.until_status(ref, "canceled")
    assert state.run.reason == f"rollout aborted by {ALICE}: latency is off"
    assert "abort <run> [reason]" in (await bot.say(BOB, "help"))["text"]


ANALYSED = """name: web
stages:
  - name: production
    environment: production
    strategy:
      canary:
        router: web
        steps:
          - set_weight: 20
          - analysis: {checks: [error-rate], duration: 10m}
        promote: [{name: promote, run: "true"}]
        abort: [{name: remove-canary, run: "true"}]
    jobs:
      - {name: deploy-canary, run: "true"}
"""


async def test_an_analysis_step_shows_its_newest_measurements(
    start_bot: StartBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the message of a timed step is edited with no event every ROLLOUT_REFRESH_S (15 s)
    monkeypatch.setattr(notifier, "ROLLOUT_REFRESH_S", 0.2)
    check = {"command": ["sh", "-c", "echo 0.002"], "interval": "1s"}
    environments = {"production": {**ROUTED["production"], "checks": {"error-rate": check}}}
    bot = await start_bot({"web": ANALYSED}, GRANTS, environments=environments)
    ref = await bot.trigger(ALICE, "run web")
    ts = (await bot.run_post(ref)).response["ts"]
    message = await _shows(
        bot, ts, "stable ▮▮▮▮▮▮▮▮▯▯ canary", "step 2 of 2: analysis of error-rate for 10m", "left (until "
    )
    measured = await _shows(bot, ts, "last measured: error-rate passed (", ") at ")
    assert "0.002" in _text(measured)
    assert "run_pause" in buttons_of(message)

    # an analysis may be cut short by an approver: the rollout goes on to promotion
    await bot.press(BOB, "rollout_promote", button(measured, "rollout_promote")["value"], ts)
    state = await bot.until_status(ref, "succeeded")
    assert state.stages[0].rollout is not None and state.stages[0].rollout.status == "promoted"


async def test_a_second_promote_press_on_the_same_pause_does_not_skip_the_analysis(
    start_bot: StartBot,
) -> None:
    analysis = "analysis: {checks: [smoke], duration: 10m}"
    paused = canary("web", ["set_weight: 10", APPROVER_PAUSE, analysis, "set_weight: 100"])
    environments = {
        "production": {**ROUTED["production"], "checks": {"smoke": {"command": ["true"], "interval": "1s"}}}
    }
    bot = await start_bot({"web": paused}, GRANTS, environments=environments)
    ref = await bot.trigger(ALICE, "run web")
    await bot.until_status(ref, "waiting")
    ts = (await bot.run_post(ref)).response["ts"]
    message = await _shows(bot, ts, "step 2 of 4: pause until a person promotes")
    promote = button(message, "rollout_promote")["value"]

    # the button names the step it was shown at: pressed again (a double click, or a second
    # approver on the same message) once the analysis started, it is refused to the presser
    await bot.press(BOB, "rollout_promote", promote, ts)
    await bot.until_status(ref, "running")
    again = await bot.answer(BOB, "rollout_promote", promote, ts)
    assert again["response_type"] == "ephemeral", again
    assert "moved on to step 3 of 4 (analysis of smoke for 10m)" in again["text"], again
    rollout = bot.run(ref).stages[0].rollout
    assert rollout is not None and rollout.step == 2 and rollout.analysis is not None
    fully = await bot.answer(BOB, "rollout_promote_fully", promote, ts)
    assert "moved on to step 3 of 4" in fully["text"], fully
    by = [e for e in bot.events(ref) if e.name == "rollout.promoted_by"]
    assert len(by) == 1


async def test_the_rollout_pause_button_of_a_run_without_a_rollout_is_refused(
    start_bot: StartBot, tmp_path: Path
) -> None:
    """A Pause from a rollout's message (an old message, or a value made by hand) on a run with no
    rollout is refused to the presser; the run is not paused."""
    gate = tmp_path / "go"
    bot = await start_bot({"plain": one_job("plain", f'"while [ ! -f {gate} ]; do sleep 0.1; done"')}, GRANTS)
    ref = await bot.trigger(ALICE, "run plain")
    state = await bot.until_status(ref, "running")
    value = json.dumps({"run": state.run.id})
    for action in ("run_pause", "run_resume"):
        refused = await bot.answer(ALICE, action, value)
        assert refused["response_type"] == "ephemeral", refused
        assert f"{ref} has no rollout: none of its stages" in refused["text"], refused
    assert bot.run(ref).run.status == "running"
    gate.touch()
    await bot.until_status(ref, "succeeded")


async def test_two_typed_promotes_at_one_pause_promote_it_once(start_bot: StartBot) -> None:
    """``/deploy promote-canary <run>`` names no step: it takes the step the rollout is at when
    the line is read, and only a step that waits for a person. Two approvers typing it at the
    same pause (at once, or one after the other) promote the pause once; the analysis after it
    is cut short only by naming its step."""
    analysis = "analysis: {checks: [smoke], duration: 10m}"
    paused = canary("web", ["set_weight: 10", APPROVER_PAUSE, analysis, "set_weight: 100"])
    environments = {
        "production": {**ROUTED["production"], "checks": {"smoke": {"command": ["true"], "interval": "1s"}}}
    }
    grants = {**GRANTS, CAROL: [Role.APPROVER]}
    bot = await start_bot({"web": paused}, grants, environments=environments)
    ref = await bot.trigger(ALICE, "run web")
    await bot.until_status(ref, "waiting")

    answers = await asyncio.gather(
        bot.say(BOB, f"promote-canary {ref} ship it"), bot.say(CAROL, f"promote-canary {ref}")
    )
    public = [a for a in answers if a["response_type"] == "in_channel"]
    assert len(public) == 1, answers
    assert "past step 2 of 4 (pause until a person promotes)" in public[0]["text"], public
    refused = next(a for a in answers if a["response_type"] == "ephemeral")
    assert "nothing was promoted" in refused["text"], refused
    late = await bot.say(CAROL, f"promote-canary {ref}")  # (typed after the first went through)
    assert late["response_type"] == "ephemeral", late
    assert "step 3 of 4 (analysis of smoke for 10m), which waits for no one" in late["text"], late
    assert f"promote-canary {ref} step=3" in late["text"], late
    rollout = bot.run(ref).stages[0].rollout
    assert rollout is not None and rollout.step == 2 and rollout.analysis is not None
    assert len([e for e in bot.events(ref) if e.name == "rollout.promoted_by"]) == 1

    stale = await bot.say(CAROL, f"promote-canary {ref} step=2")
    assert stale["response_type"] == "ephemeral" and "moved on to step 3 of 4" in stale["text"], stale
    wrong = await bot.say(CAROL, f"promote-canary {ref} step=two")
    assert wrong["response_type"] == "ephemeral", wrong
    assert "`two` is not a step" in wrong["text"] and "step=2" in wrong["text"], wrong
    named = await bot.say(CAROL, f"promote-canary {ref} step 3 measured enough")
    assert named["response_type"] == "in_channel", named
    assert named["text"].startswith(f"<@{CAROL}> promoted {ref} past step 3 of 4 (analysis of smoke for 10m)")
    assert named["text"].endswith(": measured enough"), named
    await bot.until_status(ref, "succeeded")
    assert len([e for e in bot.events(ref) if e.name == "rollout.promoted_by"]) == 2


async def test_a_router_that_confirmed_nothing_shows_no_weights_as_traffic(start_bot: StartBot) -> None:
    """The router refuses the first change: the rollout fails with traffic where the router had
    it. The run's message says so, and does not draw the refused weights as the traffic."""
    refusing = {
        "command": ["sh", "-c", "echo 'lb-api: 503' >&2; exit 1"],
        "pools": {"stable": ["a"], "canary": ["b"]},
    }
    bot = await start_bot(
        {"web": CANARY}, GRANTS, environments={"production": {"routers": {"web": refusing}}}
    )
    ref = await bot.trigger(ALICE, "run web")
    await bot.until_status(ref, "failed")
    ts = (await bot.run_post(ref)).response["ts"]
    message = await _shows(bot, ts, "lb-api: 503", "traffic stays as the router had it")
    text = _text(message)
    assert "it has confirmed no weights of this rollout" in text, text
    assert "canary 10" not in text and "▯" not in text, text
