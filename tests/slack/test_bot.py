"""The Slack bot end to end: requests signed as Slack signs them hit the real Bolt endpoint of a
real ``shipyard serve`` app; its Web API calls go to a fake Slack on loopback."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer
from slack_sdk.signature import SignatureVerifier

from bot.app import create_app
from bot.config import load_settings
from core.access import Role
from storage.directory import Directory
from storage.store import SqlStore
from tests.slack.fake_slack import FakeSlack

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0DEPLOYS"
ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"  # deployer+approver; approver in the group; nobody

GATED = """
name: gated
parameters:
  - {name: ref, required: true, pattern: "^[0-9a-f]{7,40}$"}
stages:
  - name: build
    jobs: [{name: compile, run: ["sh", "-c", "echo built $SHIPYARD_PARAM_REF"]}]
  - name: production
    environment: production
    gate: {approvers: [release-managers]}
    jobs: [{name: deploy, run: ["true"]}]
"""
REMINDED = """
name: reminded
stages:
  - name: production
    environment: production
    gate: {approvers: [release-managers], remind_every: 1s, timeout: 1h}
    jobs: [{name: deploy, run: ["true"]}]
"""
FAILING = """
name: failing
stages:
  - name: build
    jobs: [{name: compile, run: ["sh", "-c", "echo compiling; echo 'error: it broke' >&2; exit 3"]}]
  - name: ship
    jobs: [{name: upload, run: ["true"]}]
"""


@dataclass
class Bot:
    client: TestClient
    fake: FakeSlack

    def _headers(self, body: str, timestamp: int | None = None, secret: str = SECRET) -> dict[str, str]:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
        return {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature,
        }

    async def command(self, user: str, text: str, **sign: Any) -> tuple[int, str, float]:
        """Send ``/deploy text`` as ``user``; returns (status, response_url token, ack seconds)."""
        token = f"cmd{time.monotonic_ns()}"
        body = urlencode(
            {
                "token": "verification",
                "team_id": "T111",
                "team_domain": "shipyard",
                "channel_id": CHANNEL,
                "channel_name": "deploys",
                "user_id": user,
                "user_name": user.lower(),
                "command": "/deploy",
                "text": text,
                "api_app_id": "A111",
                "is_enterprise_install": "false",
                "response_url": self.fake.response_url(token),
                "trigger_id": f"trig.{token}",
            }
        )
        started = time.perf_counter()
        response = await self.client.post("/slack/events", data=body, headers=self._headers(body, **sign))
        took = time.perf_counter() - started
        await response.read()
        return response.status, token, took

    async def say(self, user: str, text: str) -> str:
        """The reply the bot posts to the command's response_url."""
        status, token, _ = await self.command(user, text)
        assert status == 200
        posted = await self.fake.wait_response(token)
        return str(posted.body.get("text", ""))

    async def press(self, user: str, action_id: str, value: str, message_ts: str) -> str:
        token = f"act{time.monotonic_ns()}"
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T111"},
            "api_app_id": "A111",
            "token": "verification",
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": CHANNEL,
                "is_ephemeral": False,
            },
            "trigger_id": f"trig.{token}",
            "team": {"id": "T111", "domain": "shipyard"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": CHANNEL, "name": "deploys"},
            "message": {"type": "message", "ts": message_ts, "text": ""},
            "state": {"values": {}},
            "response_url": self.fake.response_url(token),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "b",
                    "text": {"type": "plain_text", "text": action_id},
                    "value": value,
                    "type": "button",
                    "action_ts": str(time.time()),
                }
            ],
        }
        body = urlencode({"payload": json.dumps(payload)})
        response = await self.client.post("/slack/events", data=body, headers=self._headers(body))
        assert response.status == 200, await response.text()
        return token


