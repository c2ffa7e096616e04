"""Bad timing and bad luck: a slow or absent database, shutdowns at awkward moments, cancels from
another process. Faults are injected by wrapping the real store and service calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc

from bot.bootstrap import Shipyard
from core.commands import CancelRun, Command, CompleteJob
from core.runtime.claims import ClaimJobs
from core.runtime.service import Outcomes, Service, Then
from core.states import JobStatus, RunStatus
from tests.engine.conftest import trigger, wait_for
from tests.factory import QUICK_LEASE, make_shipyard
from tests.helpers import BOB, alive, written
from tests.pipelines import one_build, one_job

#: one job that prints a line and succeeds
SAYS_HI = one_job("p", '"echo hi"', stage="deploy", job="prod")


def yard_for(url: str, tmp: Path, pipeline: str, **overrides: Any) -> Shipyard:
    options = {**QUICK_LEASE, "runner_name": "r1", **overrides}
    return make_shipyard(url, tmp, {"p": pipeline}, migrate=False, **options)


async def finish(url: str, tmp: Path, run_id: str) -> Any:
    """Start a fresh server on the same database and let it finish the run."""
    shipyard = yard_for(url, tmp, (tmp / "pipelines" / "p.yml").read_text())
    await shipyard.start()
    try:
        return await wait_for(shipyard, run_id)
    finally:
        await shipyard.stop()


async def test_a_job_that_finished_is_reported_finished_even_if_the_server_stops_meanwhile(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "deploys"
    shipyard = yard_for(
        sqlite_url,
        tmp_path,
        one_job("p", f'"echo deployed >> {ledger}; echo done"', stage="deploy", job="prod"),
    )
    append_log = shipyard.store.append_log
    slowed: list[str] = []

    def slow_append_log(*args: Any) -> bool:  # the database is busy: the last log chunk takes a while
        slowed.append(args[0])
        time.sleep(0.5)
        return append_log(*args)

    monkeypatch.setattr(shipyard.store, "append_log", slow_append_log, raising=True)
    await shipyard.start()
    run = await trigger(shipyard, "p")
    while not ledger.exists():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the process exited 0; its output is on its way to the database
    await shipyard.stop()  # SIGTERM now
    assert slowed  # the runner's log went through the slow store
    done = await finish(sqlite_url, tmp_path, run.run.id)
    assert done.run.status is RunStatus.SUCCEEDED
    assert ledger.read_text() == "deployed\n"  # deployed once, not again after the restart


async def test_a_success_survives_a_database_outage_while_it_is_reported(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipyard = yard_for(sqlite_url, tmp_path, SAYS_HI)
    commit = shipyard.service.commit
    outage: list[float] = []
    faults: list[int] = []

    def flaky(
        commands: Sequence[Command], claims: Sequence[ClaimJobs], thens: Sequence[Then | None]
    ) -> Outcomes:
        if any(isinstance(c, CompleteJob) for c in commands):
            outage[:] = outage or [time.monotonic() + 3.5]  # longer than the 3 s lease
            if time.monotonic() < outage[0]:
                faults.append(len(commands))
                raise sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return commit(commands, claims, thens)

    # the orchestrator's group commit is the one way a runner's report reaches the database
    monkeypatch.setattr(shipyard.service, "commit", flaky, raising=True)
    await shipyard.start()
    try:
        run = await trigger(shipyard, "p")
        state = await wait_for(shipyard, run.run.id)
    finally:
        await shipyard.stop()
    assert len(faults) >= 2  # the report failed, and was tried again during the outage
    assert state.run.status is RunStatus.SUCCEEDED, state.run.reason
    assert state.jobs[0].failures == 0  # never declared lost: its lease was kept alive


async def test_a_claim_in_flight_at_shutdown_is_handed_back_not_lost(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipyard = yard_for(sqlite_url, tmp_path, SAYS_HI)
    claimed = threading.Event()
    commit = shipyard.service.commit

    def slow_commit(
        commands: Sequence[Command], claims: Sequence[ClaimJobs], thens: Sequence[Then | None]
    ) -> Outcomes:
        outcomes = commit(commands, claims, thens)  # committed...
        if any(isinstance(taken, list) and taken for taken in outcomes[1]):
            claimed.set()
            time.sleep(0.3)  # ...and the answer is still on its way to the runner
        return outcomes

    # runners' claims ride along with the orchestrator's group commit
    monkeypatch.setattr(shipyard.service, "commit", slow_commit, raising=True)
    await shipyard.start()
    run = await trigger(shipyard, "p")
    assert await asyncio.to_thread(claimed.wait, 5)  # a claim is in flight...
    await shipyard.stop()  # ...when the server stops
    job = yard_for(sqlite_url, tmp_path, one_job("p"))
    after = job.service.find_run(run.run.id)
    job.store.dispose()
    assert after is not None and after.jobs[0].status in (JobStatus.QUEUED, JobStatus.SUCCEEDED)
    done = await finish(sqlite_url, tmp_path, run.run.id)
    assert done.run.status is RunStatus.SUCCEEDED and done.jobs[0].failures == 0


async def test_a_cancel_from_another_process_stops_the_job_within_a_poll(
    sqlite_url: str, tmp_path: Path, make_service: Any
) -> None:
    marker, pidfile = tmp_path / "deployed", tmp_path / "job.pid"
    shipyard = yard_for(
        sqlite_url,
        tmp_path,
        one_job("p", f'"echo $$ > {pidfile}; sleep 2; touch {marker}"', stage="prod", job="deploy"),
        poll_interval=0.1,
        lease_seconds=30.0,
    )
    await shipyard.start()
    try:
        run = await trigger(shipyard, "p")
        await wait_for(
            shipyard, run.run.id, lambda s: s.jobs[0].status is JobStatus.RUNNING and written(pidfile)
        )
        pid = int(pidfile.read_text())
        cli: Service = make_service(sqlite_url)  # e.g. `shipyard cancel` in a terminal
        canceled = await asyncio.to_thread(cli.handle, CancelRun(run_id=run.run.ref, actor=BOB))
        assert canceled.accepted
        started = asyncio.get_running_loop().time()
        while alive(pid) and asyncio.get_running_loop().time() - started < 1.5:  # well before the 2 s
            await asyncio.sleep(0.02)
        assert not alive(pid), "the canceled job was still running 1.5 s later"
    finally:
        await shipyard.stop()
    assert not marker.exists(), "the canceled deploy ran to the end"


async def test_output_written_while_the_database_is_busy_is_all_stored(
    sqlite_url: str, tmp_path: Path
) -> None:
    shipyard = yard_for(
        sqlite_url,
        tmp_path,
        one_build("p", '"echo first; sleep 1.5; echo second"'),
    )
    await shipyard.start()
    try:
        run = await trigger(shipyard, "p")
        await asyncio.sleep(0.7)
        busy = asyncio.ensure_future(shipyard.orchestrator.db(time.sleep, 1.5))  # a long transaction
        state = await wait_for(shipyard, run.run.id)
        await busy
        log = "".join(c.text for c in shipyard.store.read_log(state.jobs[0].id))
    finally:
        await shipyard.stop()
    assert state.run.status is RunStatus.SUCCEEDED
    assert log == "first\nsecond\n"
