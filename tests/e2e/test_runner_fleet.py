"""A fleet of remote runners for real: three ``shipyard runner`` processes of capacity 4 share
200 jobs and each job that succeeded ran exactly once (on SQLite and PostgreSQL, and on
PostgreSQL with two server replicas, the runners split between them); a cancel through REST
kills a job's process on its remote runner within a second."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server, wait_until
from tests.e2e.test_remote_runner import (
    ADMIN,
    RemoteRunner,
    _call,
    _done,
    _run,
    _server,
    _tokens,
    _trigger,
    started,
)

__all__ = ["started"]  # (the fixture, for pytest)

JOBS_PER_RUN = 50
RUNS = 4  # 200 jobs


def _wide_pipeline(ledger: Path) -> str:
    """One stage of ``JOBS_PER_RUN`` jobs, each appending its id and attempt to ``ledger``."""
    step = f'echo "$SHIPYARD_JOB_ID $SHIPYARD_ATTEMPT" >> {ledger}'
    jobs = ", ".join(f"{{name: j{k}, run: '{step}'}}" for k in range(JOBS_PER_RUN))
    return f"name: wide\nstages:\n  - name: only\n    jobs: [{jobs}]\n"


def _ran_once(servers: list[Server], runs: list[str], ledger: Path) -> set[str]:
    """Asserts every run succeeded and each of its jobs appended exactly one line; returns the
    runners that ran them."""
    jobs = []
    for i, run_id in enumerate(runs):
        run = _done(servers[i % len(servers)], run_id, timeout=90)
        assert run["status"] == "succeeded", run["reason"]
        jobs += [j for s in run["stages"] for j in s["jobs"]]
    assert len(jobs) == RUNS * JOBS_PER_RUN
    lines = ledger.read_text().splitlines()
    executions = Counter(line.split()[0] for line in lines)
    assert len(lines) == RUNS * JOBS_PER_RUN, "a job ran twice or not at all"
    assert set(executions) == {j["id"] for j in jobs} and max(executions.values()) == 1
    assert all(j["attempt"] == 1 and j["status"] == "succeeded" for j in jobs)
    return {j["runner"] for j in jobs}


def test_three_runners_of_capacity_four_take_200_jobs_each_runs_once(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    ledger = tmp_path / "ledger.txt"
    server = _server(tmp_path, db_url, started, {"wide": _wide_pipeline(ledger)})
    tokens = _tokens(db_url, "eu-1", "eu-2", "eu-3")
    for name, token in tokens.items():
        started.append(RemoteRunner(tmp_path, server, name, token, capacity=4).start())
    began = time.monotonic()
    runs = [_trigger(server, "wide") for _ in range(RUNS)]
    runners = _ran_once([server], runs, ledger)
    took = time.monotonic() - began
    assert runners == {"eu-1", "eu-2", "eu-3"}  # each runner took a share; none ran in the server
    assert took < 30, f"200 jobs took {took:.1f}s"


@pytest.mark.postgres
def test_two_replicas_and_three_runners_on_postgresql_run_each_job_once(
    tmp_path: Path, pg_url: str, started: list[Any]
) -> None:
    ledger = tmp_path / "ledger.txt"
    first = _server(tmp_path, pg_url, started, {"wide": _wide_pipeline(ledger)})
    second = Server(tmp_path, pg_url, capacity=0, admin_token=ADMIN)  # (the same pipelines)
    started.append(second)
    second.start()
    tokens = _tokens(pg_url, "eu-1", "eu-2", "us-1")
    homes = {"eu-1": first, "eu-2": second, "us-1": second}  # runners attached to either replica
    for name, token in tokens.items():
        started.append(RemoteRunner(tmp_path, homes[name], name, token, capacity=4).start())
    servers = [first, second]
    runs = [_trigger(servers[i % 2], "wide") for i in range(RUNS)]  # triggered on both replicas
    assert _ran_once(servers, runs, ledger) == {"eu-1", "eu-2", "us-1"}
    for server in servers:  # both replicas answer for every runner
        status, body = _call(server, "GET", "/runners", ADMIN)
        assert status == 200 and {r["name"] for r in body["items"]} >= set(tokens), body


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (exited, or a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_cancel_reaches_a_remote_runner_within_a_second(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    pid_file = tmp_path / "pid"
    job = f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 60"
    pipeline = f"name: long\nstages:\n  - name: only\n    jobs: [{{name: wait, run: '{job}'}}]\n"
    server = _server(tmp_path, db_url, started, {"long": pipeline})
    # a slow poll: the cancel must not wait for the runner's next look at its leases
    runner = RemoteRunner(tmp_path, server, "eu-1", _tokens(db_url, "eu-1")["eu-1"], poll=5.0)
    started.append(runner.start())
    run_id = _trigger(server, "long")
    wait_until(pid_file.exists, 20, what="the job to start on eu-1")
    pid = int(pid_file.read_text())
    assert not _gone(pid)
    time.sleep(1.5)  # (the runner's lease check is waiting on the server)
    canceled = time.monotonic()
    status, body = _call(server, "POST", f"/runs/{run_id}/cancel", ADMIN, {"reason": "enough"})
    assert status == 200, body
    wait_until(lambda: _gone(pid), 5, 0.01, what="the canceled job's process to end")
    took = time.monotonic() - canceled
    assert took <= 1.0, f"the job's process ended {took:.2f}s after the cancel"
    run = _run(server, run_id)
    assert run["status"] == "canceled" and run["stages"][0]["jobs"][0]["runner"] == "eu-1"
    assert os.path.exists(runner.log) and "Traceback" not in runner.log.read_text()
