"""A whole Shipyard (engine, built-in runner, real subprocesses) on a real database."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.bootstrap import Shipyard, build
from bot.config import Settings
from core.commands import Command, TriggerRun
from core.engine import Decision
from core.model import RunState
from core.states import RUN_TERMINAL
from tests.helpers import ALICE

StartYard = Callable[..., Awaitable[Shipyard]]


@pytest.fixture
async def start_yard(tmp_path: Path) -> AsyncIterator[StartYard]:
    """``await start_yard(url, {"name": yaml, …}, **settings)`` starts a Shipyard; all are
    stopped after the test."""
    started: list[Shipyard] = []

    async def start(url: str, pipelines: dict[str, str] | None = None, **overrides: Any) -> Shipyard:
        pipes = tmp_path / "pipelines"
        pipes.mkdir(exist_ok=True)
        for name, text in (pipelines or {}).items():
            (pipes / f"{name}.yml").write_text(textwrap.dedent(text))
        options: dict[str, Any] = {
            "database_url": url,
            "pipelines_dir": pipes,
            "work_dir": tmp_path / "work",
            "poll_interval": 0.05,
            "lease_seconds": 3.0,
            "kill_grace_seconds": 1.0,
            "runner_name": "test-runner",
        }
        options.update(overrides)
        shipyard = build(Settings(**options), migrate=False)
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
