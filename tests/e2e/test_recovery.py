"""Kill the server at the worst moment and start it again: nothing is lost, nothing runs twice."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.commands import ApproveGate, TriggerRun
from core.runtime.service import Service
from core.states import GateStatus, JobStatus, RunStatus
from tests.e2e.server import Server, wait_until
from tests.helpers import ALICE, CAROL, alive, written
from tests.pipelines import one_deploy, stalls_first_attempt

pytestmark = pytest.mark.slow


def crashy(d: Path) -> str:
    """Each stage leaves a trace in ``d``: ``compile`` and ``final`` run once, the deploy stage's
    ``slow`` job stalls on its first attempt (see ``stalls_first_attempt``)."""
    return f"""
name: crashy
stages:
  - name: build
    jobs: [{{name: compile, run: "echo once >> {d}/compile"}}]
  - name: deploy
    jobs: [{{name: slow, retries: 1, run: {stalls_first_attempt(d, "slow")}}}]
  - name: production
    gate: {{approvers: [release-managers]}}
    jobs: [{{name: final, run: "echo once >> {d}/final"}}]
"""


@pytest.fixture
def server(tmp_path: Path, sqlite_url: str) -> Iterator[Callable[[], Server]]:
    servers: list[Server] = []

    def make() -> Server:
        s = Server(tmp_path, sqlite_url)
        s.pipeline("crashy", crashy(tmp_path))
        s.pipeline(
            "parked",
            one_deploy("parked", gate="{approvers: [release-managers], timeout: 1h}", environment=None),
        )
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def _state(svc: Service, run_id: str):  # type: ignore[no-untyped-def]
    state = svc.find_run(run_id)
    assert state is not None
    return state


def test_sigkill_at_any_moment_then_restart_resumes_every_run(
    server: Callable[[], Server], sqlite_url: str, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    first = server()
    first.start()
    svc = make_service(sqlite_url)
    crashy = svc.handle(TriggerRun(pipeline="crashy", actor=ALICE)).state
    parked = svc.handle(TriggerRun(pipeline="parked", actor=ALICE)).state
    assert crashy is not None and parked is not None
    wait_until(lambda: (tmp_path / "slow.pid").exists(), what="the slow job to start")
    job_pid = int((tmp_path / "slow.pid").read_text())

    first.signal(signal.SIGKILL)
    first.wait()
    wait_until(lambda: not alive(job_pid), timeout=5, what="the job process to die with its server")

    second = server()
    second.start()
    waiting = wait_until(
        lambda: (s := _state(svc, crashy.run.id)).run.status is RunStatus.WAITING and s,
        what="the crashed run to resume and reach its gate",
    )
    slow = waiting.jobs[1]
    assert (slow.status, slow.attempt, slow.failures) == (JobStatus.SUCCEEDED, 2, 1)
    lost = [e for e in svc.store.events_after(0, 1000, crashy.run.id) if e.name == "job.lost"]
    assert len(lost) == 1 and "restarted" in str(lost[0].data["reason"])
    assert (tmp_path / "compile").read_text() == "once\n"  # a succeeded job never runs again
    assert (tmp_path / "slow").read_text() == "1\n2\n"

    still = _state(svc, parked.run.id)
    assert still.run.status is RunStatus.WAITING and still.gates[0].status is GateStatus.OPEN

    for run_id, gate in ((crashy.run.id, "production"), (parked.run.id, "production")):
        assert svc.handle(ApproveGate(run_id=run_id, gate=gate, actor=CAROL)).accepted
    for run_id in (crashy.run.id, parked.run.id):
        wait_until(
            lambda r=run_id: _state(svc, r).run.status is RunStatus.SUCCEEDED, what=f"{run_id} to finish"
        )
    assert (tmp_path / "final").read_text() == "once\n"


def test_sigterm_hands_running_jobs_back_and_a_restart_finishes_them(
    server: Callable[[], Server], sqlite_url: str, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    first = server()
    first.start()
    assert first.get("/healthz") == (200, '{"status": "ok"}')
    svc = make_service(sqlite_url)
    run = svc.handle(TriggerRun(pipeline="crashy", actor=ALICE)).state
    assert run is not None
    wait_until(lambda: (tmp_path / "slow.pid").exists(), what="the slow job to start")
    job_pid = int((tmp_path / "slow.pid").read_text())

    first.signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    assert not alive(job_pid)
    interrupted = _state(svc, run.run.id).jobs[1]
    assert interrupted.status is JobStatus.QUEUED
    assert interrupted.failures == 0 and "interrupted" in interrupted.reason

    second = server()
    second.start()
    waiting = wait_until(
        lambda: (s := _state(svc, run.run.id)).run.status is RunStatus.WAITING and s, what="the run to resume"
    )
    assert waiting.jobs[1].status is JobStatus.SUCCEEDED and waiting.jobs[1].attempt == 2


def test_no_part_of_a_job_outlives_a_killed_server(
    server: Callable[[], Server], sqlite_url: str, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    """Not even a grandchild: otherwise it would deploy beside the retry on another replica."""
    marker, grandchild = tmp_path / "late-deploy", tmp_path / "grandchild.pid"
    first = server()
    first.pipeline(
        "nested",
        f"""
        name: nested
        stages:
          - name: s
            jobs: [{{name: j, run: "sh -c 'echo $$ > {grandchild}; sleep 2; touch {marker}'; echo done"}}]
    """,
    )
    first.start()
    svc = make_service(sqlite_url)
    assert svc.handle(TriggerRun(pipeline="nested", actor=ALICE)).accepted
    wait_until(lambda: written(grandchild), what="the job's grandchild to start")
    pid = int(grandchild.read_text())
    first.signal(signal.SIGKILL)
    first.wait()
    wait_until(lambda: not alive(pid), timeout=1.5, what="the grandchild to die with the server")
    assert not marker.exists()