@pytest.fixture
async def bot(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Bot]:
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    (pipes / "gated.yml").write_text(textwrap.dedent(GATED))
    (pipes / "failing.yml").write_text(textwrap.dedent(FAILING))
    (pipes / "reminded.yml").write_text(textwrap.dedent(REMINDED))
    store = SqlStore(sqlite_url)
    directory = Directory(store)
    now = datetime.now(UTC)
    directory.grant(ALICE, "role", str(Role.DEPLOYER), now)
    directory.grant(ALICE, "role", str(Role.APPROVER), now)  # so self-approval is what stops her
    directory.grant(BOB, "role", str(Role.APPROVER), now)
    directory.grant(BOB, "group", "release-managers", now)
    store.dispose()
    async with FakeSlack() as fake:
        settings = load_settings(
            database_url=sqlite_url,
            pipelines_dir=pipes,
            work_dir=tmp_path / "work",
            poll_interval=0.05,
            runner_name="slack-test",
            slack_bot_token="xoxb-test",
            slack_signing_secret=SECRET,
            slack_api_url=fake.base_url,
        )
        client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
        await client.start_server()
        try:
            yield Bot(client, fake)
        finally:
            await client.close()


async def test_help_and_a_mistyped_verb_answer_only_the_asker(bot: Bot) -> None:
    status, token, took = await bot.command(ALICE, "help")
    assert status == 200 and took < 3.0
    reply = (await bot.fake.wait_response(token)).body
    assert reply["response_type"] == "ephemeral" and "/deploy run <pipeline>" in reply["text"]
    assert "Did you mean `list`?" in await bot.say(ALICE, "lsit")
    assert "Did you mean `gated`?" in await bot.say(ALICE, "run gatd ref=abc1234")


async def test_bad_signatures_and_stale_requests_are_refused(bot: Bot) -> None:
    assert (await bot.command(ALICE, "help", secret="wrong"))[0] == 401
    assert (await bot.command(ALICE, "help", timestamp=int(time.time()) - 301))[0] == 401


async def test_a_run_from_slack_gets_one_message_edited_in_place_and_a_gate_card(bot: Bot) -> None:
    reply = await bot.say(ALICE, "run gated ref=abc1234")
    assert "Started *gated#1*" in reply
    first = await bot.fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == CHANNEL)
    assert "thread_ts" not in first.args
    card = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "thread_ts" in c.args and "approval" in c.args["text"]
    )
    blocks = card.args["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    buttons = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    approve = next(b for b in buttons if b["action_id"] == "gate_approve")

    token = await bot.press(ALICE, "gate_approve", approve["value"], card.args["thread_ts"])
    refusal = (await bot.fake.wait_response(token)).body
    assert refusal["response_type"] == "ephemeral" and "cannot approve its own gate" in refusal["text"]

    token = await bot.press(CAROL, "gate_approve", approve["value"], card.args["thread_ts"])
    assert "did not hold the approver role when gate" in (await bot.fake.wait_response(token)).body["text"]

    await bot.press(BOB, "gate_approve", approve["value"], card.args["thread_ts"])
    result = await bot.fake.wait_for(
        "chat.postMessage",
        lambda c: "thread_ts" in c.args and "gated#1 succeeded" in c.args["text"],
        timeout=15,
    )
    assert result.args["thread_ts"] == card.args["thread_ts"]
    edited = await bot.fake.wait_for(
        "chat.update", lambda c: "succeeded" in c.args.get("text", ""), timeout=5
    )
    assert edited.args["ts"] == card.args["thread_ts"] or edited.args["channel"] == CHANNEL
    runs = [c for c in bot.fake.calls_to("chat.postMessage") if "thread_ts" not in c.args]
    assert len(runs) == 1  # one message per run, however many times it changed


async def test_a_failed_job_posts_its_last_log_lines_in_the_thread(bot: Bot) -> None:
    await bot.say(ALICE, "run failing")
    post = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "thread_ts" in c.args and "build/compile" in c.args["text"], timeout=15
    )
    assert "error: it broke" in json.dumps(post.args["blocks"])


