"""More of the Slack bot end to end: every ``/deploy`` verb, the trigger and reject modals, N-of-M
gates and simultaneous presses, 429s on edits, App Home and its retried events, Socket Mode, and a
restart that must not repost. Requests are signed like Slack's (``tests.slack.signing``) and go to
the real Bolt endpoint of ``create_app``; the bot's Web API calls go to the fake Slack."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from core.access import Role
from core.commands import ExpireLease, ReportLateResult
from storage.slack import SlackState
from tests.pipelines import GATED_ON_REF, failing, gated, one_deploy
from tests.slack import signing
from tests.slack.fake_slack import Call, FakeSlack, settle_bolt_tasks
from tests.slack.harness import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    DAVE,
    ERIN,
    RELEASE_MANAGERS,
    SECRET,
    Bot,
    Grants,
    StartBot,
    blocks_of,
    button,
    run_named,
    top_level_posts,
    until,
)

#: Alice deploys and approves; Bob, Dave and Erin approve, in release-managers; Carol holds nothing
GRANTS: Grants = {
    ALICE: [Role.DEPLOYER, Role.APPROVER],
    **{user: [Role.APPROVER, RELEASE_MANAGERS] for user in (BOB, DAVE, ERIN)},
}
PIPELINES = {
    "gated": GATED_ON_REF,
    "pair": gated(name="pair", min_approvals=2, deploy='["sh", "-c", "echo deploying"]'),
    "failing": failing(first="sleep 0.2; "),
    "orphan": one_deploy("orphan", '["sleep", "30"]', retries=1),
}


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    return await start_bot(PIPELINES, GRANTS)


async def _started(bot: Bot, pipeline: str = "gated", params: str = "ref=abc1234") -> tuple[str, Call]:
    """ALICE starts a run; returns its ref and its (top-level) run message."""
    reply = await bot.say(ALICE, f"run {pipeline} {params}".strip())
    assert reply["text"].startswith("Started *"), reply
    ref = run_named(reply)
    return ref, await bot.run_post(ref)


# -- every verb ------------------------------------------------------------------------------------
async def test_read_verbs_list_runs_status_logs_whoami_and_help(bot: Bot) -> None:
    listed = await bot.say(ALICE, "list")
    assert listed["response_type"] == "ephemeral"
    assert "*gated*" in listed["text"] and "*pair*" in listed["text"] and "ref=…" in listed["text"]

    assert "No runs yet" in (await bot.say(ALICE, "runs"))["text"]
    ref, _ = await _started(bot)
    await bot.until_status(ref, "waiting")

    runs = await bot.say(ALICE, "runs gated")
    assert runs["response_type"] == "ephemeral" and "gated#1" in runs["text"] and "waiting" in runs["text"]
    assert "No runs of `pair` yet" in (await bot.say(ALICE, "runs pair"))["text"]

    status = await bot.say(ALICE, f"status {ref}")
    assert status["response_type"] == "ephemeral" and "gated#1 waiting" in status["text"]
    shown = json.dumps(status["blocks"])
    assert "build" in shown and "production" in shown and "gate waiting (0 of 1)" in shown

    logs = await bot.say(ALICE, f"logs {ref} build/compile")
    assert "build/compile" in logs["text"] and "built abc1234" in logs["text"]
    assert "built abc1234" in (await bot.say(ALICE, f"logs {ref}"))["text"]  # the last job that ran
    assert "Did you mean `build/compile`?" in (await bot.say(ALICE, f"logs {ref} build/compil"))["text"]

    whoami = await bot.say(ALICE, "whoami")
    assert f"`{ALICE}`" in whoami["text"] and "approver, deployer" in whoami["text"]
    assert "release-managers" in (await bot.say(BOB, "whoami"))["text"]

    run_help = await bot.say(CAROL, "run help")
    assert run_help["response_type"] == "ephemeral"
    assert run_help["text"].startswith("`/deploy run <pipeline> [key=value…] [branch=…] [--break-glass")
    assert "`/deploy status <run>`" in (await bot.say(ALICE, "help status"))["text"]


async def test_help_and_whoami_answer_someone_without_a_role(bot: Bot) -> None:
    assert "Shipyard commands:" in (await bot.say(CAROL, "help"))["text"]
    assert "ask an admin" in (await bot.say(CAROL, "whoami"))["text"]


async def test_control_verbs_pause_resume_cancel_retry(bot: Bot) -> None:
    ref, _ = await _started(bot)
    await bot.until_status(ref, "waiting")

    paused = await bot.say(ALICE, f"pause {ref}")
    assert paused == {**paused, "response_type": "in_channel", "text": f"{ref} paused."}
    assert bot.run(ref).run.status == "paused"
    resumed = await bot.say(ALICE, f"resume {ref}")
    assert resumed["response_type"] == "in_channel" and resumed["text"] == f"{ref} resumed."
    await bot.until_status(ref, "running", "waiting")

    canceled = await bot.say(ALICE, f"cancel {ref} wrong ref")
    assert canceled["response_type"] == "in_channel" and canceled["text"] == f"{ref} canceled."
    state = await bot.until_status(ref, "canceled")
    assert "wrong ref" in state.run.reason
    again = await bot.say(ALICE, f"cancel {ref}")
    assert again["response_type"] == "ephemeral" and "already canceled" in again["text"]

    retried = await bot.say(ALICE, f"retry {ref}")
    assert retried["response_type"] == "in_channel" and retried["text"] == "Retrying as gated#2."
    assert bot.run("gated#2").run.retry_of == bot.run(ref).run.id


async def test_approve_and_reject_by_command(bot: Bot) -> None:
    first, _ = await _started(bot)
    await bot.until_status(first, "waiting")
    approved = await bot.say(BOB, f"approve {first} looks good")
    assert approved["response_type"] == "in_channel" and approved["text"] == f"<@{BOB}> approved {first}."
    await bot.until_status(first, "succeeded")
    late = await bot.say(DAVE, f"approve {first}")
    assert late["response_type"] == "ephemeral" and "has no gate waiting" in late["text"]

    second, _ = await _started(bot)
    await bot.until_status(second, "waiting")
    needs_reason = await bot.say(BOB, f"reject {second}")
    assert needs_reason["response_type"] == "ephemeral" and "Say why" in needs_reason["text"]
    assert "`/deploy reject <run> <reason>`" in needs_reason["text"]
    rejected = await bot.say(BOB, f'reject {second} "not on a Friday"')
    assert rejected["response_type"] == "in_channel"
    assert rejected["text"] == f"<@{BOB}> rejected {second}: not on a Friday"
    state = await bot.until_status(second, "failed")
    assert "not on a Friday" in state.run.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status", ["Usage: `/deploy status <run>`"]),
        ("status gated#99", ["No run `gated#99`", "web#42"]),
        ("logs", ["Usage: `/deploy logs <run> [stage/job]`"]),
        ("approve", ["Usage: `/deploy approve <run> [comment]`"]),
        ("run", ["Usage: `/deploy run <pipeline> [key=value…] [branch=…]"]),
        ("run gated ref=NOT-HEX", ["ref", "^[0-9a-f]{7,40}$"]),
        ('run gated "ref=abc1234', ["close your quotes"]),
        ("run gated abc1234", ["key=value", "Usage: `/deploy run <pipeline> [key=value…] [branch=…]"]),
    ],
)
async def test_errors_are_ephemeral_and_show_the_right_form(bot: Bot, text: str, expected: list[str]) -> None:
    reply = await bot.say(ALICE, text)
    assert reply["response_type"] == "ephemeral"
    assert reply["text"].startswith(":warning:")
    for part in expected:
        assert part in reply["text"], (part, reply["text"])
    assert not top_level_posts(bot.fake)  # nothing started, nothing said in the channel


BAD_PARAMETER_FORM = (
    "BUG: a parameter error from `/deploy run` is core's InvalidInput text as is: it tells a Slack user the "
    "CLI form `-p ref=…` (core/definition.py resolve_parameters) and never shows `/deploy run <pipeline> "
    "ref=…`; verbs.run should catch it and add the pipeline's own form"
)


@pytest.mark.parametrize("text", ["run gated", "run gated ref=NOT-HEX"])
async def test_a_parameter_error_shows_the_slack_form_of_the_command(bot: Bot, text: str) -> None:
    reply = await bot.say(ALICE, text)
    assert reply["response_type"] == "ephemeral" and "ref" in reply["text"]
    assert "-p ref" not in reply["text"]
    assert "/deploy run gated ref=" in reply["text"]


# -- gates -----------------------------------------------------------------------------------------
async def test_reject_button_opens_a_modal_and_its_reason_fails_the_run(bot: Bot) -> None:
    ref, message = await _started(bot)
    card = await bot.gate_card(ref)
    value = button(card, "gate_reject")["value"]
    trigger = signing.new_trigger_id()
    await bot.press(BOB, "gate_reject", value, card.args["thread_ts"], trigger_id=trigger)
    opened = await bot.fake.wait_for("views.open")
    assert opened.ok and opened.args["trigger_id"] == trigger
    view = opened.args["view"]
    assert view["callback_id"] == "gate_reject_form"
    assert bot.gate(ref).status == "open"  # pressing Reject only asks why

    def reason(text: str) -> dict[str, dict[str, Any]]:
        return {"reason": {"value": {"type": "plain_text_input", "value": text}}}

    empty = await bot.submit(BOB, "gate_reject_form", reason("  \n"), view["private_metadata"])
    assert empty is not None and empty["response_action"] == "errors" and "reason" in empty["errors"]
    assert bot.gate(ref).status == "open"

    assert (
        await bot.submit(BOB, "gate_reject_form", reason("migration not reviewed"), view["private_metadata"])
        is None
    )
    state = await bot.until_status(ref, "failed")
    gate = bot.gate(ref)
    assert gate.status == "rejected" and gate.decided_by == BOB and "migration not reviewed" in gate.reason
    assert "migration not reviewed" in state.run.reason

    ts = message.response["ts"]
    await until(
        lambda: "migration not reviewed" in json.dumps(bot.run_message(ts)),
        what="the reason in the run message",
    )
    assert "failed" in bot.run_message(ts)["text"]
    await until(
        lambda: "rejected by" in json.dumps(bot.fake.messages[(CHANNEL, card.response["ts"])]["blocks"]),
        what="the gate card to show the decision",
    )


async def test_two_approvals_show_progress_count_once_each_and_decide_once(bot: Bot) -> None:
    ref, message = await _started(bot, "pair", "")
    ts = message.response["ts"]
    card = await bot.gate_card(ref)
    value, card_ts = button(card, "gate_approve")["value"], card.args["thread_ts"]
    assert "approvals: 0 of 2" in json.dumps(blocks_of(card))

    await bot.press(BOB, "gate_approve", value, card_ts)
    await until(lambda: "(1 of 2)" in json.dumps(bot.run_message(ts)), what="1 of 2 in the run message")
    assert [a.actor for a in bot.gate(ref).approvals] == [BOB]

    token = await bot.press(BOB, "gate_approve", value, card_ts)
    twice = (await bot.fake.wait_response(token)).body
    assert twice["response_type"] == "ephemeral" and "already approved" in twice["text"]
    assert [a.actor for a in bot.gate(ref).approvals] == [BOB] and bot.gate(ref).status == "open"

    # Dave and Erin click at the same moment: one of them completes the gate, once
    tokens = await asyncio.gather(
        bot.press(DAVE, "gate_approve", value, card_ts), bot.press(ERIN, "gate_approve", value, card_ts)
    )
    await bot.until_status(ref, "succeeded")
    await settle_bolt_tasks()
    gate = bot.gate(ref)
    assert gate.status == "approved" and len(gate.approvals) == 2 and gate.approvals[0].actor == BOB
    assert gate.decided_by in (DAVE, ERIN)
    events = bot.events(ref)
    assert len([e for e in events if e.subject == "gate" and e.to_status == "approved"]) == 1
    deploy = next(j for j in bot.run(ref).jobs if j.name == "deploy")
    assert deploy.attempt == 1
    assert len([e for e in events if e.subject_id == deploy.id and e.to_status == "running"]) == 1
    answers = [r for t in tokens for r in bot.fake.responses_to(t)]
    assert len(answers) == 1 and answers[0].body["response_type"] == "ephemeral"  # the loser is told
    finished = await bot.thread_post(f"{ref} succeeded")
    assert finished.args["thread_ts"] == ts
    assert (
        len([c for c in bot.fake.calls_to("chat.postMessage") if f"{ref} succeeded" in c.args["text"]]) == 1
    )


async def test_a_press_on_a_decided_gate_answers_with_its_state(bot: Bot) -> None:
    ref, _ = await _started(bot)
    card = await bot.gate_card(ref)
    value, card_ts = button(card, "gate_approve")["value"], card.args["thread_ts"]
    await bot.press(BOB, "gate_approve", value, card_ts)
    await bot.until_status(ref, "succeeded")

    token = await bot.press(DAVE, "gate_approve", value, card_ts)
    answer = await bot.fake.wait_response(token)
    assert answer.status == 200 and answer.body["response_type"] == "ephemeral"
    assert "approved by <@U0BOB>" in answer.body["text"]
    assert [a.actor for a in bot.gate(ref).approvals] == [BOB]
    assert bot.gate(ref).status == "approved" and bot.run(ref).run.status == "succeeded"


async def test_reject_on_a_decided_gate_answers_with_its_state_instead_of_a_form(bot: Bot) -> None:
    ref, _ = await _started(bot)
    card = await bot.gate_card(ref)
    value, card_ts = button(card, "gate_reject")["value"], card.args["thread_ts"]
    await bot.say(BOB, f"approve {ref}")
    await bot.until_status(ref, "succeeded")
    token = await bot.press(DAVE, "gate_reject", value, card_ts, trigger_id=signing.new_trigger_id())
    await settle_bolt_tasks()
    assert not bot.fake.calls_to("views.open")
    answer = (await bot.fake.wait_response(token, timeout=1)).body
    assert answer["response_type"] == "ephemeral" and "approved" in answer["text"]


async def test_a_press_on_a_decided_gate_says_who_decided_it_not_a_warning(bot: Bot) -> None:
    ref, _ = await _started(bot)
    card = await bot.gate_card(ref)
    value, card_ts = button(card, "gate_approve")["value"], card.args["thread_ts"]
    await bot.press(BOB, "gate_approve", value, card_ts)
    await bot.until_status(ref, "succeeded")
    token = await bot.press(DAVE, "gate_approve", value, card_ts)
    answer = (await bot.fake.wait_response(token)).body
    assert answer["response_type"] == "ephemeral"
    assert not answer["text"].startswith(":warning:")
    assert f"approved by <@{BOB}>" in answer["text"]


# -- Slack pushing back ----------------------------------------------------------------------------
async def test_a_rate_limited_edit_is_retried_and_the_message_ends_in_the_final_state(bot: Bot) -> None:
    bot.fake.rate_limit_next("chat.update", retry_after=1)
    ref, message = await _started(bot, "failing", "")
    ts = message.response["ts"]
    await bot.until_status(ref, "failed")
    limited = await bot.fake.wait_for("chat.update", lambda c: c.status == 429, timeout=10)
    assert limited.args["ts"] == ts
    await until(lambda: "failed" in bot.run_message(ts)["text"], timeout=10, what="the final state shown")
    assert any(c.ok and c.args["ts"] == ts for c in bot.fake.calls_to("chat.update"))
    assert len(top_level_posts(bot.fake)) == 1


# -- App Home --------------------------------------------------------------------------------------
async def test_app_home_shows_environments_and_the_waiting_gate_once_per_event(bot: Bot) -> None:
    ref, _ = await _started(bot)
    await bot.gate_card(ref)
    event = {"type": "app_home_opened", "user": BOB, "channel": "D0BOB", "tab": "home"}

    status, _, _ = await bot.post(signing.event_callback(SECRET, event, event_id="Ev0HOME1"))
    assert status == 200
    published = await bot.fake.wait_for("views.publish")
    assert published.ok and published.args["user_id"] == BOB
    home = json.dumps(bot.fake.home_views[BOB]["blocks"])
    assert "Environments" in home and "*production*" in home
    assert f"{ref}* waits for approval" in home and "gate_approve" in home

    # (the home is also refreshed when what it shows changes: let the notifier catch up with the
    # log, after which nothing changes while the run is parked at its gate)
    await settle_bolt_tasks()
    store = bot.store
    slack = SlackState(store)
    await until(lambda: slack.cursor("slack") == store.last_event_seq(), what="the notifier to catch up")
    await settle_bolt_tasks()
    before = len(bot.fake.calls_to("views.publish"))
    status, _, _ = await bot.post(signing.event_callback(SECRET, event, event_id="Ev0HOME1", retry_num=1))
    assert status == 200
    await settle_bolt_tasks()
    assert len(bot.fake.calls_to("views.publish")) == before

    # a new opening (another event id) is a new publish
    await bot.post(signing.event_callback(SECRET, event, event_id="Ev0HOME2"))
    await bot.fake.wait_for_count("views.publish", before + 1)


# -- Socket Mode -----------------------------------------------------------------------------------
async def test_socket_mode_acks_a_command_and_replies_to_its_response_url(
    start_bot: StartBot, fake: FakeSlack
) -> None:
    harness = await start_bot(PIPELINES, GRANTS, slack_app_token="xapp-test", slack_signing_secret=None)
    assert harness.settings.slack_signing_secret is None
    await fake.wait_connected()
    opened = await fake.wait_for("apps.connections.open")
    assert opened.token == "xapp-test"
    token = f"sock{time.monotonic_ns()}"
    payload = signing.slash_command_payload(
        "help", user_id=ALICE, channel_id=CHANNEL, response_url=fake.response_url(token)
    )
    envelope = await fake.send_envelope("slash_commands", payload)
    ack = await fake.wait_ack(envelope)
    assert ack["envelope_id"] == envelope
    reply = (await fake.wait_response(token)).body
    assert reply["response_type"] == "ephemeral" and "/deploy run <pipeline>" in reply["text"]
    assert harness.client is not None
    http = await harness.client.post("/slack/events", data=b"{}")  # no HTTP endpoint in this mode
    assert http.status in (404, 405)
    await harness.stop()
    await until(lambda: not fake.socket_connected, timeout=5, what="the socket to close")


# -- restarts --------------------------------------------------------------------------------------
async def test_a_restart_does_not_repost_the_run_message(bot: Bot) -> None:
    ref, message = await _started(bot)
    ts = message.response["ts"]
    await bot.gate_card(ref)
    await bot.until_status(ref, "waiting")
    await bot.stop()
    posts_before = len(bot.fake.calls_to("chat.postMessage"))

    await bot.start()
    approved = await bot.say(BOB, f"approve {ref}")
    assert approved["response_type"] == "in_channel"
    await bot.until_status(ref, "succeeded")
    await bot.fake.wait_for(
        "chat.postMessage", lambda c: c.args.get("thread_ts") == ts and f"{ref} succeeded" in c.args["text"]
    )
    await until(lambda: "succeeded" in bot.run_message(ts)["text"], what="the first message edited")
    assert [c.response["ts"] for c in top_level_posts(bot.fake)] == [ts]
    new_posts = bot.fake.calls_to("chat.postMessage")[posts_before:]
    assert all(c.args.get("thread_ts") == ts for c in new_posts)
    assert not [c for c in new_posts if "waits for approval" in c.args.get("text", "")]  # no second card
    assert not bot.fake.calls_to("chat.delete")


async def _lose_the_job(bot: Bot, ref: str) -> None:
    """The job's runner is declared gone (what a restart of its server reports)."""
    state = await until(
        lambda: (s := bot.run(ref)).jobs[0].status == "running" and s, what=f"{ref}'s job to run"
    )
    job = state.jobs[0]
    decision = await bot.shipyard.orchestrator.handle(
        ExpireLease(run_id=state.run.id, job_id=job.id, attempt=job.attempt, force=True)
    )
    assert decision.accepted, decision.reason


