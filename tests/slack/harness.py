"""The Shipyard Slack bot under test, and what tests read off it.

A real ``create_app`` (its Bolt endpoint, notifier and runner, real runs on a real database) gets
requests signed as Slack signs them (:mod:`tests.slack.signing`); its Web API calls go to
:class:`tests.slack.fake_slack.FakeSlack`. ``start_bot`` in ``conftest.py`` builds one from what
differs between test files: the pipelines, who holds which role, and the settings (environments,
``slack_roles``, ``slack_channel``, ...).

    @pytest.fixture
    async def bot(start_bot: StartBot) -> Bot:
        return await start_bot({"gated": gated()}, {ALICE: [Role.DEPLOYER], BOB: [Role.APPROVER]})
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient

from bot.app import SHIPYARD
from bot.bootstrap import Shipyard
from bot.config import Settings
from bot.slack import SLACK
from core.access import Role
from core.events import Event
from core.model import Gate, RunState
from storage.directory import Directory
from storage.reads import Reads
from storage.store import SqlStore
from tests.factory import make_settings, serve
from tests.slack import signing
from tests.slack.fake_slack import Call, FakeSlack, settle_bolt_tasks

SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
CHANNEL = "C0DEPLOYS"
ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"
DAVE, ERIN, ROOT = "U0DAVE", "U0ERIN", "U0ROOT"
RELEASE_MANAGERS = "group:release-managers"
T = TypeVar("T")

#: who holds what: a ``Role``, or ``"group:NAME"`` for membership of a Shipyard group
Grants = Mapping[str, Sequence[Role | str]]


class StartBot(Protocol):
    """``start_bot`` (conftest.py): a started :class:`Bot`, stopped after the test."""

    async def __call__(
        self,
        pipelines: Mapping[str, str] | None = ...,
        grants: Grants | None = ...,
        *,
        database_url: str | None = ...,
        **settings: Any,
    ) -> Bot: ...


# -- reading what the bot posted ---------------------------------------------------------------------
def blocks_of(call_or_message: Call | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Block Kit blocks of a Web API call, a posted message or a reply (JSON-decoded if need be)."""
    args = call_or_message.args if isinstance(call_or_message, Call) else call_or_message
    blocks = args.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)


def button(call_or_message: Call | Mapping[str, Any], action_id: str) -> dict[str, Any]:
    """The first button (any actions element) with ``action_id``."""
    return next(
        e
        for b in blocks_of(call_or_message)
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == action_id
    )


