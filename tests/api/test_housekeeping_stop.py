"""A stop ends a housekeeping pass under way itself, so nothing is left for the event loop to
cancel when it closes (APScheduler logs a cancelled job as a failure with its traceback: a
server stopped right after it started printed one), and once it returned the pass deletes
nothing more (a pass handed to the event loop just before the stop began after it, and swept
beside whatever came next)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime

import pytest

from bot import housekeeping
from bot.housekeeping import HOUSEKEEPING, Housekeeping, Swept
from tests.api.conftest import Api


async def test_a_stop_ends_the_pass_under_way_quietly(
    lite: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keeping: Housekeeping = lite.client.app[HOUSEKEEPING]  # type: ignore[index]
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_sweep(at: datetime, going: object) -> Swept:
        started.set()
        await release.wait()  # (a backlog: the pass is still deleting when the service stops)
        return Swept(idempotency_keys=0, webhook_deliveries=0)

    for _ in range(200):  # (the pass every start runs at once: let it end first)
        if keeping._running is None:
            break
        await asyncio.sleep(0.05)
    monkeypatch.setattr(keeping, "_sweep", slow_sweep, raising=True)
    monkeypatch.setattr(housekeeping, "STOP_GRACE_S", 0.2, raising=True)  # (its batch never ends)
    assert keeping.scheduler is not None
    (job,) = keeping.scheduler.get_jobs()
    job.modify(next_run_time=datetime.now(UTC))  # the pass, as APScheduler runs it
    await asyncio.wait_for(started.wait(), 10)
    running = keeping._running
    assert running is not None and not running.done()  # the fault: a pass in flight at the stop

    with caplog.at_level(logging.DEBUG):
        await keeping.stop()
        await asyncio.sleep(0)  # (APScheduler's wrapper reports the job's end)
    assert running.done() and not running.cancelled()  # ended by the stop, and it said so quietly
    assert "housekeeping pass stopped with the service" in caplog.text
    assert "raised an exception" not in caplog.text and "Traceback" not in caplog.text


async def test_once_a_stop_returned_the_pass_deletes_nothing_more(lite: Api) -> None:
    """A stop while a batch's delete is under way waits for it: cancelling the await would
    leave the delete to commit after the stop returned, beside whatever comes next."""
    keeping: Housekeeping = lite.client.app[HOUSEKEEPING]  # type: ignore[index]
    await keeping.stop()
    fresh = Housekeeping(keeping.backend, keeping.backend.shipyard.settings)
    began, ended = threading.Event(), threading.Event()
    purge = fresh.keys.purge

    def slow_purge(at: datetime, limit: int) -> int:
        began.set()
        time.sleep(0.5)  # (a batch of a backlog, deleting)
        try:
            return purge(at, limit)
        finally:
            ended.set()

    fresh.keys.purge = slow_purge  # type: ignore[method-assign]
    await fresh.start()  # (its first pass is due at once)
    assert await asyncio.to_thread(began.wait, 10)  # the fault: a delete under way at the stop

    await fresh.stop()

    assert ended.is_set()  # the delete ended before the stop returned, not after it
    assert fresh._running is None
