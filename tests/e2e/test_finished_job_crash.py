"""A server killed after a job ended and before its result was committed: the job is reported
as it ended when the server comes back, never run again; and when another replica declared it
lost and ran it again meanwhile, the run says that both attempts ran.

The window is held open with the database itself: the test takes the lock the report's commit
needs (SQLite's write lock, or the run's row on PostgreSQL), waits for the job to end, kills the
server, and lets go."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.commands import TriggerRun
from core.runtime.service import Service
from core.states import RUN_TERMINAL, JobStatus, RunStatus
from tests.e2e.server import Server, wait_until
from tests.helpers import ALICE
from tests.pipelines import one_job

pytestmark = pytest.mark.slow
TOKEN = "crash-admin-token"


def _ledgered(ledger: Path) -> str:
    """A deploy job that writes a ledger line when it starts and when it finishes."""
    return f'"echo start $SHIPYARD_ATTEMPT >> {ledger}; sleep 0.3; echo done $SHIPYARD_ATTEMPT >> {ledger}"'


@contextmanager
def _commits_held(url: str, run_id: str) -> Iterator[None]:
    """Hold what the server's next commit on ``run_id`` needs, until the block ends."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT id FROM run WHERE id = :id FOR UPDATE"), {"id": run_id})
            yield
    finally:
        engine.dispose()


def _lines(ledger: Path) -> list[str]:
    return ledger.read_text().splitlines() if ledger.exists() else []


def _kill_after_the_job_ends(server: Server, url: str, run_id: str, ledger: Path, attempt: int = 1) -> None:
    wait_until(lambda: f"start {attempt}" in _lines(ledger), what="the job to start")
    with _commits_held(url, run_id):
        wait_until(lambda: f"done {attempt}" in _lines(ledger), what="the job to finish")
        record = server.root / "work" / "runs" / ".runners"
        wait_until(
            lambda: list(record.glob(f"*/{run_id}~*~{attempt}~*")), what="the job's end to be recorded"
        )
        server.signal(signal.SIGKILL)
        server.wait()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _trigger(svc: Service) -> str:
    decision = svc.handle(TriggerRun(pipeline="deploys", actor=ALICE))
    assert decision.state is not None
    return decision.state.run.id


def test_a_job_that_finished_before_its_server_died_is_reported_not_run_again(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, servers: list[Server]
) -> None:
    ledger = tmp_path / "ledger"
    first = Server(tmp_path, db_url, runner="solo")
    first.pipeline(
        "deploys", one_job("deploys", _ledgered(ledger), stage="production", job="deploy", retries=1)
    )
    servers.append(first)
    first.start()
    svc = make_service(db_url)
    run_id = _trigger(svc)
    _kill_after_the_job_ends(first, db_url, run_id, ledger)
    state = svc.find_run(run_id)
    assert state is not None and state.jobs[0].status is JobStatus.RUNNING  # (the report was lost)
    lease = state.jobs[0].lease_expires_at
    assert lease is not None
    # it comes back after its lease expired (a slow start): what it recorded still comes first
    wait_until(lambda: svc.clock() > lease, what="the lease to expire", timeout=10)

    again = Server(tmp_path, db_url, runner="solo")
    servers.append(again)
    again.start()
    wait_until(
        lambda: (s := svc.find_run(run_id)) is not None and s.run.status in RUN_TERMINAL, what="the run"
    )

    state = svc.find_run(run_id)
    assert state is not None and state.run.status is RunStatus.SUCCEEDED, state and state.run.reason
    job = state.jobs[0]
    assert (job.status, job.attempt, job.lost) == (JobStatus.SUCCEEDED, 1, ())
    assert _lines(ledger) == ["start 1", "done 1"]  # it ran once
    assert not [e for e in svc.store.events_after(0, 1000, run_id) if e.name == "job.lost"]
    log = again.log.read_text()
    assert f"run {run_id} job {job.id} attempt 1 finished (exit 0) before runner solo restarted" in log
    assert "Traceback" not in log


@pytest.mark.postgres
def test_a_late_result_of_an_attempt_another_replica_declared_lost_is_written_to_the_run(
    pg_url: str, make_service: Callable[..., Service], tmp_path: Path, servers: list[Server]
) -> None:
    ledger = tmp_path / "ledger"
    doomed = Server(tmp_path, pg_url, runner="doomed", capacity=1)
    doomed.pipeline(
        "deploys", one_job("deploys", _ledgered(ledger), stage="production", job="deploy", retries=1)
    )
    servers.append(doomed)
    doomed.start()
    svc = make_service(pg_url)
    run_id = _trigger(svc)
    _kill_after_the_job_ends(doomed, pg_url, run_id, ledger)

    survivor = Server(tmp_path, pg_url, runner="survivor", capacity=1)
    servers.append(survivor)
    survivor.start()
    wait_until(
        lambda: (s := svc.find_run(run_id)) is not None and s.run.status in RUN_TERMINAL, what="the retry"
    )
    assert _lines(ledger) == ["start 1", "done 1", "start 2", "done 2"]  # at least once: both ran
    assert "declared lost: runner doomed stopped renewing its lease" in survivor.log.read_text()

    back = Server(tmp_path, pg_url, runner="doomed", capacity=1)
    back.env["SHIPYARD_ADMIN_TOKEN"] = TOKEN
    servers.append(back)
    back.start()
    late = wait_until(
        lambda: [e for e in svc.store.events_after(0, 1000, run_id) if e.name == "job.late_result"],
        what="the late result on the run",
    )
    assert (late[0].data["attempt"], late[0].data["outcome"], late[0].data["exit_code"]) == (
        1,
        "succeeded",
        0,
    )
    assert late[0].data["latest_attempt"] == 2 and late[0].data["runner"] == "doomed"
    state = svc.find_run(run_id)
    assert state is not None and state.run.status is RunStatus.SUCCEEDED
    (lost,) = state.jobs[0].lost
    assert (lost.attempt, lost.runner, lost.late_outcome, lost.late_exit_code) == (
        1,
        "doomed",
        "succeeded",
        0,
    )
    audit = [e for e in svc.store.audit_entries() if e.action == "report_late_result"]
    assert [(e.actor, e.outcome) for e in audit] == [("runner", "accepted")]

    status, body = back.get(f"/api/v1/runs/{run_id}", token=TOKEN)
    assert status == 200
    (job,) = [j for s in json.loads(body)["stages"] for j in s["jobs"]]
    assert job["lost_attempts"] == [
        {
            "attempt": 1,
            "runner": "doomed",
            "reason": "lost: runner doomed stopped renewing its lease",
            "late_outcome": "succeeded",
            "late_exit_code": 0,
        }
    ]
    log = back.log.read_text()
    assert f"late result: run {run_id} job {job['id']} attempt 1, declared lost, had finished (exit 0)" in log