def buttons_of(call_or_message: Call | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every actions element, by its action_id."""
    return {
        e["action_id"]: e for b in blocks_of(call_or_message) if b["type"] == "actions" for e in b["elements"]
    }


def top_level_posts(fake: FakeSlack) -> list[Call]:
    """The messages posted in a channel, not in a thread (one per run)."""
    return [c for c in fake.calls_to("chat.postMessage") if "thread_ts" not in c.args and c.ok]


def run_named(reply: Mapping[str, Any]) -> str:
    """The run a reply names first (``Started *web#1* …``)."""
    return str(reply["text"].split("*")[1])


async def until(check: Callable[[], T | None], timeout: float = 10, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# -- setting it up -------------------------------------------------------------------------------------
def bot_settings(
    tmp_path: Path,
    database_url: str,
    fake: FakeSlack,
    pipelines: Mapping[str, str],
    grants: Grants,
    **settings: Any,
) -> Settings:
    """Writes ``pipelines`` (name → YAML) and ``grants`` into the database; the settings of a bot on
    them that talks to ``fake``, signed with ``SECRET`` (``settings`` add to or override these)."""
    store = SqlStore(database_url)
    directory, now = Directory(store), datetime.now(UTC)
    for principal, held in grants.items():
        for grant in held:
            if str(grant).startswith("group:"):
                directory.grant(principal, "group", str(grant).removeprefix("group:"), now)
            else:
                directory.grant(principal, "role", str(grant), now)
    store.dispose()
    return make_settings(
        database_url,
        tmp_path,
        pipelines,
        **{
            "runner_name": "slack-test",
            "slack_bot_token": "xoxb-test",
            "slack_api_url": fake.base_url,
            "slack_signing_secret": SECRET,
            **settings,
        },
    )


# -- the bot -------------------------------------------------------------------------------------------
@dataclass
class Bot:
    fake: FakeSlack
    settings: Settings
    client: TestClient[web.Request, web.Application] | None = None

    async def start(self) -> None:
        """Serve, and wait for the first reading of the user groups (``slack_roles``), which
        the service does in the background."""
        self.client = await serve(self.settings)
        async with asyncio.timeout(10):
            await self.app[SLACK].roles_read.wait()

    async def stop(self) -> None:
        if self.client is not None:
            await settle_bolt_tasks()
            client, self.client = self.client, None
            await client.close()

    # -- the state of things ------------------------------------------------------------------
    @property
    def app(self) -> web.Application:
        assert self.client is not None
        return self.client.app

    @property
    def shipyard(self) -> Shipyard:
        return self.app[SHIPYARD]

    @property
    def store(self) -> SqlStore:
        return self.shipyard.store

    def run(self, ref: str) -> RunState:
        state = Reads(self.store).run(ref)
        assert state is not None, ref
        return state

    def gate(self, ref: str) -> Gate:
        return next(g for g in self.run(ref).gates if g.kind == "manual")

    async def until_status(self, ref: str, *statuses: str, timeout: float = 10) -> RunState:
        def check() -> RunState | None:
            state = Reads(self.store).run(ref)
            return state if state is not None and state.run.status in statuses else None

        return await until(check, timeout, f"{ref} to be {'/'.join(statuses)}")

    def events(self, ref: str) -> list[Event]:
        return self.store.events_after(0, 10_000, self.run(ref).run.id)

    def api_auth(self, name: str, role: Role = Role.DEPLOYER) -> dict[str, str]:
        """The headers of a REST call with a new token ``name`` holding ``role``."""
        secret = Directory(self.store).create_token(name, [role], datetime.now(UTC), by="test")
        return {"Authorization": f"Bearer {secret}"}

    # -- what Slack sends -----------------------------------------------------------------------
    async def post(self, request: signing.SignedRequest) -> tuple[int, str, str]:
        assert self.client is not None
        body, headers = request
        response = await self.client.post("/slack/events", data=body, headers=headers)
        return response.status, response.content_type, await response.text()

    def command_request(
        self, user: str, text: str, trigger_id: str | None = None
    ) -> tuple[str, signing.SignedRequest]:
        """``/deploy text`` as ``user`` in ``CHANNEL``, signed; and the token of its response_url."""
        token = f"cmd{time.monotonic_ns()}"
        request = signing.slash_command(
            SECRET,
            text,
            user_id=user,
            channel_id=CHANNEL,
            response_url=self.fake.response_url(token),
            trigger_id=trigger_id,
        )
        return token, request

    async def command(self, user: str, text: str, trigger_id: str | None = None) -> str:
        """``/deploy text`` as ``user``; returns the response_url token."""
        token, request = self.command_request(user, text, trigger_id)
        status, _, _ = await self.post(request)
        assert status == 200
        return token

    async def say(self, user: str, text: str) -> dict[str, Any]:
        """The reply posted to the command's response_url."""
        token = await self.command(user, text)
        body = (await self.fake.wait_response(token)).body
        assert isinstance(body, dict)
        return body

    async def trigger(self, user: str, text: str) -> str:
        """``/deploy text`` (``run …``) as ``user``; the run its reply names."""
        return run_named(await self.say(user, text))

    async def press(
        self, user: str, action_id: str, value: str, message_ts: str, trigger_id: str = ""
    ) -> str:
        """A button pressed in a message in ``CHANNEL``; returns the response_url token."""
        token = f"act{time.monotonic_ns()}"
        request = signing.block_actions(
            SECRET,
            user_id=user,
            action_id=action_id,
            value=value,
            channel_id=CHANNEL,
            message_ts=message_ts,
            response_url=self.fake.response_url(token),
            trigger_id=trigger_id or None,
        )
        status, _, text = await self.post(request)
        assert status == 200, text
        return token

    async def answer(self, user: str, action_id: str, value: str, message_ts: str = "1.0") -> dict[str, Any]:
        """A button pressed; the answer posted to its response_url."""
        token = await self.press(user, action_id, value, message_ts)
        body = (await self.fake.wait_response(token)).body
        assert isinstance(body, dict)
        return body

    async def submit(
        self, user: str, callback_id: str, values: dict[str, dict[str, Any]], private_metadata: str
    ) -> dict[str, Any] | None:
        """A view_submission; returns Bolt's JSON answer (None for a plain ack)."""
        request = signing.view_submission(
            SECRET, user_id=user, callback_id=callback_id, values=values, private_metadata=private_metadata
        )
        status, _, text = await self.post(request)
        assert status == 200, text
        return json.loads(text) if text else None

    # -- what the bot posts ---------------------------------------------------------------------
    async def run_post(self, ref: str, timeout: float = 10) -> Call:
        """The run's own message in the channel (not in a thread)."""
        return await self.fake.wait_for(
            "chat.postMessage",
            lambda c: "thread_ts" not in c.args and ref in c.args.get("text", ""),
            timeout=timeout,
        )

    async def thread_post(self, text: str, timeout: float = 10) -> Call:
        """The first post in a thread whose text says ``text``."""
        return await self.fake.wait_for(
            "chat.postMessage", lambda c: "thread_ts" in c.args and text in c.args.get("text", ""), timeout
        )

    async def gate_card(self, ref: str) -> Call:
        return await self.thread_post(f"{ref} waits for approval")

    def run_message(self, ts: str) -> dict[str, Any]:
        return self.fake.messages[(CHANNEL, ts)]
