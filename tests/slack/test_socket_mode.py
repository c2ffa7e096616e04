"""Slack's state never holds the service up: ``/readyz`` reports it (HTTP mode, Socket Mode and
its connection), a Slack that cannot be asked about user groups delays no start, the Socket
Mode connection's waits grow between tries, and a connection that comes up makes the notifier
catch up at once. ``tests/e2e/test_slack_socket.py`` runs ``shipyard serve`` itself through a
Slack that is down at start, and one that drops the connection later."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.slack import SLACK, notifier
from bot.slack.socket import BACKOFF_MAX_S, backoff
from core.access import Role
from storage.directory import Directory
from storage.slack import SlackState
from tests.e2e.server import free_port
from tests.factory import make_settings, serve
from tests.pipelines import gated
from tests.slack import signing
from tests.slack.fake_slack import Call, FakeSlack
from tests.slack.harness import ALICE, BOB, CHANNEL, Bot, Grants, StartBot, until

#: a run that is still running when its message is posted
SLOW = """
name: slow
stages:
  - name: build
    jobs: [{name: compile, run: "sleep 1"}]
"""


def test_the_wait_between_tries_doubles_up_to_its_most() -> None:
    assert [backoff(n) for n in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff(10_000) == BACKOFF_MAX_S


async def _readyz(bot: Bot) -> dict[str, object]:
    assert bot.client is not None
    answer = await bot.client.get("/readyz")
    body = await answer.json()
    assert answer.status == 200 and body["status"] == "ready", body
    slack = body["slack"]
    assert isinstance(slack, dict)
    return slack


async def test_readyz_says_slack_is_off(sqlite_url: str, tmp_path: Path) -> None:
    client = await serve(make_settings(sqlite_url, tmp_path))
    try:
        answer = await client.get("/readyz")
        assert answer.status == 200 and (await answer.json())["slack"] == {"mode": "off"}
    finally:
        await client.close()


async def test_readyz_says_slack_comes_over_http(start_bot: StartBot) -> None:
    bot = await start_bot()
    assert await _readyz(bot) == {"mode": "http"}


async def test_readyz_follows_the_socket_mode_connection(start_bot: StartBot, fake: FakeSlack) -> None:
    bot = await start_bot(slack_app_token="xapp-test", slack_signing_secret=None)
    slack = await _readyz(bot)  # (served before, or while, it connects)
    assert slack["mode"] == "socket" and slack["state"] in ("connecting", "connected"), slack
    await fake.wait_connected()
    async with asyncio.timeout(10):
        while (slack := await _readyz(bot))["state"] != "connected":
            await asyncio.sleep(0.02)
    assert slack.keys() == {"mode", "state", "since"}
    assert datetime.fromisoformat(str(slack["since"])) <= datetime.now(UTC)


async def test_bolt_is_built_without_warning_that_the_token_is_unused(
    start_bot: StartBot, fake: FakeSlack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (Bolt reads SLACK_BOT_TOKEN itself; given a client as well, it warned at every start)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    caplog.set_level(logging.WARNING)
    bot = await start_bot(
        {}, {ALICE: [Role.DEPLOYER]}, slack_app_token="xapp-test", slack_signing_secret=None
    )
    await fake.wait_connected()
    token = f"sock{time.monotonic_ns()}"
    payload = signing.slash_command_payload(
        "whoami", user_id=ALICE, channel_id=CHANNEL, response_url=fake.response_url(token)
    )
    await fake.wait_ack(await fake.send_envelope("slash_commands", payload))
    assert "Roles: deployer." in (await fake.wait_response(token)).body["text"]
    assert bot.app[SLACK].mode == "socket"
    assert not [r for r in caplog.records if "token" in r.getMessage()], caplog.text


async def test_user_groups_slack_cannot_be_asked_about_hold_up_no_start(
    start_bot: StartBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.slack")
    down = f"http://127.0.0.1:{free_port()}/api/"  # (nothing listens there)
    bot = await start_bot(
        {"gated": gated()}, slack_api_url=down, slack_roles={ALICE: ["deployer"], "S0RELEASE": ["approver"]}
    )  # (started, and the first reading of the groups is over)
    assert await _readyz(bot) == {"mode": "http"}
    assert Role.DEPLOYER in Directory(bot.store).principal(ALICE, datetime.now(UTC)).roles
    failed = [r for r in caplog.records if "reading Slack user groups failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_a_connection_made_again_sends_the_posts_waiting_for_their_retry_at_once(
    start_bot: StartBot, fake: FakeSlack, caplog: pytest.LogCaptureFixture, db_url: str
) -> None:
    caplog.set_level(logging.INFO, logger="bot.slack.socket")
    grants: Grants = {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER]}
    bot = await start_bot(
        {"gated": gated()},
        grants,
        database_url=db_url,
        slack_app_token="xapp-test",  # (and HTTP)
    )
    await fake.wait_connected()
    ref = await bot.trigger(ALICE, "run gated")
    await bot.run_post(ref)
    fake.fail_next("chat.postMessage", "service_unavailable", status=503, times=3)

    def cards() -> list[Call]:
        return [c for c in fake.calls_to("chat.postMessage") if f"{ref} waits for approval" in c.args["text"]]

    await until(lambda: len(cards()) == 3, timeout=15, what="three failed tries of the gate card")
    (waiting,) = await until(SlackState(bot.store).pending_posts, what="the card waiting for its retry")
    assert waiting.attempts == 3  # (its next try is 4 s after the third)

    await fake.send_disconnect("refresh_requested")  # Slack asks for a new connection
    await fake.wait_connected(count=2)
    card = await fake.wait_for("chat.postMessage", lambda c: c in cards() and c.ok, timeout=10)
    assert datetime.now(UTC) < waiting.due  # tried when the connection was made, not at the end of its wait
    assert card.args["thread_ts"] == (await bot.run_post(ref)).response["ts"]
    await until(lambda: not SlackState(bot.store).pending_posts(), what="nothing waiting")
    said = [r.getMessage() for r in caplog.records if r.name == "bot.slack.socket"]
    assert said == [
        "Slack: connecting over Socket Mode",
        "Slack: connected over Socket Mode",
        "Slack: Socket Mode reconnecting (Slack asked for a new connection)",
        "Slack: connected over Socket Mode",
    ]


async def test_a_run_message_whose_edits_were_given_up_is_edited_once_connected_again(
    start_bot: StartBot, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.setattr(notifier, "EDIT_BACKOFF", [0.1, 0.1], raising=True)  # (given up in 0.2 s)
    bot = await start_bot(
        {"slow": SLOW}, {ALICE: [Role.DEPLOYER]}, database_url=db_url, slack_app_token="xapp-test"
    )
    await fake.wait_connected()
    ref = await bot.trigger(ALICE, "run slow")
    ts = (await bot.run_post(ref)).response["ts"]
    fake.fail_next("chat.update", "service_unavailable", status=503, times=1000)  # Slack fails edits
    await bot.until_status(ref, "succeeded")

    def tries() -> int:
        return len(fake.calls_to("chat.update"))

    # the edit showing the result failed, and was given up: no try comes after the last
    seen = await until(lambda: tries() >= 3 and tries(), what="the edits tried and given up")
    await asyncio.sleep(1.0)
    assert tries() == seen and "succeeded" not in bot.run_message(ts)["text"]

    fake.heal("chat.update")
    await fake.send_disconnect("refresh_requested")
    await fake.wait_connected(count=2)
    await until(lambda: "succeeded" in bot.run_message(ts)["text"], what="the message edited at last")
