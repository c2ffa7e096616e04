"""Real receivers for webhook tests: aiohttp servers on 127.0.0.1 that check every delivery's
signature with the ``standardwebhooks`` package (an implementation that is not ours), answer as
a test tells them (fail, go silent, come back), and record what arrived.

The served API comes from ``tests/api/conftest.py``; ``start_hooks`` starts it with the receivers'
address allow-listed and, by default, without the background deliverer, so a test moves the
webhook worker itself with ``step(at)`` and goes through hours of backoff without waiting."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.housekeeping import HOUSEKEEPING, Housekeeping
from bot.webhooks.service import WEBHOOKS, Webhooks
from storage.webhooks import Outcome
from tests.api.conftest import (  # noqa: F401  (fixtures, used by name)
    Api,
    StartApi,
    api_pg_database,
    pg_url,
    start_api,
)
from tests.pipelines import WEBHOOK_PIPELINES


@dataclass
class Received:
    msg_id: str
    type: str
    payload: dict[str, Any]
    headers: dict[str, str]
    at: float
    answered: int


@dataclass
class Receiver:
    """A webhook receiver. ``script`` holds answers for the next requests (an HTTP status, or
    "silent": no answer until ``release`` is set); after it, ``default``."""

    server: TestServer | None = None
    secret: str | None = None
    default: int | str = 200
    script: deque[int | str] = field(default_factory=deque)
    #: answers chosen by content (None: fall through to the script and the default)
    rule: Callable[[dict[str, Any]], int | str | None] | None = None
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/hook"

    @property
    def delivered(self) -> list[Received]:
        """What the receiver acknowledged (2xx)."""
        return [r for r in self.received if 200 <= r.answered < 300]

    def types(self, run_id: str | None = None) -> list[str]:
        return [r.type for r in self.delivered if run_id is None or r.payload["data"]["run"]["id"] == run_id]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            assert self.secret is not None, "the test did not tell the receiver its secret"
            payload = standardwebhooks.Webhook(self.secret).verify(body, headers)
        except standardwebhooks.WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return web.Response(status=400, text=f"bad signature: {exc}")
        chosen = self.rule(payload) if self.rule is not None else None
        answer = chosen if chosen is not None else self.script.popleft() if self.script else self.default
        status = 200 if answer == "silent" else int(answer)
        answered = 0 if answer == "silent" else status  # the sender gave up waiting: not acknowledged
        self.received.append(
            Received(headers["webhook-id"], payload["type"], payload, headers, time.time(), answered)
        )
        self.arrived.set()
        if answer == "silent":
            await self.release.wait()
        return web.Response(status=status, text="thanks" if status < 300 else "not now")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Until ``count`` deliveries were acknowledged."""
        deadline = time.monotonic() + timeout
        while len(self.delivered) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.delivered)} of {count} deliveries arrived: {self.types()}")
            self.arrived.clear()
            try:
                async with asyncio.timeout(0.2):
                    await self.arrived.wait()
            except TimeoutError:
                pass
        return self.delivered


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make() -> Receiver:
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        receiver.server = TestServer(app, host="127.0.0.1")
        await receiver.server.start_server()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.release.set()
        assert receiver.server is not None
        await receiver.server.close()
        assert receiver.refused == [], f"deliveries with bad signatures: {receiver.refused}"


StartHooks = Callable[..., Awaitable[Api]]


@pytest.fixture
def start_hooks(start_api: StartApi) -> StartHooks:  # noqa: F811
    """``await start_hooks(url, **settings)``: the API with the webhook pipelines, loopback
    allow-listed and the deliverer off (the test steps it) unless ``webhook_deliver=True``."""

    async def start(url: str, **overrides: Any) -> Api:
        options: dict[str, Any] = {
            "webhook_allow": ["127.0.0.1"],
            "webhook_deliver": False,
            "webhook_timeout_seconds": 2.0,
        }
        options.update(overrides)
        return await start_api(url, WEBHOOK_PIPELINES, **options)

    return start


def housekeeping(api: Api) -> Housekeeping:
    return api.client.app[HOUSEKEEPING]  # type: ignore[index,no-any-return]


def worker(api: Api) -> Webhooks:
    return api.client.app[WEBHOOKS]  # type: ignore[index,no-any-return]


async def subscribe(
    api: Api, receiver: Receiver, events: list[str] | None = None, **more: Any
) -> dict[str, Any]:
    """A subscription for ``receiver`` (which learns the secret)."""
    body = {"url": receiver.url, "events": events or ["run.started", "run.finished"], **more}
    made = await api.post("/webhooks", json=body)
    assert made.status == 201, made.text
    receiver.secret = made.json["secret"]
    return made.json  # type: ignore[no-any-return]


async def settle(api: Api, ref: str, status: str = "succeeded") -> dict[str, Any]:
    run = await api.wait(ref)
    assert run["status"] == status, run
    return run


def utc(seconds: float = 0.0) -> datetime:
    return datetime.fromtimestamp(time.time() + seconds, UTC)


def body_of(received: Received) -> str:
    return json.dumps(received.payload)


async def drain(api: Api, at: datetime | None = None, rounds: int = 100) -> list[Outcome]:
    """Step the worker at ``at`` until it has nothing more to send (a run's next message is
    due only once the one before it is done, so this takes a round per message)."""
    sent: list[Outcome] = []
    for _ in range(rounds):
        outcomes = await worker(api).step(at)
        if not outcomes:
            return sent
        sent += outcomes
    raise AssertionError(f"still sending after {rounds} rounds")