async def test_commands_are_acknowledged_fast_even_when_many_arrive_at_once(bot: Bot) -> None:
    results = await asyncio.gather(*(bot.command(ALICE, "runs") for _ in range(20)))
    assert all(status == 200 for status, _, _ in results)
    assert max(took for _, _, took in results) < 3.0


async def test_slack_roles_come_from_configuration_and_user_groups(sqlite_url: str, tmp_path: Path) -> None:
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    (pipes / "gated.yml").write_text(textwrap.dedent(GATED.replace("release-managers", "S0RELEASE")))
    async with FakeSlack() as fake:
        fake.usergroups["S0RELEASE"] = [BOB]
        settings = load_settings(
            database_url=sqlite_url,
            pipelines_dir=pipes,
            work_dir=tmp_path / "work",
            poll_interval=0.05,
            slack_bot_token="xoxb-test",
            slack_signing_secret=SECRET,
            slack_api_url=fake.base_url,
            slack_roles={ALICE: ["deployer"], "S0RELEASE": ["approver"]},
        )
        client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
        await client.start_server()
        try:
            bot = Bot(client, fake)
            assert "Roles: approver. Groups: S0RELEASE" in await bot.say(BOB, "whoami")
            assert "Roles: deployer." in await bot.say(ALICE, "whoami")
            assert "Started *gated#1*" in await bot.say(ALICE, "run gated ref=abc1234")
            card = await fake.wait_for("chat.postMessage", lambda c: "approval" in c.args.get("text", ""))
            blocks = card.args["blocks"]
            blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
            value = next(
                e["value"]
                for b in blocks
                if b["type"] == "actions"
                for e in b["elements"]
                if e["action_id"] == "gate_approve"
            )
            await bot.press(BOB, "gate_approve", value, card.args["thread_ts"])
            await fake.wait_for(
                "chat.postMessage", lambda c: "gated#1 succeeded" in c.args.get("text", ""), timeout=15
            )
        finally:
            await client.close()


async def test_a_failure_is_settled_in_the_thread_by_ignoring_it_and_going_on(bot: Bot) -> None:
    await bot.say(ALICE, "run failing")
    post = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "thread_ts" in c.args and "build/compile" in c.args["text"], timeout=15
    )
    blocks = post.args["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    buttons = {e["action_id"]: e for b in blocks if b["type"] == "actions" for e in b["elements"]}
    assert {"run_retry", "run_ignore_failure"} <= set(buttons)
    token = await bot.press(
        CAROL, "run_ignore_failure", buttons["run_ignore_failure"]["value"], post.args["thread_ts"]
    )
    assert "approver role" in (await bot.fake.wait_response(token)).body["text"]
    await bot.press(
        ALICE, "run_ignore_failure", buttons["run_ignore_failure"]["value"], post.args["thread_ts"]
    )
    done = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "failing#2 succeeded" in c.args.get("text", ""), timeout=15
    )
    assert done.args["channel"] == CHANNEL
    edited = await bot.fake.wait_for(
        "chat.update", lambda c: "failing#2" in c.args.get("text", "") and "succeeded" in c.args["text"]
    )
    assert "failure of compile ignored by U0ALICE" in json.dumps(edited.args["blocks"])


