"""Every door gets the same answer from the one access policy (``core.access.authorize``).

Each rule is asked through REST (real HTTP on loopback, a bearer token), Slack (a signed
``/deploy`` command or button to the real Bolt endpoint, answered through the fake Slack API),
the console (its own ``Console`` on the same service), the web view (signed in with a login
link, the run page's form posted with its CSRF token) and the CLI (a real ``shipyard``
subprocess on the same database). The CLI runs with database access, so it carries no
principal: the role rules trust it and only the gate's separation of duties holds there, which
the table says explicitly.
"""

from __future__ import annotations

import asyncio
import html
import io
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest

from bot.chat import block_kit
from bot.console import Console, ConsoleDesk
from bot.web.signin import web_sessions
from core.access import Role
from core.commands import TriggerRun
from core.model import Actor
from storage.directory import Directory
from tests.factory import ROOT, cli_environment
from tests.pipelines import gated, one_build
from tests.slack.harness import ALICE, BOB, CAROL, DAVE, RELEASE_MANAGERS, Bot, StartBot, until

GRANTS = {
    ALICE: [Role.DEPLOYER, Role.APPROVER, RELEASE_MANAGERS],  # triggers, and could approve
    BOB: [Role.APPROVER, RELEASE_MANAGERS],
    CAROL: [Role.VIEWER],
    DAVE: [Role.DEPLOYER],
}
DOORS = ["rest", "slack", "console", "web", "cli"]


@dataclass(frozen=True)
class Answer:
    accepted: bool
    text: str


Ask = Callable[[str, str, str], Awaitable[Answer]]


@pytest.fixture
async def bot(start_bot: StartBot, db_url: str) -> Bot:
    """On both databases: the policy's answers must not depend on the store's."""
    return await start_bot(
        {"gated": gated(environment=None), "broken": one_build("broken", '"false"')},
        GRANTS,
        database_url=db_url,
    )


async def started(bot: Bot, pipeline: str, by: str, status: str) -> tuple[str, str]:
    """A run of ``pipeline`` triggered by ``by``, once it is ``status``: (its ref, its id)."""
    decision = await bot.shipyard.orchestrator.handle(TriggerRun(pipeline=pipeline, actor=Actor(by, "slack")))
    assert decision.accepted and decision.state is not None, decision.reason
    state = await bot.until_status(decision.state.run.ref, status)
    return state.run.ref, state.run.id


# -- the four doors, each asked in its own words ------------------------------------------------
async def via_rest(bot: Bot, user: str, verb: str, run_id: str) -> Answer:
    assert bot.client is not None
    secret = Directory(bot.store).create_token(user, [], datetime.now(UTC), by="test")  # roles: as granted
    path, body = {
        "approve": (f"/api/v1/runs/{run_id}/gates/production/approve", {"comment": ""}),
        "cancel": (f"/api/v1/runs/{run_id}/cancel", {"reason": ""}),
    }[verb]
    response = await bot.client.post(path, json=body, headers={"Authorization": f"Bearer {secret}"})
    found = await response.json()
    return Answer(response.status == 200, "" if response.status == 200 else found["detail"])


async def via_slack(bot: Bot, user: str, verb: str, ref: str) -> Answer:
    if verb == "ignore":
        value = json.dumps({"run": bot.run(ref).run.id})
        text = (await bot.answer(user, block_kit.IGNORE, value))["text"]
    else:
        text = (await bot.say(user, f"{verb} {ref}"))["text"]
    return Answer(not text.startswith(":warning:"), text.removeprefix(":warning: "))


async def via_console(bot: Bot, user: str, verb: str, ref: str) -> Answer:
    backend = ConsoleDesk()
    backend.bind(bot.shipyard)
    out = io.StringIO()
    console = Console(backend, out, user)
    try:
        if verb == "ignore":
            console.buttons.append((block_kit.IGNORE, json.dumps({"run": bot.run(ref).run.id})))
            await console.line(f"press {len(console.buttons)}")
        else:
            await console.line(f"/deploy {verb} {ref}")
    finally:
        await backend.close()
    said = out.getvalue()
    refused = next((line for line in said.splitlines() if line.startswith("! ")), None)  # ":warning:"
    return Answer(refused is None, refused.removeprefix("! ") if refused else said)


