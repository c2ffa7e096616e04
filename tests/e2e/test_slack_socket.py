"""``shipyard serve`` in Socket Mode does not wait for Slack. Started while Slack cannot be
reached, it serves at once (``/readyz``, the REST API, the runner), and once Slack answers the
socket connects and the run messages go out. A connection Slack drops later is made again with
a growing wait, ``/readyz`` saying what the link is doing, one log line per change of state."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.server import Server, free_port, wait_until
from tests.slack.fake_slack import Call, FakeSlack

pytestmark = pytest.mark.slow

CHANNEL = "C0DEPLOYS"
ADMIN = "admin-token-for-the-socket-tests"
QUICK = """
name: quick
stages:
  - name: build
    jobs: [{name: compile, run: "true"}]
"""
#: the link's lines, one per change of state (bot/slack/socket.py)
LINK = re.compile(
    r"Slack: (connecting over Socket Mode|connected over Socket Mode|Socket Mode not connected)"
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    """A fake Slack on a port chosen now, not started: Slack is unreachable until the test starts it."""
    fake = FakeSlack(port=free_port())
    yield fake
    await fake.stop()


@pytest.fixture
def server(tmp_path: Path, db_url: str, fake: FakeSlack) -> Iterator[Server]:
    s = Server(tmp_path, db_url)
    s.pipeline("quick", QUICK)
    s.env.update(
        {
            "SLACK_API_URL": fake.base_url,
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_APP_TOKEN": "xapp-test",
            "SHIPYARD_SLACK_CHANNEL": CHANNEL,
            "SHIPYARD_ADMIN_TOKEN": ADMIN,
        }
    )
    s.env.pop("SLACK_SIGNING_SECRET", None)
    yield s
    s.stop()  # (before the fake stops: the fixtures end in reverse)


async def _call(server: Server, method: str, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{server.port}{path}", json={}, headers=headers) as answer,
    ):
        return answer.status, await answer.json()


async def _slack(server: Server) -> dict[str, Any]:
    """What ``/readyz`` says of Slack (it answers 200 whatever Slack does)."""
    status, body = await _call(server, "GET", "/readyz")
    assert status == 200 and body["status"] == "ready", body
    slack = body["slack"]
    assert isinstance(slack, dict)
    return slack


async def _until_slack(server: Server, state: str, timeout: float = 60) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while (slack := await _slack(server))["state"] != state:
            await asyncio.sleep(0.05)
    return slack


async def _run_to_success(server: Server) -> str:
    """A run of quick triggered over REST, once it succeeded; its ref."""
    status, body = await _call(server, "POST", "/api/v1/pipelines/quick/runs")
    assert status == 202, body
    async with asyncio.timeout(60):
        while (await _call(server, "GET", f"/api/v1/runs/{body['id']}"))[1]["status"] != "succeeded":
            await asyncio.sleep(0.1)
    return str(body["ref"])


async def _posted(fake: FakeSlack, ref: str) -> tuple[Call, Call]:
    """The run's message in the channel, and its result in the message's thread."""
    message = await fake.wait_for(
        "chat.postMessage",
        lambda c: c.ok and ref in c.args.get("text", "") and "thread_ts" not in c.args,
        timeout=60,
    )
    result = await fake.wait_for(
        "chat.postMessage",
        lambda c: c.ok and "thread_ts" in c.args and f"{ref} succeeded" in c.args.get("text", ""),
        timeout=60,
    )
    assert message.args["channel"] == CHANNEL and result.args["thread_ts"] == message.response["ts"]
    return message, result


def _at(server: Server, line: str) -> float:
    """When the server first logged ``line`` (seconds, by its own clock)."""
    found = next(x for x in server.log.read_text().splitlines() if line in x)
    return datetime.strptime(found[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _log(server: Server) -> str:
    text = server.log.read_text()
    assert "Traceback" not in text, text
    assert "token will be unused" not in text
    return text


async def test_serves_while_slack_is_unreachable_and_posts_once_it_answers(
    server: Server, fake: FakeSlack
) -> None:
    await asyncio.to_thread(server.start, 60.0)  # (returns once /readyz answers 200)
    ready_at = time.time()
    slack = await _slack(server)
    assert slack["mode"] == "socket" and slack["state"] in ("connecting", "disconnected"), slack
    # from the moment it set out to connect to Slack, it served within 5 s (the process's
    # start-up before it, the interpreter and the migrations, is not Slack's and not counted;
    # a successful health probe is not logged, so the test's own clock says when it answered)
    served = ready_at - _at(server, "Slack: connecting over Socket Mode")
    assert served < 5, served
    ref = await _run_to_success(server)  # the REST API and the runner work meanwhile
    slack = await _until_slack(server, "disconnected")
    assert slack["failures"] >= 1 and "Cannot connect" in slack["error"], slack
    assert fake.calls == []
    await asyncio.to_thread(  # (its message waits: the notifier's tries failed)
        wait_until, lambda: "Slack: cannot post run messages" in server.log.read_text(), 60.0
    )

    await fake.start()  # Slack answers
    await fake.wait_connected(timeout=60)
    assert fake.calls_to("apps.connections.open")[0].token == "xapp-test"
    await _posted(fake, ref)
    slack = await _until_slack(server, "connected")
    assert set(slack) == {"mode", "state", "since"}

    await asyncio.to_thread(server.stop)  # (the fake answers meanwhile: it runs on this loop)
    text = _log(server)
    assert LINK.findall(text) == [
        "connecting over Socket Mode",
        "Socket Mode not connected",
        "connected over Socket Mode",
    ]
    assert text.count("Slack: cannot post run messages") == 1
    assert text.count("Slack: posting run messages again") == 1


async def test_a_connection_slack_drops_is_made_again_with_backoff(server: Server, fake: FakeSlack) -> None:
    await fake.start()
    await asyncio.to_thread(server.start, 60.0)
    await fake.wait_connected(timeout=60)
    await _until_slack(server, "connected")
    await _posted(fake, await _run_to_success(server))

    await fake.stop()  # the socket is closed, and Slack cannot be reached for a while
    lost = await _until_slack(server, "disconnected")
    assert lost["error"] == "the connection was lost", lost
    ref = await _run_to_success(server)  # the service goes on serving

    waits: dict[int, float] = {}  # failed tries so far -> the wait before the next one
    async with asyncio.timeout(60):
        while len(waits) < 4:
            slack = await _slack(server)
            assert slack["state"] == "disconnected", slack
            waits[slack["failures"]] = slack["retry_in_s"]
            await asyncio.sleep(0.05)
    seen = [waits[n] for n in sorted(waits)]
    assert all(a < b for a, b in itertools.pairwise(seen)), waits  # each wait longer
    assert max(waits) >= 2 and "Cannot connect" in (await _slack(server))["error"]

    await fake.start()  # on the port it had
    await fake.wait_connected(count=2, timeout=60)
    await _until_slack(server, "connected")
    await _posted(fake, ref)  # the run that finished meanwhile is reported

    await asyncio.to_thread(server.stop)  # (the fake answers meanwhile: it runs on this loop)
    text = _log(server)
    assert LINK.findall(text) == [
        "connecting over Socket Mode",
        "connected over Socket Mode",
        "Socket Mode not connected",
        "connected over Socket Mode",
    ]
    assert "Socket Mode not connected (the connection was lost)" in text
