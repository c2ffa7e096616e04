"""Two ``shipyard serve`` processes on one PostgreSQL database: each job runs exactly once."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from core.commands import TriggerRun
from core.runtime.service import Service
from core.states import RUN_TERMINAL, RunStatus
from tests.e2e.server import Server, wait_until
from tests.helpers import ALICE, alive
from tests.pipelines import one_job, stalls_first_attempt, three_by_two

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

RUNS = 30


def test_each_job_of_many_concurrent_runs_executes_exactly_once(
    pg_url: str, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    cmd = f"echo $SHIPYARD_JOB_ID $SHIPYARD_ATTEMPT >> {ledger}; sleep 0.02"
    servers = [Server(tmp_path, pg_url, runner=f"engine-{i}", capacity=4) for i in range(2)]
    try:
        servers[0].pipeline("fanout", three_by_two("fanout", f'"{cmd}"'))
        for server in servers:
            server.start()
        svc = make_service(pg_url)
        run_ids = []
        for _ in range(RUNS):
            decision = svc.handle(TriggerRun(pipeline="fanout", actor=ALICE))
            assert decision.state is not None
            run_ids.append(decision.state.run.id)

        def finished() -> bool:
            return all(s.run.status in RUN_TERMINAL for s in svc.store.list_runs("fanout", RUNS))

        wait_until(finished, timeout=120, interval=0.2, what="all runs to finish")
    finally:
        for server in servers:
            server.stop()

    states = svc.store.list_runs("fanout", RUNS)
    failures = [s.run.reason for s in states if s.run.status is not RunStatus.SUCCEEDED]
    assert failures == []
    executions = Counter(line.split()[0] for line in ledger.read_text().splitlines())
    expected = {job.id for s in states for job in s.jobs}
    assert set(executions) == expected and len(expected) == RUNS * 6
    assert max(executions.values()) == 1, executions.most_common(3)
    runners = {e.data.get("runner") for e in svc.store.events_after(0, 10_000) if e.name == "job.running"}
    assert runners == {"engine-0", "engine-1"}  # both engines did part of the work


def test_a_dead_runners_job_is_declared_lost_once_by_the_survivors_and_retried(
    pg_url: str, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    """The server holding a job is SIGKILLed (its job process dies with it); two other replicas
    see the lease expire: exactly one of them declares the job lost, and it runs again once."""
    doomed = Server(tmp_path, pg_url, runner="doomed", capacity=1)
    survivors = [Server(tmp_path, pg_url, runner=f"survivor-{i}", capacity=1) for i in range(2)]
    try:
        slow = stalls_first_attempt(tmp_path, "attempts")
        doomed.pipeline("orphan", one_job("orphan", slow, stage="deploy", job="slow", retries=1))
        doomed.start()
        svc = make_service(pg_url)
        decision = svc.handle(TriggerRun(pipeline="orphan", actor=ALICE))
        assert decision.state is not None
        run_id = decision.state.run.id
        wait_until(lambda: (tmp_path / "slow.pid").exists(), what="the first attempt to start")
        job_pid = int((tmp_path / "slow.pid").read_text())
        for server in survivors:
            server.start()
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        wait_until(lambda: not alive(job_pid), timeout=5, what="the job process to die with its server")

        def done() -> bool:
            state = svc.find_run(run_id)
            return state is not None and state.run.status in RUN_TERMINAL

        wait_until(done, timeout=30, interval=0.1, what="the run to finish after the lease expired")
    finally:
        for server in (doomed, *survivors):
            server.stop()

    state = svc.find_run(run_id)
    assert state is not None and state.run.status is RunStatus.SUCCEEDED, state and state.run.reason
    lost = [e for e in svc.store.events_after(0, 1000, run_id) if e.name == "job.lost"]
    assert len(lost) == 1, lost
    assert lost[0].data["reason"] == "lost: runner doomed stopped renewing its lease"
    assert (tmp_path / "attempts").read_text() == "1\n2\n"
    assert state.jobs[0].runner in ("survivor-0", "survivor-1")
