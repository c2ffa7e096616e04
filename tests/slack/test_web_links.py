"""Slack points at the web view: ``/deploy login`` answers its asker alone with a one-time link
that signs them in as their Slack identity; with ``SHIPYARD_PUBLIC_URL`` set, run messages and
approval cards link to the run's page and the App Home to the board (without it, no link)."""

from __future__ import annotations

import json
import re

from core.access import Role
from tests.pipelines import gated
from tests.slack.harness import ALICE, BOB, StartBot, blocks_of
from tests.slack.test_cards_home import _open_home

PUBLIC = "https://shipyard.example.com"


async def test_login_gives_a_private_one_time_link_that_signs_in_as_the_slack_user(
    start_bot: StartBot,
) -> None:
    bot = await start_bot({"gated": gated()}, {ALICE: [Role.DEPLOYER]}, public_url=PUBLIC)
    reply = await bot.say(ALICE, "login")
    assert reply["response_type"] == "ephemeral"
    link = re.search(rf"<{re.escape(PUBLIC)}/ui/login/([A-Za-z0-9_-]+)\|", reply["text"])
    assert link is not None and "works once" in reply["text"], reply
    assert bot.client is not None
    answer = await bot.client.post(f"/ui/login/{link.group(1)}", allow_redirects=False)
    cookie = answer.cookies["shipyard_session"]
    assert answer.status == 303 and cookie["secure"]  # (its public address is https: only sent back there)
    page = await bot.client.get("/ui/runs", cookies={"shipyard_session": cookie.value})
    assert page.status == 200 and ALICE in await page.text()
    again = await bot.client.post(f"/ui/login/{link.group(1)}", allow_redirects=False)
    assert again.status == 410  # once only
    # behind a proxy that ends TLS, the browser's Origin is the public address: a form is taken
    html = await page.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', html)
    assert csrf is not None
    form, cookies = {"csrf": csrf.group(1)}, {"shipyard_session": cookie.value}
    for origin, status in (("https://evil.example", 403), (PUBLIC, 303)):  # (the second signs out)
        headers = {"Origin": origin}
        out = await bot.client.post(
            "/ui/sign-out", data=form, headers=headers, cookies=cookies, allow_redirects=False
        )
        assert out.status == status, origin


async def test_run_messages_cards_and_the_home_link_to_the_web_view(start_bot: StartBot) -> None:
    bot = await start_bot({"gated": gated(approvers=BOB)}, {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER]},
                          public_url=PUBLIC + "/")  # fmt: skip
    ref = await bot.trigger(ALICE, "run gated")
    page = f"<{PUBLIC}/ui/runs/gated/{ref.split('#')[1]}|View run>"
    assert page in json.dumps(blocks_of(await bot.run_post(ref)))
    assert page in json.dumps(blocks_of(await bot.gate_card(ref)))
    home = await _open_home(bot, BOB)
    assert f"<{PUBLIC}/ui/environments|Open board>" in json.dumps(home)


async def test_without_a_public_address_messages_carry_no_link(start_bot: StartBot) -> None:
    bot = await start_bot({"gated": gated(approvers=BOB)}, {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER]})
    ref = await bot.trigger(ALICE, "run gated")
    assert "View run" not in json.dumps(blocks_of(await bot.run_post(ref)))
    assert "/ui/" not in json.dumps(blocks_of(await bot.gate_card(ref)))
