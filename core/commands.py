"""Commands: requests to change a run, from people (Slack, REST, CLI), the clock, or runners.

Every adapter builds one of these and hands it to ``Service.handle``; nothing else changes runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from core.model import SYSTEM, Actor


@dataclass(frozen=True, slots=True)
class ReportTarget:
    """Where a run started from chat reports in Slack: a channel, and a thread there (None: the
    channel itself). It travels on the command and is written in the run's own transaction, so
    no crash between the commit and the first post can lose it or send the message elsewhere."""

    channel: str
    thread: str | None = None


@dataclass(frozen=True, kw_only=True)
class TriggerRun:
    """Start a new run of the pipeline's current version."""

    pipeline: str
    actor: Actor
    parameters: Mapping[str, object] = field(default_factory=dict)
    source_revision: str | None = None
    #: when the revision's commit was made (None: unknown; never guessed)
    revision_time: datetime | None = None
    #: a second trigger with the same key returns the first run instead of starting another
    idempotency_key: str | None = None
    #: run this version of the pipeline instead of the latest
    pipeline_version: int | None = None
    #: the branch the revision comes from (environments may allow only some)
    branch: str | None = None
    #: ``promotion`` / ``rollback``: deploy ``artifact_id`` with only the stages of ``deploy_to``
    kind: str = "deploy"
    artifact_id: str | None = None
    deploy_to: str | None = None
    #: an admin's reason to push through freezes and required approvals
    break_glass: str | None = None
    #: who asks for the run through the actor (the owner of the trigger that fires it): they
    #: count as having asked for it, so they cannot approve its gates either
    requested_by: tuple[str, ...] = ()
    #: where the run reports in Slack (None: the pipeline's channel, else the default one)
    report_to: ReportTarget | None = None
    #: a schedule's fire: (schedule id, the version the clock read). The run starts only if the
    #: schedule is still that version, live and not paused, in the trigger's transaction: one
    #: deleted, paused or changed since it was read due never fires with what it was
    schedule: tuple[str, int] | None = None


@dataclass(frozen=True, kw_only=True)
class CancelRun:
    """Stop a run; running jobs are killed."""

    run_id: str
    actor: Actor
    reason: str = ""
    #: supersede: cancel it only if it still waits in a queue (another process may have let
    #: it in meanwhile, and a running deployment is not to be killed for being superseded)
    only_if_queued: bool = False


@dataclass(frozen=True, kw_only=True)
class FailRun:
    """Declare a run failed (a person's judgment, e.g. after a runner was lost mid-deploy):
    like cancel, but the run ends ``failed`` so history and rollback treat it as a failure."""

    run_id: str
    actor: Actor
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class PauseRun:
    """Let running jobs finish but start nothing new. ``rollout``: asked for as the pause of its
    rollout (``POST /runs/{run}/rollout/pause``, the rollout's Pause button): refused when the
    run has no rollout under way."""

    run_id: str
    actor: Actor
    rollout: bool = False


@dataclass(frozen=True, kw_only=True)
class ResumeRun:
    """Continue a paused run (``rollout``: as for ``PauseRun``)."""

    run_id: str
    actor: Actor
    rollout: bool = False


@dataclass(frozen=True, kw_only=True)
class ApproveGate:
    """Add one approval to an open manual gate (named by id or by its stage)."""

    run_id: str
    gate: str
    actor: Actor
    comment: str = ""


@dataclass(frozen=True, kw_only=True)
class RejectGate:
    """Refuse an open gate; the run fails."""

    run_id: str
    gate: str
    actor: Actor
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class RetryRun:
    """Start a new run of a failed or canceled run's pipeline version and parameters,
    from its first unfinished stage, reusing the outputs of the stages that succeeded."""

    run_id: str
    actor: Actor
    #: carry the failed stage over as if its failed jobs had been allowed to fail, and go on
    #: from the next stage ("ignore and continue", recorded as a warning naming who)
    ignore_failure: bool = False
    #: where the new run reports in Slack (None: the pipeline's channel, else the default one)
    report_to: ReportTarget | None = None


JobOutcome = Literal["succeeded", "failed", "timed_out"]


@dataclass(frozen=True, kw_only=True)
class CompleteJob:
    """A runner's report that a job attempt ended. Fenced by ``attempt``."""

    run_id: str
    job_id: str
    attempt: int
    runner: str
    outcome: JobOutcome
    exit_code: int | None
    outputs: Mapping[str, str] = field(default_factory=dict)
    detail: str = ""
    actor: Actor = field(default_factory=lambda: Actor("runner", "runner"))


@dataclass(frozen=True, kw_only=True)
class InterruptJob:
    """The runner stopped a job because its server is shutting down: queue it again."""

    run_id: str
    job_id: str
    attempt: int
    runner: str
    actor: Actor = field(default_factory=lambda: Actor("runner", "runner"))


