"""A run is retried once: two server replicas on one PostgreSQL database retrying the same
canceled run at the same moment start one retry between them, never two deployments of it. The
retry moves the retried run's version, so the replica that loses the race decides again and
finds the retry made."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.commands import CancelRun, RetryRun
from core.model import Actor
from tests.engine.conftest import send, trigger
from tests.factory import make_shipyard
from tests.pipelines import one_job

ROUNDS = 8


async def test_two_replicas_retrying_one_run_at_once_start_one_retry(pg_url: str, tmp_path: Path) -> None:
    yards = [
        make_shipyard(
            pg_url,
            tmp_path,
            {"quick": one_job("quick")},
            migrate=i == 0,
            with_runner=False,
            work_dir=tmp_path / f"w{i}",
            runner_capacity=0,
        )
        for i in range(2)
    ]
    for shipyard in yards:
        await shipyard.start()
    try:
        for _ in range(ROUNDS):
            run = await trigger(yards[0], "quick")
            assert (await send(yards[0], CancelRun(run_id=run.run.id, actor=Actor("alice", "cli")))).accepted
            retries = [RetryRun(run_id=run.run.id, actor=Actor(name, "api")) for name in ("alice", "bob")]
            decisions = await asyncio.gather(*(send(y, r) for y, r in zip(yards, retries, strict=True)))
            accepted = [d for d in decisions if d.accepted]
            assert len(accepted) == 1, [d.reason for d in decisions]
            (refused,) = [d for d in decisions if not d.accepted]
            assert accepted[0].state is not None
            assert f"retried already, as {accepted[0].state.run.ref}" in refused.reason
        retried = [s for s in yards[1].store.list_runs("quick", limit=100) if s.run.retry_of]
        assert len(retried) == ROUNDS == len({s.run.retry_of for s in retried})
    finally:
        for shipyard in yards:
            await shipyard.stop()
