"""Real ``shipyard serve`` processes delivering to a real receiver: a SIGKILL in the middle loses
no message, and two replicas on one PostgreSQL database never both send one."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.webhooks import signing
from bot.webhooks.messages import types_of
from core.commands import TriggerRun
from core.runtime.service import Service
from core.states import RUN_TERMINAL
from storage.webhooks import WebhookStore
from tests.e2e.server import Server
from tests.helpers import ALICE
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.slow
Receivers = Callable[[], Awaitable[Receiver]]
EVENTS = ["run.started", "stage.finished", "run.finished"]
CHAIN = """
name: chain
stages:
  - {name: a, jobs: [{name: x, run: "true"}]}
  - {name: b, jobs: [{name: x, run: "true"}]}
"""


def _server(root: Path, url: str, runner: str, timeout: float) -> Server:
    server = Server(
        root,
        url,
        runner=runner,
        capacity=4,
        webhook_allow="127.0.0.1",
        webhook_timeout_seconds=timeout,
        webhook_retry_seconds="0.5,1,1,1,1,1",
    )
    server.pipeline("chain", CHAIN)
    return server


def _subscribe(svc: Service, receiver: Receiver) -> str:
    secret = signing.new_secret()
    receiver.secret = secret
    WebhookStore(svc.store).create(
        url=receiver.url,
        events=EVENTS,
        pipeline=None,
        environment=None,
        description="e2e",
        secret=secret,
        owner="tests",
        now=datetime.now(UTC),
    )
    return secret


def _expected(svc: Service) -> set[str]:
    """Every message the event log calls for (once every run has finished)."""
    wanted = set()
    for event in svc.store.events_after(0, 100_000):
        for kind in types_of(event):
            if kind in EVENTS:
                wanted.add(
                    f"msg_{event.run_id}.run.started" if kind == "run.started" else f"msg_{event.seq}.{kind}"
                )
    return wanted


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` on a thread: the receiver shares this event loop and must not wait."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _finished(svc: Service, count: int) -> bool:
    runs = svc.store.list_runs("chain", count)
    return len(runs) == count and all(s.run.status in RUN_TERMINAL for s in runs)


def _trigger(svc: Service, runs: int) -> None:
    for _ in range(runs):
        assert svc.handle(TriggerRun(pipeline="chain", actor=ALICE)).accepted


async def test_a_sigkill_in_the_middle_of_delivering_loses_nothing(
    sqlite_url: str, make_service: Callable[..., Service], receivers: Receivers, tmp_path: Path
) -> None:
    receiver = await receivers()
    svc = make_service(sqlite_url)
    first = _server(tmp_path, sqlite_url, "kill-1", timeout=3)
    await asyncio.to_thread(first.start)
    _subscribe(svc, receiver)
    held: list[str] = []

    def hold_one(payload: dict[str, object]) -> str | None:
        if not held and payload["type"] == "stage.finished":
            held.append(str(payload["data"]))  # this one is in flight when the server dies
            return "silent"
        return None

    receiver.rule = hold_one
    runs = 8
    try:
        await asyncio.to_thread(_trigger, svc, runs)
        # kill while the held message is still in flight (its sender waits up to 3 s for it)
        await _until(lambda: bool(held) and len(receiver.received) >= 8, "deliveries to be under way")
        first.signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait)
        sent_before = len(receiver.received)
        receiver.release.set()  # the held request ends; its sender is gone

        second = _server(tmp_path, sqlite_url, "kill-1", timeout=3)
        await asyncio.to_thread(second.start)
        try:
            await _until(lambda: _finished(svc, runs), "every run to finish after the restart")
            expected = await asyncio.to_thread(_expected, svc)
            await _until(lambda: {r.msg_id for r in receiver.delivered} >= expected, "every message")
        finally:
            await asyncio.to_thread(second.stop)
    finally:
        await asyncio.to_thread(first.stop)

    got = {r.msg_id for r in receiver.delivered}
    assert got == expected
    finished = [m for m in expected if m.endswith(".run.finished")]
    assert len([m for m in expected if m.endswith(".run.started")]) == len(finished) == runs
    assert sent_before < len(receiver.received)  # the restarted server sent the rest
    held_id = receiver.received[[r.answered for r in receiver.received].index(0)].msg_id
    assert held_id in got  # what was in flight at the kill was sent again
    deliveries = [d for w in WebhookStore(svc.store).all() for d in _all(svc, w.id)]
    assert Counter(d.state for d in deliveries) == {"delivered": len(expected)}
    assert [d.attempts for d in deliveries if d.msg_id == held_id] == [2]  # claimed again after its lease


def _all(svc: Service, webhook_id: str) -> list:  # type: ignore[type-arg]
    return WebhookStore(svc.store).deliveries(webhook_id, None, 10_000)


@pytest.mark.postgres
async def test_two_replicas_never_both_send_a_message(
    pg_url: str, make_service: Callable[..., Service], receivers: Receivers, tmp_path: Path
) -> None:
    receiver = await receivers()
    svc = make_service(pg_url)
    servers = [_server(tmp_path, pg_url, f"replica-{i}", timeout=10) for i in range(2)]
    runs = 20
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        hook = _subscribe(svc, receiver)
        assert hook
        await asyncio.to_thread(_trigger, svc, runs)
        await _until(lambda: _finished(svc, runs), "every run to finish", timeout=90)
        expected = await asyncio.to_thread(_expected, svc)
        await _until(lambda: {r.msg_id for r in receiver.delivered} >= expected, "every message", timeout=60)
        await asyncio.sleep(1.0)  # a second sender of any message would have sent it by now
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)

    sent = Counter(r.msg_id for r in receiver.received)
    assert set(sent) == expected and len(expected) == runs * 4
    assert sent.most_common(1)[0][1] == 1, sent.most_common(3)
    (webhook,) = WebhookStore(svc.store).all()
    deliveries = _all(svc, webhook.id)
    assert {(d.state, d.attempts) for d in deliveries} == {("delivered", 1)}
