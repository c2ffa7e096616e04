"""A job no online runner can take says why in its run message and in ``/deploy status``; the
message is edited when that changes (and not again while it does not), and the line goes when
a runner carrying the job's labels takes it. Through the real Bolt endpoint and the fake Slack."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.chat.block_kit import Block
from core.access import Role
from core.runtime.executor import SubprocessExecutor
from core.runtime.runner import LocalLink, Runner
from tests.pipelines import gated
from tests.slack.harness import ALICE, BOB, Bot, StartBot, blocks_of, until
from tests.slack.test_cards_home import _dump, _open_home

EU = """
name: eu
stages:
  - name: deploy
    runs_on: [prod-eu]
    jobs: [{name: ship, run: 'echo shipped'}]
"""
WAITS = "waiting for a runner with prod-eu: none has ever connected (deploy/ship)"


@pytest.fixture
async def bot(start_bot: StartBot, db_url: str) -> Bot:
    return await start_bot({"eu": EU}, {ALICE: [Role.DEPLOYER]}, database_url=db_url)


def said(blocks: list[Block]) -> str:
    return "\n".join(
        e["text"] for b in blocks if b["type"] == "context" for e in b["elements"] if "text" in e
    )


async def test_the_run_message_and_status_say_what_a_job_waits_for(bot: Bot, tmp_path: Path) -> None:
    ref = (await bot.say(ALICE, "run eu"))["text"].split("*")[1]
    await bot.run_post(ref)
    message = await until(
        lambda: next(
            (
                m
                for m in bot.fake.messages.values()
                if ref in m.get("text", "") and WAITS in said(blocks_of(m))
            ),
            None,
        ),
        15,
        "the run message to say why its job waits",
    )
    assert ":hourglass_flowing_sand: " + WAITS in said(blocks_of(message))
    edits = len(bot.fake.calls_to("chat.update"))
    await asyncio.sleep(2.0)  # (nothing changed: the message is not edited again)
    assert len(bot.fake.calls_to("chat.update")) == edits
    status = await bot.say(ALICE, f"status {ref}")
    assert WAITS in said(blocks_of(status))
    why = (await bot.say(ALICE, f"why {ref}"))["text"]
    assert why.startswith(f"*{ref}* is running, waiting for:")
    assert (
        "• *runner*: deploy/ship is waiting for a runner with prod-eu: none has ever connected — clears: "
        "when one comes online (start one: `shipyard runner --labels prod-eu`; docs/runners.md)"
    ) in why
    # a runner carrying prod-eu comes: it takes the job, and the line goes
    link = LocalLink(
        bot.shipyard.orchestrator, labels=["prod-eu"], attendance=bot.shipyard.attendance, capacity=1
    )
    runner = Runner(
        link, SubprocessExecutor(), name="eu-1", workdir=tmp_path / "eu-1", capacity=1, poll_interval=0.1
    )
    await runner.start()
    try:
        await bot.until_status(ref, "succeeded", timeout=20)
    finally:
        await runner.drain()
    final = await until(
        lambda: next(
            (
                m
                for m in bot.fake.messages.values()
                if ref in m.get("text", "") and "succeeded" in m.get("text", "")
            ),
            None,
        ),
        10,
        "the final run message",
    )
    assert "waiting for a runner" not in said(blocks_of(final))
    assert (await bot.say(ALICE, f"why {ref}"))["text"] == f"*{ref}* waits for nothing: it succeeded."


async def test_why_a_run_names_its_gate_and_who_may_approve_it(start_bot: StartBot) -> None:
    bot = await start_bot({"gated": gated(approvers=BOB)}, {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER]})
    ref = (await bot.say(ALICE, "run gated"))["text"].split("*")[1]
    await bot.gate_card(ref)
    why = (await bot.say(ALICE, f"why {ref}"))["text"]
    assert (
        f"• *approvals*: gate production needs 1 approval(s) from {BOB} (0 so far) — clears: "
        f"when they approve it (`/deploy approve {ref}`)"
    ) in why
    assert (await bot.say(ALICE, "why nope#9"))["text"] == (
        ":warning: No run `nope#9`. Name it like `web#42` (see `/deploy runs`)."
    )


async def test_deploy_runners_lists_them_and_says_how_to_start_one(
    start_bot: StartBot, tmp_path: Path
) -> None:
    bot = await start_bot({"eu": EU}, {ALICE: [Role.DEPLOYER]}, runner_capacity=0)
    none = await bot.say(ALICE, "runners")
    assert none["text"].startswith("No runner has connected yet.")
    assert "`shipyard token create eu-1 --role runner`" in blocks_of(none)[0]["text"]["text"]
    link = LocalLink(
        bot.shipyard.orchestrator, labels=["linux", "prod-eu"], attendance=bot.shipyard.attendance, capacity=2
    )
    runner = Runner(
        link, SubprocessExecutor(), name="eu-1", workdir=tmp_path / "eu-1", capacity=2, poll_interval=0.1
    )
    await runner.start()
    try:
        await until(lambda: bot.shipyard.runners.all(), 10, "eu-1 to be seen")
        listed = await bot.say(ALICE, "runners")
    finally:
        await runner.drain()
    lines = [b["text"]["text"] for b in blocks_of(listed)]
    assert lines[0] == "1 runner(s):"
    assert lines[1].startswith(
        ":large_green_circle: *eu-1* — online · labels: linux, prod-eu · 0/2 job(s) running · last seen "
    )


async def test_app_home_lists_offline_runners_that_jobs_wait_for(bot: Bot, tmp_path: Path) -> None:
    link = LocalLink(
        bot.shipyard.orchestrator, labels=["prod-eu"], attendance=bot.shipyard.attendance, capacity=1
    )
    runner = Runner(
        link,
        SubprocessExecutor(),
        name="eu-1",
        workdir=tmp_path / "eu-1",
        capacity=1,
        lease_s=0.5,
        poll_interval=0.1,
    )
    await runner.start()
    await until(lambda: "eu-1" in {r.name for r in bot.shipyard.runners.all()}, 10, "eu-1 to be seen")
    await runner.drain()  # (it stops: offline after two of its leases)
    home = _dump((await _open_home(bot, ALICE))["blocks"])
    assert '"Runners"' not in home  # all is well: no job waits
    ref = (await bot.say(ALICE, "run eu"))["text"].split("*")[1]
    # the view is published again, unopened, once the job waits for a runner
    home = await until(
        lambda: "job(s) wait for it" in (h := _dump(bot.fake.home_views[ALICE]["blocks"])) and h,
        20,
        "App Home to list eu-1",
    )
    assert '"Runners"' in home
    assert ":red_circle: *eu-1* — offline · labels: prod-eu · 0/1 job(s) running · last seen " in home
    assert ":hourglass_flowing_sand: 1 job(s) wait for it" in home
    assert bot.run(ref).jobs[0].status == "queued"
