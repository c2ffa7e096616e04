"""A deployment being verified, in Slack: its run message says so and offers approvers "Looks
good" and "Roll back"; who triggered the run is told privately that someone else must pass it."""

from __future__ import annotations

from core.access import Role
from tests.pipelines import one_deploy
from tests.slack.harness import ALICE, BOB, CAROL, StartBot, button, until

VERIFIED = {
    "production": {
        "checks": {"smoke": {"command": ["true"], "interval": "1s"}},
        "verify": {"checks": ["smoke"], "for": "10m"},
    }
}


async def test_approvers_end_verification_from_the_run_message(start_bot: StartBot) -> None:
    grants = {ALICE: [Role.DEPLOYER, Role.APPROVER], BOB: [Role.APPROVER]}
    bot = await start_bot({"web": one_deploy("web")}, grants, environments=VERIFIED)
    ref = await bot.trigger(ALICE, "run web")
    await bot.until_status(ref, "verifying")
    post = await bot.run_post(ref)
    ts = post.response["ts"]
    message = await until(
        lambda: (m := bot.run_message(ts)) and "verify_looks_good" in str(m) and m, what="the verify buttons"
    )
    assert ":mag:" in str(message) and "verifying" in str(message)
    looks_good, roll_back = button(message, "verify_looks_good"), button(message, "verify_roll_back")
    assert roll_back["text"]["text"] == "Roll back production"
    assert roll_back["confirm"]["title"]["text"] == "Roll production back?"

    refused = await bot.answer(ALICE, "verify_looks_good", looks_good["value"], ts)
    assert refused["response_type"] == "ephemeral" and "separation of duties" in refused["text"], refused
    assert bot.run(ref).run.status == "verifying"

    await bot.press(BOB, "verify_roll_back", roll_back["value"], ts)
    state = await bot.until_status(ref, "failed")
    assert state.run.reason == f"verification of production failed by {BOB}"


async def test_an_inconclusive_verification_waits_for_a_person_in_slack(
    start_bot: StartBot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    probe = tmp_path / "probe.sh"
    probe.write_text("#!/bin/sh\necho 'p99 unknown: no traffic yet'\nexit 2\n")
    probe.chmod(0o755)
    inconclusive = {
        "production": {
            "checks": {"traffic": {"command": [str(probe)], "interval": "1s"}},
            "verify": {"checks": ["traffic"], "for": "10m"},
        }
    }
    grants = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER]}
    bot = await start_bot({"web": one_deploy("web")}, grants, environments=inconclusive)
    ref = await bot.trigger(ALICE, "run web")
    state = await until(
        lambda: "inconclusive" in (s := bot.run(ref)).run.reason and s,
        what="an inconclusive verdict",
        timeout=15,
    )
    assert state.run.status == "verifying"
    assert state.run.reason.startswith(
        "verification of production inconclusive: traffic: exit 2: p99 unknown: no traffic yet at "
    )
    assert state.run.reason.endswith("; an approver decides")
    post = await bot.run_post(ref)
    message = await until(
        lambda: (m := bot.run_message(post.response["ts"])) and "an approver decides" in str(m) and m,
        what="the run message to say who decides",
    )
    await bot.press(
        BOB, "verify_looks_good", button(message, "verify_looks_good")["value"], post.response["ts"]
    )
    done = await bot.until_status(ref, "succeeded")
    assert done.stages[0].reason == f"verified by {BOB}"


async def test_a_verify_button_shown_for_staging_never_ends_productions_verification(
    start_bot: StartBot,
) -> None:
    """Bob passes staging's verification; Carol, on the message as it showed staging verifying,
    presses Roll back staging a moment later. Production verifies by then: her press is
    refused, saying staging's verification ended, and production is not failed nor rolled back."""
    from tests.pipelines import ship

    smoke = {"smoke": {"command": ["true"], "interval": "1s"}}
    verify = {"checks": ["smoke"], "for": "10m"}
    environments = {env: {"checks": smoke, "verify": verify} for env in ("staging", "production")}
    grants = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER], CAROL: [Role.APPROVER]}
    shop = ship(name="shop", staging=True, gates=False, compare=False)
    bot = await start_bot({"shop": shop}, grants, environments=environments)
    ref = await bot.trigger(ALICE, "run shop version=1.0.0")
    await bot.until_status(ref, "verifying")
    ts = (await bot.run_post(ref)).response["ts"]
    message = await until(
        lambda: (m := bot.run_message(ts)) and "Roll back staging" in str(m) and m, what="staging's buttons"
    )
    looks_good, roll_back = button(message, "verify_looks_good"), button(message, "verify_roll_back")
    await bot.press(BOB, "verify_looks_good", looks_good["value"], ts)
    await until(
        lambda: any(s.environment == "production" and s.status == "verifying" for s in bot.run(ref).stages),
        what="production verifying",
    )
    refused = await bot.answer(CAROL, "verify_roll_back", roll_back["value"], ts)
    assert refused["response_type"] == "ephemeral", refused
    assert "the verification of staging ended already" in refused["text"]
    state = bot.run(ref)
    assert state.run.status == "verifying"
    assert [s.status for s in state.stages if s.environment == "production"] == ["verifying"]


async def test_a_failed_verification_is_posted_at_once_whatever_the_health_damping(
    start_bot: StartBot, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Health posts wait for ``health_settle`` (10m here); a release's verification that fails
    is told in its run's thread as soon as it fails, never damped."""
    failing = {
        "production": {
            "checks": {"smoke": {"command": ["false"], "interval": "1s"}},
            "health": ["smoke"],
            "health_settle": "10m",
            "verify": {"checks": ["smoke"], "for": "10m", "failure_limit": 1, "on_failure": "fail"},
        }
    }
    bot = await start_bot({"web": one_deploy("web")}, {ALICE: [Role.DEPLOYER]}, environments=failing)
    ref = await bot.trigger(ALICE, "run web")
    failed = await bot.until_status(ref, "failed", timeout=20)
    assert failed.run.reason.startswith("verification of production failed: smoke: exit 1")
    posted = await bot.thread_post(ref, timeout=20)
    assert "failed" in posted.args["text"]
    assert not [
        c for c in bot.fake.calls_to("chat.postMessage") if "production is " in c.args.get("text", "")
    ]
