"""An idle server's timer rests: with nothing in flight (``Tx.in_flight``) it looks once every
``idle_wait`` instead of every poll, and a commit wakes it, so a deadline set while it rested is
still kept on time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.bootstrap import Shipyard
from core.commands import TriggerRun
from core.runtime.timers import Timers
from core.states import GateStatus
from tests.factory import make_shipyard
from tests.helpers import ALICE
from tests.pipelines import one_job

GATED = one_job("hurried", stage="production", job="ship", gate="{approvers: [bob], timeout: 1s}")


@pytest.fixture
async def idle(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Shipyard]:
    shipyard = make_shipyard(sqlite_url, tmp_path, {"hurried": GATED}, poll_interval=0.25)
    await shipyard.start()
    try:
        yield shipyard
    finally:
        await shipyard.stop()


async def _rested(shipyard: Shipyard) -> None:
    """Until the timer's last look found nothing in flight (it rests from there)."""
    for _ in range(200):
        if shipyard.orchestrator._idle:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the timer never rested")


async def test_an_idle_timer_looks_once_per_idle_wait(
    idle: Shipyard, monkeypatch: pytest.MonkeyPatch
) -> None:
    orchestrator = idle.orchestrator
    assert orchestrator.idle_wait == 2.5  # ten polls (at most five seconds)
    looks: list[Timers] = []
    due = orchestrator.service.due

    def counted(*args: float) -> Timers:
        looks.append(timers := due(*args))
        return timers

    monkeypatch.setattr(orchestrator.service, "due", counted, raising=True)
    await _rested(idle)
    await asyncio.sleep(3.0)
    assert 1 <= len(looks) <= 2 and all(t.idle for t in looks)  # not twelve: one per idle_wait


async def test_a_commit_wakes_a_resting_timer_so_a_deadline_is_kept(idle: Shipyard) -> None:
    await _rested(idle)
    started = time.monotonic()
    decision = await idle.orchestrator.handle(TriggerRun(pipeline="hurried", actor=ALICE))
    assert decision.state is not None
    run_id = decision.state.run.id
    for _ in range(300):
        state = idle.service.find_run(run_id)
        assert state is not None
        if state.gates[0].status is not GateStatus.OPEN:
            break
        await asyncio.sleep(0.01)
    took = time.monotonic() - started
    assert state.gates[0].status is GateStatus.TIMED_OUT
    # the gate's 1 s deadline, a poll and some slack: well before the 2.5 s rest would have ended
    assert took < 2.0, took
