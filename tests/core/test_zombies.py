"""Which unfinished runs count as stuck, and what the report says they wait for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.model import RunState, evolve
from core.states import GateStatus, JobStatus, RunStatus
from core.zombies import diagnose
from tests.core.test_engine import WEB, started

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOUR = 3600.0


def _with_job(state: RunState, status: JobStatus, lease: datetime | None = None) -> RunState:
    job = evolve(state.jobs[0], status=status, lease_expires_at=lease)
    return evolve(state, jobs=(job, *state.jobs[1:]))


def test_a_run_that_changed_within_the_limit_is_not_stuck() -> None:
    state = started(WEB)
    assert diagnose(state, NOW - timedelta(minutes=59), NOW, HOUR) is None


def test_a_queued_job_nobody_claims_makes_the_run_stuck_and_says_so() -> None:
    state = started(WEB)
    stuck = diagnose(state, NOW - timedelta(hours=2), NOW, HOUR)
    assert stuck is not None
    assert stuck.reason == "job build/compile queued for 2h: no runner has claimed it"
    assert stuck.since == NOW - timedelta(hours=2)


def test_a_job_whose_runner_still_heartbeats_is_slow_not_stuck() -> None:
    state = _with_job(started(WEB), JobStatus.RUNNING, lease=NOW + timedelta(seconds=20))
    assert diagnose(state, NOW - timedelta(hours=5), NOW, HOUR) is None
    expired = _with_job(started(WEB), JobStatus.RUNNING, lease=NOW - timedelta(seconds=1))
    assert diagnose(expired, NOW - timedelta(hours=5), NOW, HOUR) is not None


def test_a_forgotten_pause_and_a_gate_without_timeout_are_stuck_but_a_gate_with_one_is_not() -> None:
    paused = evolve(
        started(WEB), run=evolve(started(WEB).run, status=RunStatus.PAUSED, reason="paused by alice")
    )
    stuck = diagnose(paused, NOW - timedelta(hours=3), NOW, HOUR)
    assert stuck is not None and stuck.reason == "paused for 3h (paused by alice)"

    state = started(WEB)
    gate = evolve(state.gates[0], status=GateStatus.OPEN, deadline=None)
    waiting = evolve(state, run=evolve(state.run, status=RunStatus.WAITING), gates=(gate,))
    stuck = diagnose(waiting, NOW - timedelta(hours=3), NOW, HOUR)
    assert stuck is not None and stuck.reason == "waiting 3h for approval at production, with no timeout"

    timed = evolve(waiting, gates=(evolve(gate, deadline=NOW + timedelta(hours=1)),))
    assert diagnose(timed, NOW - timedelta(hours=3), NOW, HOUR) is None


def test_finished_runs_are_never_stuck() -> None:
    state = started(WEB)
    done = evolve(state, run=evolve(state.run, status=RunStatus.CANCELED))
    assert diagnose(done, NOW - timedelta(days=30), NOW, HOUR) is None