async def test_a_lost_job_is_told_in_the_thread_with_a_button_to_mark_the_run_failed(bot: Bot) -> None:
    ref, message = await _started(bot, "orphan", "")
    await _lose_the_job(bot, ref)
    lost = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "thread_ts" in c.args and "was lost" in json.dumps(c.args), timeout=10
    )
    assert lost.args["thread_ts"] == message.response["ts"]
    said = blocks_of(lost)[0]["text"]["text"]
    assert "*production/deploy* (attempt 1) was lost — runner slack-test its server restarted." in said
    assert "Shipyard runs it again (`retries: 1`)" in said
    assert "A deployment to *production* may be half done." in said
    fail = button(lost, "run_fail")
    assert fail["confirm"]["title"]["text"] == "Mark the run failed?"

    await bot.press(ALICE, "run_fail", fail["value"], lost.response["ts"])
    state = await bot.until_status(ref, "failed")
    assert state.run.reason == f"marked failed by {ALICE}: marked failed from chat"
    assert state.jobs[0].status == "canceled"  # its second attempt was stopped


async def test_a_lost_attempt_that_had_finished_after_all_is_told_in_the_thread(bot: Bot) -> None:
    ref, message = await _started(bot, "orphan", "")
    await _lose_the_job(bot, ref)
    state = await until(lambda: (s := bot.run(ref)).jobs[0].attempt == 2 and s, what="the retry to run")
    job = state.jobs[0]
    late = ReportLateResult(
        run_id=state.run.id, job_id=job.id, attempt=1, runner="slack-test", outcome="succeeded", exit_code=0
    )
    assert (await bot.shipyard.orchestrator.handle(late)).accepted
    said = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "thread_ts" in c.args and "ran twice" in c.args["text"], timeout=10
    )
    assert said.args["thread_ts"] == message.response["ts"]
    assert blocks_of(said)[0]["text"]["text"] == (
        ":warning: *production/deploy* attempt 1 had finished (succeeded, exit 0) before its server died, "
        "though it was counted as lost; attempt 2 ran as well. Check *production*: it was deployed to twice."
    )
    again = await bot.shipyard.orchestrator.handle(late)  # (told once: a second report is refused)
    assert not again.accepted and "recorded" in again.reason


