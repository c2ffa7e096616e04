"""A whole Shipyard (engine, built-in runner, real subprocesses) on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.bootstrap import Shipyard
from core.commands import Command, TriggerRun
from core.engine import Decision
from core.model import RunState
from core.states import RUN_TERMINAL
from tests.factory import QUICK_LEASE, make_shipyard
from tests.helpers import ALICE

StartShipyard = Callable[..., Awaitable[Shipyard]]


@pytest.fixture
async def start_shipyard(tmp_path: Path) -> AsyncIterator[StartShipyard]:
    """``await start_shipyard(url, {"name": yaml, …}, **settings)`` starts a Shipyard; all are
    stopped after the test."""
    started: list[Shipyard] = []

    async def start(url: str, pipelines: dict[str, str] | None = None, **overrides: Any) -> Shipyard:
        options = {**QUICK_LEASE, "runner_name": "test-runner", **overrides}
        shipyard = make_shipyard(url, tmp_path, pipelines, migrate=False, **options)
        await shipyard.start()
        started.append(shipyard)
        return shipyard

    yield start
    for shipyard in reversed(started):
        await shipyard.stop()


async def trigger(shipyard: Shipyard, pipeline: str, **params: str) -> RunState:
    decision = await shipyard.orchestrator.handle(
        TriggerRun(pipeline=pipeline, actor=ALICE, parameters=params)
    )
    assert decision.accepted, decision.reason
    assert decision.state is not None
    return decision.state


async def send(shipyard: Shipyard, command: Command) -> Decision:
    return await shipyard.orchestrator.handle(command)


async def wait_for(
    shipyard: Shipyard,
    run_id: str,
    predicate: Callable[[RunState], bool] = lambda s: s.run.status in RUN_TERMINAL,
    timeout: float = 20.0,
) -> RunState:
    """Wait, woken by the event log, until ``predicate`` holds for the run."""

    async def poll() -> RunState:
        while True:
            state = await shipyard.orchestrator.db(shipyard.service.find_run, run_id)
            assert state is not None
            if predicate(state):
                return state
            await shipyard.orchestrator.wait_for_events(0.1)

    return await asyncio.wait_for(poll(), timeout)