@dataclass(frozen=True, kw_only=True)
class ReportLateResult:
    """A runner found, after its server restarted, that an attempt declared lost had in fact
    finished: the result is recorded beside the attempt (the job itself has moved on)."""

    run_id: str
    job_id: str
    attempt: int
    runner: str
    outcome: JobOutcome
    exit_code: int | None
    actor: Actor = field(default_factory=lambda: Actor("runner", "runner"))


@dataclass(frozen=True, kw_only=True)
class ExpireLease:
    """A job's runner stopped renewing its lease: the job is lost."""

    run_id: str
    job_id: str
    attempt: int
    #: the runner itself knows the job died (its server restarted): skip the lease check
    force: bool = False
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class TimeoutRun:
    """A run's own deadline (the pipeline's ``timeout``) passed: it fails, its jobs are killed."""

    run_id: str
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class TimeoutGate:
    """A gate's deadline passed."""

    run_id: str
    gate: str
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class RecordGateCheck:
    """The result of one poll of an automated gate's command."""

    run_id: str
    gate: str
    passed: bool
    detail: str = ""
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class AdmitRun:
    """Try again to start a queued run's deploy stage (its environment may have come free)."""

    run_id: str
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class MoveToFront:
    """An admin puts a queued run first in its environment's queue (audited, with a reason)."""

    run_id: str
    actor: Actor
    reason: str
    #: the queue position it takes: just before the current head's (the service reads it)
    before: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class EndVerification:
    """A deploy stage's verification reached a verdict: its analysis (``SYSTEM``) or a person
    (an approver: "Looks good" passes it, "Roll back" fails it and rolls back). An
    ``inconclusive`` verdict keeps the stage verifying and asks people to decide."""

    run_id: str
    verdict: Literal["passed", "failed", "inconclusive"]
    reason: str = ""
    #: a failure rolls the environment back (a person's "Roll back" always does)
    rollback: bool | None = None
    actor: Actor = SYSTEM
    #: the index of the stage whose verification this verdict is about (an analysis knows its
    #: stage): refused when that stage no longer verifies, so a late verdict on staging never
    #: ends production's verification; None: whichever stage verifies now (a person's verdict)
    stage: int | None = None


@dataclass(frozen=True, kw_only=True)
class ConfirmWeights:
    """The router driver set a rollout's router to ``desired`` and read back ``applied`` (or
    could not: ``error``, in the router's own words). Refused when the rollout wants other
    weights by now (a stale report)."""

    run_id: str
    desired: Mapping[str, int]
    applied: Mapping[str, int] | None = None
    error: str = ""
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class NoteRouterWait:
    """The router driver resumed a rollout (after a restart) and its router does not answer
    yet: ``waiting`` says what it waits for, shown with the rollout until it answers ("" once
    it does). Refused when the rollout wants other weights by now."""

    run_id: str
    desired: Mapping[str, int]
    waiting: str
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class AdvanceRollout:
    """A rollout's timed pause came to its end (the clock)."""

    run_id: str
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class EndStepAnalysis:
    """A canary step's analysis reached a verdict: passed goes on, failed aborts,
    inconclusive waits for a person."""

    run_id: str
    analysis_id: str
    verdict: Literal["passed", "failed", "inconclusive"]
    reason: str = ""
    actor: Actor = SYSTEM


@dataclass(frozen=True, kw_only=True)
class PromoteRollout:
    """Go past the step the rollout waits in (``full``: past every step left, to promotion).
    ``step``: the step the person saw (``Rollout.step``, from 0); a rollout that moved on since
    refuses it, so two presses on one pause do not also go past the step the first began. None
    (older REST clients): whatever step it is in now."""

    run_id: str
    actor: Actor
    full: bool = False
    comment: str = ""
    step: int | None = None


@dataclass(frozen=True, kw_only=True)
class AbortRollout:
    """Return all traffic to stable, run the abort jobs, and end the run canceled."""

    run_id: str
    actor: Actor
    reason: str = ""


RunCommand = (
    CancelRun
    | AdmitRun
    | MoveToFront
    | FailRun
    | TimeoutRun
    | PauseRun
    | ResumeRun
    | ApproveGate
    | RejectGate
    | CompleteJob
    | InterruptJob
    | ExpireLease
    | ReportLateResult
    | TimeoutGate
    | RecordGateCheck
    | EndVerification
    | ConfirmWeights
    | NoteRouterWait
    | AdvanceRollout
    | EndStepAnalysis
    | PromoteRollout
    | AbortRollout
)
Command = TriggerRun | RetryRun | RunCommand


def command_name(command: Command) -> str:
    """``ApproveGate`` → ``approve_gate``: the action name in the audit log."""
    name = type(command).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