async def test_a_lost_job_without_retries_left_says_the_run_failed_and_offers_a_retry(bot: Bot) -> None:
    ref, _ = await _started(bot, "orphan", "")
    await _lose_the_job(bot, ref)
    await until(lambda: bot.run(ref).jobs[0].status == "running" and bot.run(ref).jobs[0].attempt == 2)
    await _lose_the_job(bot, ref)
    state = await bot.until_status(ref, "failed")
    assert state.run.reason.startswith("job production/deploy lost")

    def second() -> Call | None:
        return next(
            (
                c
                for c in bot.fake.calls_to("chat.postMessage")
                if "(attempt 2) was lost" in json.dumps(c.args)
            ),
            None,
        )

    lost = await until(second, what="the second loss in the thread")
    assert "It had no retries left, so the run failed." in blocks_of(lost)[0]["text"]["text"]
    assert button(lost, "run_retry")["text"]["text"] == "Retry failed jobs"
    failed_posts = [
        c for c in bot.fake.calls_to("chat.postMessage") if ":x: *production/deploy*" in json.dumps(c.args)
    ]
    assert failed_posts == []  # one message for the loss, not a second one for the failure


async def test_runs_stuck_lists_zombies_with_a_cancel_button(start_bot: StartBot) -> None:
    bot = await start_bot(PIPELINES, GRANTS, runner_capacity=0, stuck_after_seconds=1.0)
    none = await bot.say(ALICE, "runs --stuck")
    assert none["text"] == "No stuck runs: every unfinished run changed within the last 1.0s."
    ref, _ = await _started(bot, "failing", "")  # no runner: its job is never claimed
    await asyncio.sleep(1.1)
    reply = await bot.say(ALICE, "runs --stuck")
    assert reply["response_type"] == "ephemeral"
    assert reply["text"] == "1 run(s) unchanged for over 1.0s:"
    row = reply["blocks"][1]
    assert f"*{ref}* running — job build/compile queued for" in row["text"]["text"]
    assert "no runner has claimed it" in row["text"]["text"]
    cancel = row["accessory"]
    assert cancel["action_id"] == "run_cancel" and cancel["confirm"]["title"]["text"] == "Cancel this run?"
    await bot.press(ALICE, "run_cancel", cancel["value"], "0")
    await bot.until_status(ref, "canceled")
    after = await bot.say(ALICE, "runs --stuck")
    assert after["text"].startswith("No stuck runs")