async def via_web(bot: Bot, user: str, verb: str, ref: str) -> Answer:
    """Signed in with a login link as ``/deploy login`` gives it, the run page's button pressed."""
    assert bot.client is not None
    base = str(bot.client.make_url("")).rstrip("/")
    link = await bot.shipyard.orchestrator.db(web_sessions(bot.shipyard).new_link, user, datetime.now(UTC))
    pipeline, number = ref.split("#")
    page = f"{base}/ui/runs/{pipeline}/{number}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(f"{base}/ui/login/{link}", allow_redirects=False) as signed:
            assert signed.status == 303
        async with browser.get(page) as shown:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await shown.text())
        assert csrf is not None
        form = {"csrf": csrf.group(1), "gate": "production"}
        async with browser.post(f"{page}/{verb}", data=form, allow_redirects=False) as pressed:
            said = re.search(r'<p class="message">(.*?)</p>', await pressed.text(), re.S)
            return Answer(pressed.status == 303, html.unescape(said.group(1)) if said else "")


async def via_cli(bot: Bot, user: str, verb: str, run_id: str) -> Answer:
    env = cli_environment(database_url=bot.settings.database_url)
    env |= {"USER": user, "LOGNAME": user}  # the CLI acts as the operator's login name
    args = {"approve": ["approve", run_id, "production"], "cancel": ["cancel", run_id]}[verb]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", *args, env=env, cwd=ROOT, stdout=-1, stderr=-1
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    return Answer(process.returncode == 0, err.decode().strip().removeprefix("shipyard: "))


async def ask(bot: Bot, door: str, user: str, verb: str, ref: str, run_id: str) -> Answer:
    if door == "rest":
        return await via_rest(bot, user, verb, run_id)
    if door == "slack":
        return await via_slack(bot, user, verb, ref)
    if door == "console":
        return await via_console(bot, user, verb, ref)
    if door == "web":
        return await via_web(bot, user, verb, ref)
    return await via_cli(bot, user, verb, run_id)


# -- the rules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("door", DOORS)
async def test_whoever_triggered_a_run_may_not_approve_its_gate(bot: Bot, door: str) -> None:
    ref, run_id = await started(bot, "gated", ALICE, "waiting")
    answer = await ask(bot, door, ALICE, "approve", ref, run_id)
    assert not answer.accepted
    assert f"{ALICE} triggered {ref} and cannot approve its own gate production" in answer.text
    assert bot.gate(ref).status == "open"


@pytest.mark.parametrize("door", DOORS)
async def test_an_approver_of_the_gates_group_clears_it(bot: Bot, door: str) -> None:
    ref, run_id = await started(bot, "gated", ALICE, "waiting")
    answer = await ask(bot, door, BOB, "approve", ref, run_id)
    assert answer.accepted, answer.text
    await until(lambda: bot.gate(ref).status == "approved", what="the gate to be approved")


@pytest.mark.parametrize("door", DOORS)
async def test_a_deployer_without_the_approver_role_may_not_approve(bot: Bot, door: str) -> None:
    ref, run_id = await started(bot, "gated", ALICE, "waiting")
    answer = await ask(bot, door, DAVE, "approve", ref, run_id)
    if door == "cli":  # the operator's door: trusted with roles, as before
        assert answer.accepted, answer.text
        return
    assert not answer.accepted
    assert f"{DAVE} did not hold the approver role when gate production of {ref} opened" in answer.text
    assert bot.gate(ref).status == "open"


@pytest.mark.parametrize("door", DOORS)
async def test_a_viewer_may_only_read(bot: Bot, door: str) -> None:
    ref, run_id = await started(bot, "gated", ALICE, "waiting")
    answer = await ask(bot, door, CAROL, "cancel", ref, run_id)
    if door == "cli":
        assert answer.accepted, answer.text
        return
    assert not answer.accepted
    assert f"{CAROL} has viewer; control needs one of: admin, deployer" in answer.text
    assert bot.run(ref).run.status == "waiting"


@pytest.mark.parametrize("door", DOORS)
async def test_a_deployer_cancels_only_their_own_runs(bot: Bot, door: str) -> None:
    ref, run_id = await started(bot, "gated", ALICE, "waiting")
    answer = await ask(bot, door, DAVE, "cancel", ref, run_id)
    if door == "cli":
        assert answer.accepted, answer.text
        return
    assert not answer.accepted
    assert f"{DAVE} may only cancel, pause, resume or retry their own runs; {ref}" in answer.text


@pytest.mark.parametrize("door", ["slack", "console"])  # the doors that offer Ignore failure
async def test_ignoring_a_failure_needs_the_approver_role(bot: Bot, door: str) -> None:
    ref, run_id = await started(bot, "broken", DAVE, "failed")
    answer = await ask(bot, door, DAVE, "ignore", ref, run_id)
    assert not answer.accepted
    assert "Ignoring a failure needs the approver role, like clearing a gate." in answer.text