async def test_a_deploy_to_a_confirm_environment_asks_first_and_the_question_expires(
    sqlite_url: str, tmp_path: Path
) -> None:
    pipes = tmp_path / "pipelines"
    pipes.mkdir()
    (pipes / "gated.yml").write_text(textwrap.dedent(GATED))
    store = SqlStore(sqlite_url)
    Directory(store).grant(ALICE, "role", str(Role.DEPLOYER), datetime.now(UTC))
    store.dispose()
    async with FakeSlack() as fake:
        settings = load_settings(
            database_url=sqlite_url,
            pipelines_dir=pipes,
            work_dir=tmp_path / "work",
            poll_interval=0.05,
            slack_bot_token="xoxb-test",
            slack_signing_secret=SECRET,
            slack_api_url=fake.base_url,
            environments={"production": {"confirm": True}},
        )
        client = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
        await client.start_server()
        try:
            bot = Bot(client, fake)
            status, token, _ = await bot.command(ALICE, "run gated ref=abc1234")
            assert status == 200
            question = (await fake.wait_response(token)).body
            assert question["response_type"] == "ephemeral"
            assert "deploys to *production*" in question["text"] or "production" in json.dumps(
                question["blocks"]
            )
            assert "live in production now: nothing yet" in json.dumps(question["blocks"])
            button = next(e for b in question["blocks"] if b["type"] == "actions" for e in b["elements"])
            assert not [c for c in fake.calls_to("chat.postMessage") if c.args.get("channel") == CHANNEL]

            stale = json.dumps({**json.loads(button["value"]), "until": time.time() - 1})
            token = await bot.press(ALICE, "run_confirm", stale, "1.0")
            assert "expired" in (await fake.wait_response(token)).body["text"]

            token = await bot.press(ALICE, "run_confirm", button["value"], "1.0")
            assert "Started *gated#1*" in (await fake.wait_response(token)).body["text"]
            await fake.wait_for("chat.postMessage", lambda c: c.args.get("channel") == CHANNEL)
        finally:
            await client.close()


async def test_app_home_is_refreshed_when_a_gate_starts_waiting(bot: Bot) -> None:
    from tests.slack.signing import event_callback

    opened = event_callback(
        SECRET, {"type": "app_home_opened", "user": BOB, "tab": "home", "event_ts": "1.0"}, event_id="Ev1"
    )
    response = await bot.client.post("/slack/events", data=opened.body, headers=opened.headers)
    assert response.status == 200
    first = await bot.fake.wait_for("views.publish", lambda c: c.args.get("user_id") == BOB)
    assert "Nothing is waiting for you" in json.dumps(first.args["view"])
    await bot.say(ALICE, "run gated ref=abc1234")
    again = await bot.fake.wait_for(
        "views.publish",
        lambda c: c.args.get("user_id") == BOB and "gate_approve" in json.dumps(c.args["view"]),
        15,
    )
    assert "*gated#1* waits for approval before *production*" in json.dumps(again.args["view"])


async def test_schedules_from_slack(bot: Bot, tmp_path: Path) -> None:
    said = await bot.say(ALICE, 'schedule gated "0 2 * * 1-5" tz=Europe/Berlin ref=abc1234')
    assert "Scheduled `" in said and "gated '0 2 * * 1-5' (Europe/Berlin) ref=abc1234" in said
    assert "five fields" in await bot.say(ALICE, 'schedule gated "0 2 * *"')
    assert "unknown time zone" in await bot.say(ALICE, 'schedule gated "0 2 * * *" tz=Mars/Base')
    listing = await bot.say(ALICE, "schedules")
    short = listing.split("`")[1]
    assert "by <@U0ALICE>" in listing
    assert "trigger needs one of" in await bot.say(BOB, f"unschedule {short}")
    assert "Removed schedule" in await bot.say(ALICE, f"unschedule {short}")
    assert "No schedules" in await bot.say(ALICE, "schedules")


async def test_a_waiting_gate_reminds_its_approvers_in_the_thread(bot: Bot) -> None:
    await bot.say(ALICE, "run reminded")
    card = await bot.fake.wait_for("chat.postMessage", lambda c: "approval" in c.args.get("text", ""))
    reminder = await bot.fake.wait_for(
        "chat.postMessage", lambda c: "still waits for approval" in c.args.get("text", ""), timeout=10
    )
    assert reminder.args["thread_ts"] == card.args["thread_ts"]
    body = json.dumps(reminder.args["blocks"])
    assert "approvers: release-managers" in body and "it times out at" in body
