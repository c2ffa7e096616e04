"""A person in a real browser: signs in with the link ``/deploy login`` gave them in Slack,
watches a job's log grow live, approves the gate from the run page, and the run's Slack message
changes; axe-core finds no serious or critical accessibility problem on the main pages."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from core.access import Role
from tests.pipelines import gated
from tests.slack.harness import ALICE, BOB, Bot, StartBot, blocks_of, until

pytestmark = pytest.mark.slow

AXE = Path(__file__).with_name("vendor") / "axe.min.js"
#: the build prints a line every half second while the person watches
TICKING = '["sh", "-c", "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.5; done"]'


@pytest.fixture
async def bot(start_bot: StartBot) -> Bot:
    return await start_bot(
        {"gated": gated(compile=TICKING, approvers=BOB)}, {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER]}
    )


async def _axe(page: Any) -> list[str]:
    """The serious and critical axe-core violations on ``page``."""
    await page.evaluate(AXE.read_text())
    found = await page.evaluate("async () => (await axe.run(document)).violations")
    return [f"{v['id']}: {v['help']}" for v in found if v["impact"] in ("serious", "critical")]


async def test_sign_in_from_slack_watch_the_log_and_approve_the_gate(bot: Bot, chromium: Any) -> None:
    ref = (await bot.say(ALICE, "run gated"))["text"].split("*")[1]
    await bot.run_post(ref)
    link = (await bot.say(BOB, "login"))["text"]
    secret = re.search(r"/ui/login/([^|>]+)", link)
    assert secret is not None and "works once" in link, link
    base = str(bot.client.make_url("")).rstrip("/") if bot.client else ""
    pipeline, number = ref.split("#")

    context = await chromium.new_context(bypass_csp=True)  # (only so that axe can be injected)
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(f"{base}/ui/login/{secret.group(1)}")
    await page.click("#sign-in")
    await page.wait_for_url(f"{base}/ui/runs")
    assert BOB in await page.inner_text("header")
    assert await _axe(page) == []

    await page.click(f"text={ref}")
    await page.wait_for_url(f"{base}/ui/runs/{pipeline}/{number}")
    log = page.locator("pre.log").first
    await log.locator("text=tick-1").wait_for(timeout=10_000)  # (written while the page was open)
    first = await log.inner_text()
    await log.locator("text=tick-6").wait_for(timeout=10_000)
    assert "tick-6" not in first  # the line arrived after the page was loaded
    assert await _axe(page) == []

    await bot.until_status(ref, "waiting", timeout=20)  # the gate opens once the build has ended
    await page.reload()
    approve = page.locator("button.approve")
    assert await approve.count() == 1
    await page.fill("input[name=comment]", "ship it")
    await approve.click()
    await page.wait_for_url(f"{base}/ui/runs/{pipeline}/{number}")
    await page.locator("text=Approved by U0BOB").wait_for(timeout=10_000)

    card = await until(  # the gate's card in Slack, edited to say who approved (from the web)
        lambda: next(
            (m for m in bot.fake.messages.values() if f"approved by <@{BOB}>" in json.dumps(blocks_of(m))),
            None,
        ),
        15,
        "the gate's Slack card to show the approval",
    )
    assert not [b for b in blocks_of(card) if b["type"] == "actions"]  # its buttons gave way
    await page.goto(f"{base}/ui/environments")
    assert await _axe(page) == []
    assert errors == []
    await context.close()
