"""What the clock has made due, read in one transaction: the orchestrator turns each item
into a command (``Orchestrator.tick``).

Expired job leases, gate deadlines (manual and external gates), automated gate checks (each
claimed by moving its next check time, so one process runs it), runs past their timeout, and
the environments' queues: runs a newer one supersedes, and the heads that may now go. An idle
database answers with one probe (``Tx.in_flight``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.admission import admit
from core.assignment import Assignment, for_gate_check
from core.environments import Environments
from core.ports import Tx
from core.runtime.reading import view
from core.states import RUN_TERMINAL

#: how far down an environment's queue the timer looks for a run that may go (break glass)
QUEUE_SCAN = 20


@dataclass(frozen=True, slots=True)
class Timers:
    """What the clock has made due: the orchestrator turns each into a command."""

    expired: list[tuple[str, str, int]]  #: (run_id, job_id, attempt)
    gate_deadlines: list[tuple[str, str]]  #: (run_id, gate_id)
    gate_checks: list[Assignment]
    run_deadlines: list[str] = field(default_factory=list)  #: run ids past their timeout
    #: queued runs that may now enter their environment (the head of a free one's queue)
    admissions: list[str] = field(default_factory=list)
    #: (run id, ref of the newer run) for queued runs a newer one supersedes
    superseded: list[tuple[str, str]] = field(default_factory=list)
    #: nothing exists that time could make due (``Tx.in_flight``)
    idle: bool = False


def due(tx: Tx, environments: Environments, now: datetime, check_lease_s: float, limit: int) -> Timers:
    if not tx.in_flight():  # (an idle server asks once a second: one probe, not four queries)
        return Timers([], [], [], idle=True)
    expired = [(j.run_id, j.id, j.attempt) for j in tx.expired_leases(now, limit)]
    deadlines, checks = [], []
    for gate in tx.due_gates(now, limit):
        if gate.deadline is not None and gate.deadline <= now and gate.kind in ("manual", "external"):
            deadlines.append((gate.run_id, gate.id))
        elif gate.kind == "automated" and tx.claim_gate_check(
            gate, now + timedelta(seconds=gate.interval_s + check_lease_s)
        ):
            state = tx.load_run(gate.run_id)
            if state is not None and state.run.status not in RUN_TERMINAL:
                checks.append(for_gate_check(state, gate))
    admissions: list[str] = []
    superseded: list[tuple[str, str]] = []
    for env in tx.queued_environments():
        _, queued = tx.environment_queue(env)
        if environments.policy(env).concurrency == "supersede":
            queued = _supersede(queued, superseded)
        admissions += _admissions(tx, environments, env, queued, now)
    return Timers(expired, deadlines, checks, tx.overdue_runs(now, limit), admissions, superseded)


def _supersede(queued: list[tuple[str, str]], superseded: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """All but the newest queued run of each pipeline give way (added to ``superseded``); the
    rest of the queue is returned."""
    newest: dict[str, tuple[int, str]] = {}  # pipeline -> (number, ref) of its newest run
    for _, ref in queued:
        pipeline, number = ref.rsplit("#", 1)
        newest[pipeline] = max(newest.get(pipeline, (0, "")), (int(number), ref))
    for run_id, ref in queued:
        keep = newest[ref.rsplit("#", 1)[0]][1]
        if ref != keep:
            superseded.append((run_id, keep))
    gone = {r for r, _ in superseded}
    return [q for q in queued if q[0] not in gone]


def _admissions(
    tx: Tx, environments: Environments, env: str, queued: list[tuple[str, str]], now: datetime
) -> list[str]:
    """The head of ``env``'s queue if nothing is in its way (or one breaking the glass behind
    it), and every run whose reason to wait changed, so its message says so."""
    admissions: list[str] = []
    admitted = False
    for run_id, _ in queued[:QUEUE_SCAN]:
        state = tx.load_run(run_id)
        if state is None:
            continue
        verdict = admit(view(tx, environments, env, run_id, now), state.run)
        if verdict.outcome != "wait" and not admitted:
            admissions.append(run_id)  # (a freeze that fails runs fails it on admission)
            admitted = True
        elif verdict.outcome == "wait" and verdict.reason != state.run.reason:
            admissions.append(run_id)
    return admissions
