"""The functional core: given a run's state, a command and the time, decide what changes.

``needs`` first names what a command may need to know beyond the run (the environments it
may enter next); the shell reads exactly that into a ``Known`` of plain values. ``decide``
then never reads a clock, a database or a random source; each command has one handler
(``HANDLERS``). It returns a ``Decision``: either a refusal with a reason, or the list of
conditional changes (each naming the status the row must still have) plus the events to
append. The shell (``core.runtime.service``) applies the changes in one transaction, or
retries the command if another writer got there first.

After every accepted command ``_advance`` derives the next transitions from the state alone:
finish a stage whose jobs are done, open the next gate, start the next stage, finish the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from core import canary
from core.admission import Known, admit
from core.commands import (
    AbortRollout,
    AdmitRun,
    AdvanceRollout,
    ApproveGate,
    CancelRun,
    CompleteJob,
    ConfirmWeights,
    EndStepAnalysis,
    EndVerification,
    ExpireLease,
    FailRun,
    InterruptJob,
    MoveToFront,
    NoteRouterWait,
    PauseRun,
    PromoteRollout,
    RecordGateCheck,
    RejectGate,
    ReportLateResult,
    ResumeRun,
    RunCommand,
    TimeoutGate,
    TimeoutRun,
)
from core.duration import format_duration
from core.errors import CommandRefused, IllegalTransition, NotFound
from core.events import Event
from core.model import Actor, Approval, Entity, Gate, Job, LostAttempt, Run, RunState, Stage, evolve
from core.states import (
    JOB_FAILURES,
    RUN_TERMINAL,
    STAGE_DONE,
    GateStatus,
    JobStatus,
    RunStatus,
    StageStatus,
    check,
)


class Outcome(StrEnum):
    ACCEPTED = "accepted"  #: the changes were (or are to be) applied
    REJECTED = "rejected"  #: nothing changed; ``reason`` says why


@dataclass(frozen=True, slots=True)
class Change:
    """One conditional update: set ``values`` on the row if its status is still ``expect``."""

    kind: str
    id: str
    expect: str
    values: dict[str, Any]
    #: for jobs, the fencing token the row must still carry
    expect_attempt: int | None = None
    #: further columns that must still hold the values read (e.g. a lease being expired)
    guard: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str = ""
    state: RunState | None = None
    changes: tuple[Change, ...] = ()
    events: tuple[Event, ...] = ()
    #: the state is a new run to insert rather than changes to an existing one
    created: bool = False
    #: an idempotent replay: the run already existed and nothing changed
    duplicate: bool = False
    #: version the run row must still have for the changes to apply; for a new run that retries
    #: another, the version the retried run must still have (a retry elsewhere moved it)
    expect_version: int | None = None
    #: for a refusal, what kind (``CommandRefused.kind``): conflict, not_found, forbidden, invalid
    refusal: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED

    @property
    def jobs_to_stop(self) -> tuple[tuple[str, int], ...]:
        """(job, attempt) pairs that were running and must now be killed by their runner."""
        return tuple(
            (e.subject_id, int(e.data["attempt"]))  # type: ignore[call-overload]
            for e in self.events
            if e.subject == "job" and e.from_status == JobStatus.RUNNING and e.to_status == JobStatus.CANCELED
        )


def reject(reason: str, state: RunState | None = None, kind: str = "conflict") -> Decision:
    return Decision(Outcome.REJECTED, reason=reason, state=state, refusal=kind)


def _kind(entity: Entity) -> str:
    return type(entity).__name__.lower()


class _Plan:
    """A working copy of one run that records each change as it is made."""

    def __init__(self, state: RunState, now: datetime, known: Known | None = None) -> None:
        self.now = now
        #: what stands between this run and the environments it may enter (None: nothing, as in
        #: unit tests)
        self.known = known
        self.base = state
        self.run = state.run
        self.definition = state.definition
        self.stages = list(state.stages)
        self.jobs = list(state.jobs)
        self.gates = list(state.gates)
        self.changes: dict[tuple[str, str], Change] = {}
        self.events: list[Event] = []

    # -- recording ---------------------------------------------------------------------
    def move(self, entity: Any, to: Any, **values: Any) -> Any:
        """Transition ``entity`` to status ``to``, checked against its table."""
        kind = _kind(entity)
        check(kind, entity.id, entity.status, to)
        new = self._put(entity, {"status": to, **values})
        data: dict[str, Any] = {k: v for k, v in values.items() if k in _EVENT_FIELDS}
        if isinstance(entity, Stage | Job | Gate):
            data["stage"] = self.definition.stages[_stage_index(entity)].name
        if isinstance(entity, Job):
            data["job"] = entity.name
            data["attempt"] = new.attempt
        self.events.append(
            Event(
                name=f"{kind}.{to}",
                run_id=self.run.id,
                subject=kind,
                subject_id=entity.id,
                at=self.now,
                from_status=str(entity.status),
                to_status=str(to),
                data=data,
            )
        )
        return new

    def set(self, entity: Any, **values: Any) -> Any:
        """Change fields without a transition (still conditional on the current status)."""
        return self._put(entity, values)

    def guard(self, entity: Entity, **expected: Any) -> None:
        """Make the change to ``entity`` conditional on more columns than its status."""
        self.changes[(_kind(entity), entity.id)].guard.update(expected)

    def note(self, name: str, entity: Entity, **data: Any) -> None:
        self.events.append(
            Event(
                name=name,
                run_id=self.run.id,
                subject=_kind(entity),
                subject_id=entity.id,
                at=self.now,
                data=data,
            )
        )

    def _put(self, entity: Any, values: dict[str, Any]) -> Any:
        new = evolve(entity, **values)
        key = (_kind(entity), entity.id)
        previous = self.changes.get(key)
        if previous is None:
            attempt = entity.attempt if isinstance(entity, Job) else None
            self.changes[key] = Change(key[0], entity.id, str(entity.status), dict(values), attempt)
        else:
            previous.values.update(values)
        if isinstance(new, Run):
            self.run = new
        else:
            items: list[Any] = (
                self.stages if isinstance(new, Stage) else self.jobs if isinstance(new, Job) else self.gates
            )
            items[next(i for i, e in enumerate(items) if e.id == new.id)] = new
        return new

    # -- reading -----------------------------------------------------------------------
    def jobs_of(self, stage: Stage) -> list[Job]:
        return [j for j in self.jobs if j.stage_index == stage.index]

    def gate_of(self, stage: Stage) -> Gate | None:
        return next((g for g in self.gates if g.stage_index == stage.index), None)

    def state(self) -> RunState:
        return RunState(self.run, tuple(self.stages), tuple(self.jobs), tuple(self.gates), self.definition)

    def accept(self, *, created: bool = False, **extra: Any) -> Decision:
        return Decision(
            Outcome.ACCEPTED,
            state=self.state(),
            changes=() if created else tuple(self.changes.values()),
            events=tuple(self.events),
            created=created,
            expect_version=None if created else self.base.run.version,
            extra=extra,
        )


#: how a lost job's reason ends when its lease ran out (rather than its server restarting)
LEASE_EXPIRED = "stopped renewing its lease"

_EVENT_FIELDS = frozenset({"reason", "exit_code", "outputs", "warnings", "decided_by"})


def _stage_index(entity: Stage | Job | Gate) -> int:
    return entity.index if isinstance(entity, Stage) else entity.stage_index


# -- entry points ------------------------------------------------------------------------


def start(
    fresh: RunState,
    now: datetime,
    *,
    reuse: RunState | None = None,
    ignored_by: str | None = None,
    known: Known | None = None,
) -> Decision:
    """Lay out a new run and take its first steps. ``reuse``: a run being retried, whose
    finished stages are carried over (skipped here, their outputs kept) instead of run again;
    with ``ignored_by``, the stage whose jobs failed is carried over too (it raises
    ``CommandRefused`` if the run failed for another reason, such as a rejected gate)."""
    plan = _Plan(fresh, now, known)
    plan.note(
        "run.created",
        fresh.run,
        pipeline=fresh.run.pipeline,
        version=fresh.run.pipeline_version,
        parameters=dict(fresh.run.parameters),
        triggered_by=fresh.run.triggered_by,
        channel=fresh.run.trigger_channel,
        retry_of=fresh.run.retry_of,
    )
    if reuse is not None:
        _carry_over(plan, reuse, ignored_by)
    timeout = fresh.definition.timeout
    deadline = now + timedelta(seconds=timeout) if timeout else None
    plan.move(plan.run, RunStatus.RUNNING, started_at=now, deadline=deadline)
    _advance(plan)
    started = plan.accept(created=True)
    return started if reuse is None else replace(started, expect_version=reuse.run.version)


def decide(state: RunState, command: RunCommand, now: datetime, known: Known | None = None) -> Decision:
    """Apply one command to one run. Pure: no I/O, no clock reads, no randomness. What the
    environments look like is ``known``, plain values the caller read beforehand (see ``needs``)."""
    plan = _Plan(state, now, known)
    try:
        HANDLERS[type(command)](plan, command)
        _advance(plan)
    except CommandRefused as exc:
        return reject(exc.message, state, exc.kind)
    except IllegalTransition as exc:
        return reject(exc.message, state)
    return plan.accept()


#: commands that only stop, refuse, reorder or annotate a run: none of them starts a stage
_STOPPING = (CancelRun, FailRun, TimeoutRun, PauseRun, RejectGate, MoveToFront, NoteRouterWait)


def needs(state: RunState, command: RunCommand) -> frozenset[str]:
    """The environments ``command`` may take the run into: the caller reads their views into
    the ``Known`` it hands to ``decide``, and only those (most commands need none)."""
    if isinstance(command, _STOPPING):
        return frozenset()
    reported = command.job_id if isinstance(command, CompleteJob | InterruptJob | ExpireLease) else None
    return _next_environments(state, reported, isinstance(command, EndVerification | ConfirmWeights))


def needs_to_start(
    fresh: RunState, reuse: RunState | None = None, ignored_by: str | None = None
) -> frozenset[str]:
    """``needs`` for ``start``: the environments the new run may enter once the stages it
    carries over from ``reuse`` are skipped."""
    plan = _Plan(fresh, fresh.run.created_at)
    if reuse is not None:
        try:
            _carry_over(plan, reuse, ignored_by)
        except CommandRefused:
            return frozenset()  # ``start`` refuses it too
    return _next_environments(plan.state(), None)


def _next_environments(state: RunState, reported: str | None, verified: bool = False) -> frozenset[str]:
    """Walk the stages not yet done, in order, as far as one decision can advance: past a
    running stage only if its jobs may all be done now (``reported`` is the job a command
    reports on), past a verifying one only if the command ends its verification (``verified``;
    likewise a rolling-out one, which only a router's confirmation ends),
    stopping at a gate that must open first or at a stage whose jobs must run."""
    found: set[str] = set()
    for stage in (s for s in state.stages if s.status not in STAGE_DONE):
        jobs = state.jobs_of(stage.index)
        if stage.status in (StageStatus.VERIFYING, StageStatus.ROLLING_OUT):
            if not verified:
                break
            continue
        if stage.status is StageStatus.RUNNING:
            if any(not j.is_done and j.id != reported for j in jobs):
                break
            continue
        if stage.status is StageStatus.PENDING and state.gate_of(stage.index) is not None:
            break
        if stage.environment is not None:
            found.add(stage.environment)
        if jobs:
            break
    return frozenset(found)


def claim(job: Job, runner: str, now: datetime, lease_s: float) -> Change:
    """A runner takes a queued job: the attempt number grows and becomes the fencing token."""
    check("job", job.id, job.status, JobStatus.RUNNING)
    values: dict[str, Any] = {
        "status": JobStatus.RUNNING,
        "attempt": job.attempt + 1,
        "runner": runner,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "started_at": now,
        "finished_at": None,
        "exit_code": None,
        "reason": "",
    }
    return Change("job", job.id, str(job.status), values, job.attempt)


def claimed(job: Job, stage: str) -> Event:
    """The event for a claim that won (``job`` as it now stands)."""
    assert job.started_at is not None
    return Event(
        name="job.running",
        run_id=job.run_id,
        subject="job",
        subject_id=job.id,
        at=job.started_at,
        from_status=JobStatus.QUEUED,
        to_status=JobStatus.RUNNING,
        data={"stage": stage, "job": job.name, "attempt": job.attempt, "runner": job.runner},
    )


# -- commands ----------------------------------------------------------------------------


def _timeout_run(plan: _Plan, command: TimeoutRun) -> None:
    run = plan.run
    _require_active(run, "time out")
    if run.deadline is None or run.deadline > plan.now:
        raise CommandRefused(f"{run.ref} has not reached its deadline")
    took = format_duration(plan.definition.timeout or 0)
    why = f"timed out: the run took longer than its timeout of {took}"
    if not canary.abort_instead(plan, "failed", why):
        _finish(plan, RunStatus.FAILED, why)


def _cancel_run(plan: _Plan, command: CancelRun) -> None:
    run = plan.run
    _require_active(run, "cancel")
    if command.only_if_queued and run.status is not RunStatus.QUEUED:
        raise CommandRefused(f"{run.ref} is {run.status}, no longer queued")
    why = f"canceled by {command.actor.name}" + (f": {command.reason}" if command.reason else "")
    if not canary.abort_instead(plan, "canceled", why):
        _finish(plan, RunStatus.CANCELED, why)


def _admit_run(plan: _Plan, command: AdmitRun) -> None:
    run = plan.run
    stage = next((s for s in plan.stages if s.status is StageStatus.QUEUED), None)
    if run.status is not RunStatus.QUEUED or stage is None:
        raise CommandRefused(f"{run.ref} is {run.status}, not queued for an environment")
    if _admitted(plan, stage):
        _start_stage(plan, stage)
    elif plan.run.status is RunStatus.QUEUED and plan.run.reason == run.reason:
        raise CommandRefused(f"{run.ref} still waits: {run.reason}")


def _move_to_front(plan: _Plan, command: MoveToFront) -> None:
    run = plan.run
    stage = next((s for s in plan.stages if s.status is StageStatus.QUEUED), None)
    if stage is None:
        raise CommandRefused(f"{run.ref} is {run.status}, not waiting in a queue")
    before = command.before or plan.now
    if stage.queued_at is not None and stage.queued_at <= before:
        raise CommandRefused(f"{run.ref} is already first in {stage.environment}'s queue")
    plan.set(stage, queued_at=before - timedelta(microseconds=1))
    plan.note("stage.moved_to_front", stage, by=command.actor.name, reason=command.reason)


def _fail_run(plan: _Plan, command: FailRun) -> None:
    _require_active(plan.run, "mark failed")
    why = f"marked failed by {command.actor.name}" + (f": {command.reason}" if command.reason else "")
    if not canary.abort_instead(plan, "failed", why):
        _finish(plan, RunStatus.FAILED, why)


def _pause_run(plan: _Plan, command: PauseRun) -> None:
    if command.rollout:
        canary.rolling(plan)  # (refused: the run has no rollout to pause)
    run = plan.run
    if run.status not in (RunStatus.RUNNING, RunStatus.WAITING):
        raise CommandRefused(f"{run.ref} is {run.status}; only running or waiting runs pause")
    plan.move(run, RunStatus.PAUSED, reason=f"paused by {command.actor.name}")
    canary.pause_clock(plan, paused=True)
    for job in [j for j in plan.jobs if j.status is JobStatus.QUEUED]:
        plan.move(job, JobStatus.PENDING, reason="run paused")


def _resume_run(plan: _Plan, command: ResumeRun) -> None:
    if command.rollout:
        canary.rolling(plan)
    run = plan.run
    if run.status is not RunStatus.PAUSED:
        raise CommandRefused(f"{run.ref} is {run.status}, not paused")
    plan.move(run, RunStatus.RUNNING, reason=f"resumed by {command.actor.name}")
    canary.pause_clock(plan, paused=False)


def _approve_gate(plan: _Plan, command: ApproveGate) -> None:
    _approve(plan, _open_gate(plan, command.gate, "manual"), command.actor, command.comment)


def _reject_gate(plan: _Plan, command: RejectGate) -> None:
    gate = _open_gate(plan, command.gate, "manual")
    why = f"rejected by {command.actor.name}" + (f": {command.reason}" if command.reason else "")
    plan.move(gate, GateStatus.REJECTED, decided_by=command.actor.name, decided_at=plan.now, reason=why)


def _complete_job(plan: _Plan, command: CompleteJob) -> None:
    job = _fenced(plan, command.job_id, command.attempt, command.runner)
    _complete(plan, job, command)


def _interrupt_job(plan: _Plan, command: InterruptJob) -> None:
    job = _fenced(plan, command.job_id, command.attempt, command.runner)
    job = plan.move(
        job,
        JobStatus.QUEUED,
        runner=None,
        lease_expires_at=None,
        queued_at=plan.now,
        reason=f"interrupted: runner {command.runner} shut down",
    )
    if plan.run.status is RunStatus.PAUSED:
        plan.move(job, JobStatus.PENDING, reason="run paused")


def _expire_lease(plan: _Plan, command: ExpireLease) -> None:
    job = _fenced(plan, command.job_id, command.attempt, None)
    if not command.force and job.lease_expires_at is not None and job.lease_expires_at > plan.now:
        raise CommandRefused(f"job {job.name}'s lease is still valid")
    why = "its server restarted" if command.force else LEASE_EXPIRED
    reason = f"lost: runner {job.runner} {why}"
    lost = (*job.lost, LostAttempt(job.attempt, job.runner, reason))
    _job_failed(plan, job, JobStatus.LOST, reason=reason, lost=lost)
    plan.guard(job, lease_expires_at=job.lease_expires_at)


def _report_late_result(plan: _Plan, command: ReportLateResult) -> None:
    """An attempt declared lost had finished after all: keep how it ended beside it, and say
    so in the run's events (the retry, or the run's failure, stands)."""
    job = next((j for j in plan.jobs if j.id == command.job_id), None)
    if job is None:
        raise NotFound(f"{plan.run.ref} has no job {command.job_id}")
    lost = next((a for a in job.lost if a.attempt == command.attempt), None)
    if lost is None or lost.late_outcome is not None:
        raise CommandRefused(
            f"job {job.name} attempt {command.attempt} was not declared lost, or its result is recorded"
        )
    if lost.runner != command.runner:  # (a runner reports only what it ran itself)
        raise CommandRefused(
            f"job {job.name} attempt {command.attempt} was held by {lost.runner}, not {command.runner}"
        )
    late = replace(lost, late_outcome=command.outcome, late_exit_code=command.exit_code)
    plan.set(job, lost=tuple(late if a is lost else a for a in job.lost))
    plan.note(
        "job.late_result",
        job,
        stage=plan.definition.stages[job.stage_index].name,
        job=job.name,
        attempt=command.attempt,
        runner=command.runner,
        outcome=command.outcome,
        exit_code=command.exit_code,
        latest_attempt=job.attempt,
    )


def _timeout_gate(plan: _Plan, command: TimeoutGate) -> None:
    gate = _open_gate(plan, command.gate, None)
    if gate.deadline is None or gate.deadline > plan.now:
        raise CommandRefused(f"gate {gate.stage_name} has not reached its deadline")
    waited = format_duration(gate.timeout_s or 0)
    if gate.on_timeout == "approve":
        status, why = GateStatus.APPROVED, f"nobody objected within {waited} (on_timeout: approve)"
    else:
        status, why = GateStatus.TIMED_OUT, f"nobody cleared it within {waited}"
    plan.move(gate, status, decided_at=plan.now, decided_by="timeout", reason=why)


def _record_gate_check(plan: _Plan, command: RecordGateCheck) -> None:
    gate = _open_gate(plan, command.gate, None)
    if gate.kind == "manual":
        raise CommandRefused(f"gate {gate.stage_name} is manual; people approve it")
    # an automated gate's check polls again; an external gate's callback is the verdict
    by = "check" if gate.kind == "automated" else command.actor.name
    if command.passed:
        plan.move(
            gate,
            GateStatus.APPROVED,
            decided_by=by,
            decided_at=plan.now,
            reason=command.detail or "check passed",
        )
    elif gate.kind == "external":
        why = command.detail or "the external check failed"
        plan.move(gate, GateStatus.REJECTED, decided_by=by, decided_at=plan.now, reason=why)
    elif gate.deadline is not None and gate.deadline <= plan.now:
        plan.move(
            gate,
            GateStatus.TIMED_OUT,
            decided_by="check",
            decided_at=plan.now,
            reason=f"check still failing after {format_duration(gate.timeout_s or 0)}"
            + (f": {command.detail}" if command.detail else ""),
        )
    else:
        plan.set(gate, next_check_at=plan.now + timedelta(seconds=gate.interval_s), reason=command.detail)


def _verifying_stage(plan: _Plan, command: EndVerification) -> Stage:
    """The stage ``command`` ends the verification of: the one it names, if that one still
    verifies (a verdict reached on one stage never ends another's), else the verifying one."""
    stage = next(
        (s for s in plan.stages if s.status is StageStatus.VERIFYING and command.stage in (None, s.index)),
        None,
    )
    if stage is not None:
        return stage
    if command.stage is None or not 0 <= command.stage < len(plan.stages):
        raise CommandRefused(f"{plan.run.ref} is {plan.run.status}: nothing is being verified")
    named = plan.stages[command.stage]
    raise CommandRefused(
        f"{plan.run.ref}: the verification of {named.environment or named.name} ended already "
        f"(the stage is {named.status})"
    )


def _end_verification(plan: _Plan, command: EndVerification) -> None:
    stage = _verifying_stage(plan, command)
    person = command.actor.channel != "system"
    who = f" by {command.actor.name}" if person else ""
    if command.verdict == "inconclusive":
        if stage.verify_until is None:  # (no deadline left: a person decides)
            raise CommandRefused(f"{plan.run.ref} already waits for an approver to decide its verification")
        why = f"verification of {stage.environment} inconclusive: {command.reason}; an approver decides"
        plan.set(stage, reason=why, verify_until=None)
        plan.set(plan.run, reason=why)
        plan.note("stage.verification_inconclusive", stage, stage=stage.name, reason=command.reason)
        return
    if command.verdict == "passed":
        why = f"verified{who}" + (f": {command.reason}" if command.reason else "")
        plan.move(stage, StageStatus.SUCCEEDED, finished_at=plan.now, reason=why)
        if plan.run.status is RunStatus.VERIFYING:
            plan.move(plan.run, RunStatus.RUNNING, reason="")
        return
    rollback = stage.verify_rollback if command.rollback is None else command.rollback
    why = f"verification of {stage.environment} failed{who}"
    why += f": {command.reason}" if command.reason else ""
    plan.note("stage.verification_failed", stage, stage=stage.name, reason=why, rollback=rollback)
    _finish(plan, RunStatus.FAILED, why, failed_stage=stage)


#: one handler per command: each checks that the command may apply and records its changes
HANDLERS: Final[Mapping[type[RunCommand], Callable[[_Plan, Any], None]]] = {
    TimeoutRun: _timeout_run,
    CancelRun: _cancel_run,
    AdmitRun: _admit_run,
    MoveToFront: _move_to_front,
    FailRun: _fail_run,
    PauseRun: _pause_run,
    ResumeRun: _resume_run,
    ApproveGate: _approve_gate,
    RejectGate: _reject_gate,
    CompleteJob: _complete_job,
    InterruptJob: _interrupt_job,
    ExpireLease: _expire_lease,
    ReportLateResult: _report_late_result,
    TimeoutGate: _timeout_gate,
    RecordGateCheck: _record_gate_check,
    EndVerification: _end_verification,
    ConfirmWeights: lambda plan, command: canary.confirm_weights(plan, command, _finish),
    AdvanceRollout: canary.advance_rollout,
    NoteRouterWait: canary.note_router_wait,
    EndStepAnalysis: canary.end_step_analysis,
    PromoteRollout: canary.promote_rollout,
    AbortRollout: canary.abort_rollout,
}


def _require_active(run: Run, verb: str) -> None:
    if run.status in RUN_TERMINAL:
        raise CommandRefused(f"cannot {verb} {run.ref}: it already {run.status}")


def _open_gate(plan: _Plan, name: str, kind: str | None) -> Gate:
    gate = next((g for g in plan.gates if name in (g.id, g.stage_name)), None)
    if gate is None:
        names = ", ".join(g.stage_name for g in plan.gates) or "none"
        raise NotFound(f"{plan.run.ref} has no gate {name!r} (gates: {names})")
    if kind is not None and gate.kind != kind:
        how = "it clears itself when its check passes" if gate.kind == "automated" else "people approve it"
        raise CommandRefused(f"gate {gate.stage_name} is {gate.kind}; {how}")
    if gate.status is GateStatus.PENDING:
        raise CommandRefused(f"gate {gate.stage_name} is not open yet: {plan.run.ref} has not reached it")
    if gate.status is not GateStatus.OPEN:
        raise CommandRefused(f"gate {gate.stage_name} is already {gate.status}")
    return gate


def _approve(plan: _Plan, gate: Gate, actor: Actor, comment: str) -> None:
    if any(a.actor == actor.name for a in gate.approvals):
        raise CommandRefused(f"{actor.name} has already approved gate {gate.stage_name}")
    approvals = (*gate.approvals, Approval(actor.name, plan.now, comment))
    plan.note(
        "gate.approval_added",
        gate,
        stage=gate.stage_name,
        by=actor.name,
        comment=comment,
        approvals=len(approvals),
        needed=gate.min_approvals,
    )
    if len(approvals) >= gate.min_approvals:
        plan.move(
            gate,
            GateStatus.APPROVED,
            approvals=approvals,
            decided_by=actor.name,
            decided_at=plan.now,
            reason="approved by " + ", ".join(a.actor for a in approvals),
        )
    else:
        plan.set(gate, approvals=approvals)


def _fenced(plan: _Plan, job_id: str, attempt: int, runner: str | None) -> Job:
    job = next((j for j in plan.jobs if j.id == job_id), None)
    if job is None:
        raise NotFound(f"{plan.run.ref} has no job {job_id}")
    if job.status is not JobStatus.RUNNING or job.attempt != attempt:
        raise CommandRefused(
            f"stale report for job {job.name} attempt {attempt}: "
            f"the job is now {job.status} at attempt {job.attempt}"
        )
    if runner is not None and job.runner != runner:
        raise CommandRefused(f"job {job.name} attempt {attempt} is held by {job.runner}, not {runner}")
    return job


def _complete(plan: _Plan, job: Job, report: CompleteJob) -> None:
    common: dict[str, Any] = {
        "exit_code": report.exit_code,
        "lease_expires_at": None,
        "finished_at": plan.now,
    }
    if report.outcome == "succeeded":
        plan.move(job, JobStatus.SUCCEEDED, outputs=dict(report.outputs), reason="", **common)
    elif report.outcome == "timed_out":
        _job_failed(
            plan,
            job,
            JobStatus.TIMED_OUT,
            reason=f"timed out after {format_duration(job.timeout_s)}",
            **common,
        )
    else:
        detail = f": {report.detail}" if report.detail else ""
        _job_failed(plan, job, JobStatus.FAILED, reason=f"exited with {report.exit_code}{detail}", **common)


def _job_failed(plan: _Plan, job: Job, status: JobStatus, **values: Any) -> None:
    values.setdefault("finished_at", plan.now)
    values.setdefault("lease_expires_at", None)
    job = plan.move(job, status, failures=job.failures + 1, **values)
    if job.has_retries_left:
        job = plan.move(
            job,
            JobStatus.QUEUED,
            queued_at=plan.now,
            runner=None,
            reason=f"retry {job.failures} of {job.retries} after: {job.reason}",
        )
        if plan.run.status is RunStatus.PAUSED:
            plan.move(job, JobStatus.PENDING, reason="run paused")


# -- progress ----------------------------------------------------------------------------


def _advance(plan: _Plan) -> None:
    """Take every step the state now allows, in order, until none is left."""
    while True:
        run = plan.run
        if run.status in RUN_TERMINAL or run.status in (RunStatus.PENDING, RunStatus.QUEUED):
            return
        stage = next((s for s in plan.stages if s.status not in STAGE_DONE), None)
        if stage is None:
            plan.move(
                run,
                RunStatus.SUCCEEDED,
                finished_at=plan.now,
                reason="succeeded with warnings" if run.warnings else "",
                warnings=run.warnings,
            )
            return
        if stage.status in _UNDER_WAY:
            if not _settle_under_way(plan, stage):
                return
            continue
        gate = plan.gate_of(stage)
        if gate is not None and gate.status in (GateStatus.REJECTED, GateStatus.TIMED_OUT):
            # a refused gate ends the run even while it is paused: nothing could resume it
            _finish(
                plan,
                RunStatus.FAILED,
                f"gate {gate.stage_name} {str(gate.status).replace('_', ' ')}: {gate.reason}",
                failed_stage=stage,
            )
            return
        if run.status is RunStatus.PAUSED:
            return
        if stage.status is StageStatus.PENDING and gate is not None:
            _open(plan, stage, gate)
            return
        if stage.status is StageStatus.WAITING and gate is not None and gate.status is GateStatus.OPEN:
            if run.status is RunStatus.RUNNING:
                plan.move(run, RunStatus.WAITING, reason=f"gate {gate.stage_name} is open")
            return
        if stage.environment is None or _admitted(plan, stage):
            _start_stage(plan, stage)
        return


#: stages that started and hold their environment until they finish
_UNDER_WAY = frozenset({StageStatus.RUNNING, StageStatus.ROLLING_OUT, StageStatus.VERIFYING})


def _settle_under_way(plan: _Plan, stage: Stage) -> bool:
    """Finish a stage under way if it may; True when it finished and the run goes on. A stage
    being verified waits for its verdict (``EndVerification``); a rollout for its router, its
    clock, its analysis or a person."""
    if stage.status is StageStatus.ROLLING_OUT:
        return canary.settle(plan, stage, _finish, _succeed)
    return stage.status is StageStatus.RUNNING and _settle_stage(plan, stage)


def _admitted(plan: _Plan, stage: Stage) -> bool:
    """May ``stage`` start in its environment now? If not, the stage and the run wait in
    ``queued`` (saying why), or the run fails when a freeze says so."""
    assert stage.environment is not None
    known = plan.known
    verdict = admit(known.view(stage.environment) if known is not None else None, plan.run)
    if verdict.outcome == "admit":
        return True
    if verdict.outcome == "fail":
        _finish(plan, RunStatus.FAILED, verdict.reason)
        return False
    if stage.status is not StageStatus.QUEUED:
        plan.move(stage, StageStatus.QUEUED, queued_at=plan.now, reason=verdict.reason)
        plan.move(plan.run, RunStatus.QUEUED, reason=verdict.reason)
    elif plan.run.reason != verdict.reason:
        plan.set(stage, reason=verdict.reason)
        plan.set(plan.run, reason=verdict.reason)
    return False


def _settle_stage(plan: _Plan, stage: Stage) -> bool:
    """Finish ``stage`` if its jobs allow it; True when it finished and the run may go on."""
    jobs = canary.phase_jobs(plan, stage, "")
    broken = [j for j in jobs if j.status in JOB_FAILURES and not j.allow_failure]
    if broken:
        job = broken[0]
        _finish(plan, RunStatus.FAILED, f"job {stage.name}/{job.name} {job.reason}", failed_stage=stage)
        return False
    if not all(j.is_done for j in jobs):
        if plan.run.status is RunStatus.RUNNING:
            for job in jobs:
                if job.status is JobStatus.PENDING:
                    plan.move(job, JobStatus.QUEUED, queued_at=plan.now, reason="")
        return False
    soft = [j for j in jobs if j.status in JOB_FAILURES]
    if soft:
        warnings = tuple(f"stage {stage.name}: job {j.name} {j.reason} (allowed to fail)" for j in soft)
        plan.set(plan.run, warnings=(*plan.run.warnings, *warnings))
        if stage.rollout is None:
            plan.move(stage, StageStatus.PARTIAL, finished_at=plan.now, reason="; ".join(warnings))
            return True
    if stage.rollout is not None:
        canary.enter(plan, stage)
        return False
    return _succeed(plan, stage)


def _succeed(plan: _Plan, stage: Stage) -> bool:
    """The stage's work is done: verify its environment if it says so, else it succeeded. True
    when the run may go on at once."""
    if stage.verify_for is not None:
        until = plan.now + timedelta(seconds=stage.verify_for)
        why = f"verifying {stage.environment} for {format_duration(stage.verify_for)}"
        plan.move(stage, StageStatus.VERIFYING, verify_until=until, reason=why)
        if plan.run.status is RunStatus.RUNNING:
            plan.move(plan.run, RunStatus.VERIFYING, reason=why)
        return False
    plan.move(stage, StageStatus.SUCCEEDED, finished_at=plan.now)
    return True


def _open(plan: _Plan, stage: Stage, gate: Gate) -> None:
    deadline = plan.now + timedelta(seconds=gate.timeout_s) if gate.timeout_s else None
    plan.move(
        gate,
        GateStatus.OPEN,
        opened_at=plan.now,
        deadline=deadline,
        next_check_at=plan.now if gate.kind == "automated" else None,
    )
    plan.move(stage, StageStatus.WAITING)
    if plan.run.status is RunStatus.RUNNING:
        plan.move(plan.run, RunStatus.WAITING, reason=f"gate {stage.name} is open")


def _start_stage(plan: _Plan, stage: Stage) -> None:
    if plan.run.status in (RunStatus.WAITING, RunStatus.QUEUED):
        plan.move(plan.run, RunStatus.RUNNING, reason="")
    verify: dict[str, Any] = {}
    view = None
    if stage.environment is not None and plan.known is not None:
        view = plan.known.view(stage.environment)
        verify = {"verify_for": view.verify_for, "verify_rollback": view.verify_rollback}
    rollout = canary.prepare(plan.definition.stages[stage.index], view)
    plan.move(stage, StageStatus.RUNNING, started_at=plan.now, reason="", rollout=rollout, **verify)
    for job in canary.phase_jobs(plan, stage, ""):
        plan.move(job, JobStatus.QUEUED, queued_at=plan.now)


#: stage statuses a run that ends cancels (they started, or wait in a gate or a queue)
_HOLDING = frozenset(
    {
        StageStatus.RUNNING,
        StageStatus.WAITING,
        StageStatus.QUEUED,
        StageStatus.VERIFYING,
        StageStatus.ROLLING_OUT,
    }
)


def _finish(plan: _Plan, status: RunStatus, reason: str, *, failed_stage: Stage | None = None) -> None:
    """End the run: stop what is active, skip what never started."""
    now = plan.now
    started = set()
    for stage in list(plan.stages):
        if stage.status in STAGE_DONE:
            continue
        if failed_stage is not None and stage.id == failed_stage.id:
            plan.move(stage, StageStatus.FAILED, finished_at=now, reason=reason)
            started.add(stage.index)
        elif stage.status in _HOLDING:
            plan.move(stage, StageStatus.CANCELED, finished_at=now, reason=reason)
            started.add(stage.index)
        else:
            plan.move(stage, StageStatus.SKIPPED)
    for job in list(plan.jobs):
        if job.status is JobStatus.PENDING and job.stage_index not in started:
            plan.move(job, JobStatus.SKIPPED)
        elif job.status in (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING):
            plan.move(job, JobStatus.CANCELED, finished_at=now, lease_expires_at=None, reason=reason)
    for gate in list(plan.gates):
        if gate.status is GateStatus.PENDING:
            plan.move(gate, GateStatus.SKIPPED)
        elif gate.status is GateStatus.OPEN:
            plan.move(gate, GateStatus.CANCELED, decided_at=now, reason=reason)
    plan.move(plan.run, status, finished_at=now, reason=reason, warnings=plan.run.warnings)


def _carry_over(plan: _Plan, old: RunState, ignored_by: str | None = None) -> None:
    """Mark the stages that finished well in ``old`` as skipped here, keeping their outputs;
    with ``ignored_by``, also the stage whose jobs failed (then stop)."""
    for old_stage in old.stages:
        reused = old_stage.status is StageStatus.SKIPPED and old_stage.reused_from is not None
        ignoring = False
        if old_stage.status not in (StageStatus.SUCCEEDED, StageStatus.PARTIAL) and not reused:
            if ignored_by is None:
                break
            failed = [j for j in old.jobs_of(old_stage.index) if j.status in JOB_FAILURES]
            if old_stage.status is not StageStatus.FAILED or not failed:
                raise CommandRefused(
                    f"{old.run.ref} did not fail in a job (stage {old_stage.name} is {old_stage.status}: "
                    f"{old_stage.reason or 'no reason'}); only job failures can be ignored"
                )
            names = ", ".join(j.name for j in failed)
            plan.set(
                plan.run,
                warnings=(
                    *plan.run.warnings,
                    f"stage {old_stage.name}: failure of {names} ignored by {ignored_by}",
                ),
            )
            ignoring = True
        # a chain of retries names the run that did the work, not the one retried last
        source = old_stage.reused_from if reused else old.run.id
        why = old_stage.reason if reused else f"reused from {old.run.ref}"
        stage = plan.stages[old_stage.index]
        if old_stage.status is StageStatus.PARTIAL:
            plan.set(plan.run, warnings=(*plan.run.warnings, f"{why}: {old_stage.reason}"))
        # same pipeline version, so the same jobs in the same order
        for job, done in zip(plan.jobs_of(stage), old.jobs_of(old_stage.index), strict=True):
            plan.move(job, JobStatus.SKIPPED, outputs=dict(done.outputs), reason=why, reused_from=source)
        gate = plan.gate_of(stage)
        if gate is not None:
            plan.move(gate, GateStatus.SKIPPED, reason=why)
        plan.move(stage, StageStatus.SKIPPED, reason=why, reused_from=source)
        if ignoring:
            break
