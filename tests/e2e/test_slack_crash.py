"""A ``shipyard serve`` that dies between a run's commit and its Slack message: after a restart
the message lands where ``/deploy run`` was typed, and its thread follows it there."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from bot.slack.notifier import CRASH_BEFORE_POST, CRASH_EXIT_CODE
from core.access import Role
from storage.directory import Directory
from storage.store import SqlStore
from tests.e2e.server import Server
from tests.pipelines import one_build
from tests.slack import signing
from tests.slack.fake_slack import FakeSlack

pytestmark = pytest.mark.slow

SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
ALICE = "U0ALICE"
#: where /deploy is typed, and the default channel a run nobody routed would go to instead
TYPED, DEFAULT = "C0TYPED", "C0DEFAULT"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def server(tmp_path: Path, db_url: str, fake: FakeSlack) -> Iterator[Server]:
    store = SqlStore(db_url)
    try:
        Directory(store).grant(ALICE, "role", str(Role.DEPLOYER), datetime.now(UTC))
    finally:
        store.dispose()
    s = Server(tmp_path, db_url, slack_channel=DEFAULT)
    s.pipeline("quick", one_build("quick", retries=2))  # (a job the crash cut short runs again)
    s.env.update(
        {
            "SLACK_API_URL": fake.base_url,
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_SIGNING_SECRET": SECRET,
        }
    )
    yield s
    s.stop()


async def test_a_crash_between_commit_and_post_still_reports_where_deploy_was_typed(
    server: Server, fake: FakeSlack
) -> None:
    server.env[CRASH_BEFORE_POST] = "1"
    await asyncio.to_thread(server.start, 60.0)
    body, headers = signing.slash_command(
        SECRET, "run quick", user_id=ALICE, channel_id=TYPED, response_url=fake.response_url("typed")
    )
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{server.port}/slack/events"
        try:
            async with http.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
        except aiohttp.ServerDisconnectedError:
            pass  # (the run committed and the process died before the ack was written: fine too)

    # it died right before posting the run's message, after the run was committed
    assert await asyncio.to_thread(server.wait, 60.0) == CRASH_EXIT_CODE
    assert [c for c in fake.calls_to("chat.postMessage") if "quick#1" in c.args.get("text", "")] == []

    del server.env[CRASH_BEFORE_POST]
    await asyncio.to_thread(server.start, 60.0)
    message = await fake.wait_for(
        "chat.postMessage",
        lambda c: c.ok and "quick#1" in c.args.get("text", "") and "thread_ts" not in c.args,
        timeout=60,
    )
    assert message.args["channel"] == TYPED
    result = await fake.wait_for(  # (the run message itself may say so too, if the run was done by then)
        "chat.postMessage",
        lambda c: c.ok and "quick#1 succeeded" in c.args.get("text", "") and "thread_ts" in c.args,
        timeout=60,
    )
    assert (result.args["channel"], result.args["thread_ts"]) == (TYPED, message.response["ts"])
    posts = fake.calls_to("chat.postMessage")
    assert [c.args["channel"] for c in posts if "thread_ts" not in c.args] == [TYPED]  # once, and only there
