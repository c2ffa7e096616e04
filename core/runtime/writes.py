"""Writing a decision: the only place a command's outcome reaches the database.

An accepted decision becomes a new run or conditional updates on the run's rows (each naming
the status it must still have, the run row its version), then its events, the deployments it
finished (a rollback that succeeded locks its environment until someone acknowledges it) and
the audit entry. Refusals are audited too (the clock's by the clock: ``SELF_AUDITED_REFUSALS``).
All of it in the command's transaction.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from core.analysis import AnalysisKind, AnalysisStatus
from core.commands import Command, PromoteRollout, ReportTarget, RetryRun, TriggerRun, command_name
from core.engine import Decision
from core.environments import Environments
from core.events import Event
from core.locks import LockAction
from core.model import RunState
from core.ports import AuditEntry, Deployment, Tx
from core.review import open_review
from core.rollout import step_policy
from core.runtime.reading import artifact_for
from core.states import STAGE_DONE, StageStatus

log = logging.getLogger(__name__)

#: channels whose refused commands their adapter audits itself: the clock triggers an
#: occurrence on every replica that reads it due, and records a refusal with the claim of the
#: occurrence (``bot.scheduler``), so once however many replicas tried it. Their replays of a
#: run already made (a second replica's trigger of the same fire) are not audited either: one
#: fire, one entry
SELF_AUDITED_REFUSALS = frozenset({"schedule"})
#: how long a break-glass run's review stays open when no environment says otherwise (a day)
DEFAULT_REVIEW_S = 86400.0


def write(
    tx: Tx,
    command: Command,
    decision: Decision,
    now: datetime,
    environments: Environments,
    audit_runner_reports: bool,
) -> None:
    """Apply ``decision`` to ``tx`` (a refusal or an idempotent replay changes nothing but
    the audit log)."""
    if decision.accepted and not decision.duplicate:
        state = decision.state
        assert state is not None
        if decision.created:
            assert isinstance(command, TriggerRun | RetryRun)  # only they create runs
            _insert(tx, state, command.report_to, environments, now)
            if isinstance(command, RetryRun):  # the retried run moves too: a retry elsewhere conflicts
                retried = tx.load_run(command.run_id)
                assert retried is not None and decision.expect_version is not None
                tx.apply(retried, decision.expect_version, ())
        else:
            assert decision.expect_version is not None
            tx.apply(state, decision.expect_version, decision.changes)
        tx.append_events(decision.events)
        for deployment in _deployments(decision, state):
            _record_deployment(tx, state, deployment, now)
        _verifications(tx, decision, state, environments, command.actor.name, now)
    if decision.accepted and command.actor.channel == "runner" and not audit_runner_reports:
        return
    if not decision.accepted and command.actor.channel in SELF_AUDITED_REFUSALS:
        return
    if decision.duplicate and command.actor.channel in SELF_AUDITED_REFUSALS:
        return  # (another replica's trigger of the same fire: the run's own entry says it once)
    tx.audit(audit_entry(command, decision, now))


def analysis_id(run_id: str, stage_index: int) -> str:
    """The analysis that verifies a run's deploy stage (one per stage: a retry hits the key)."""
    return f"verify:{run_id}:{stage_index}"


#: how the analysis of a stage leaving ``verifying`` ends
_ENDED = {
    StageStatus.SUCCEEDED: AnalysisStatus.PASSED,
    StageStatus.FAILED: AnalysisStatus.FAILED,
    StageStatus.CANCELED: AnalysisStatus.CANCELED,
}


def _verifications(
    tx: Tx, decision: Decision, state: RunState, environments: Environments, by: str, now: datetime
) -> None:
    """Start the analysis of a stage that began verifying, and end it, in the same transaction,
    when the stage leaves ``verifying`` or its verdict is inconclusive (a person decides): the
    analysis loop measures only what the engine still verifies."""
    for event in decision.events:
        if event.subject != "stage":
            continue
        stage = next(s for s in state.stages if s.id == event.subject_id)
        if stage.environment is None:
            continue
        ident = analysis_id(state.run.id, stage.index)
        if event.to_status == StageStatus.VERIFYING:
            policy = environments.policy(stage.environment).verify
            if policy is None:  # (removed from the configuration since the stage started)
                log.warning("%s: %s has no verify now; an approver decides", state.run.ref, stage.environment)
                continue
            tx.start_analysis(ident, stage.environment, state.run.id, stage.index, policy, now)
        elif event.from_status == StageStatus.VERIFYING:
            ended = _ENDED[StageStatus(event.to_status or "")]
            tx.end_analysis(ident, ended, stage.reason, by, now)
        elif event.name == "stage.verification_inconclusive":
            tx.end_analysis(ident, AnalysisStatus.INCONCLUSIVE, str(event.data.get("reason", "")), by, now)
        elif event.name in ("rollout.step", "rollout.analysis_ended"):
            _step_analysis(tx, event, state, stage.index, stage.environment, by, now)
        elif event.name == "rollout.promoted" and isinstance(live := event.data.get("live"), str):
            tx.set_live_pool(stage.environment, str(event.data["router"]), live, now)


def _step_analysis(
    tx: Tx, event: Event, state: RunState, stage_index: int, env: str, by: str, now: datetime
) -> None:
    """Start a canary step's analysis with the step (``core.canary``), and end it with the step."""
    ident = event.data.get("analysis")
    if not isinstance(ident, str):
        return
    if event.name == "rollout.analysis_ended":
        status = AnalysisStatus(str(event.data.get("status", "canceled")))
        tx.end_analysis(ident, status, str(event.data.get("reason", "")), by, now)
        return
    strategy = state.definition.stages[stage_index].strategy
    step = int(event.data.get("step", 0)) - 1  # type: ignore[call-overload]
    assert strategy is not None and step >= 0
    measured = strategy.steps[step].analysis
    assert measured is not None
    tx.start_analysis(
        ident, env, state.run.id, stage_index, step_policy(measured), now, kind=AnalysisKind.ROLLOUT
    )


def _insert(
    tx: Tx, state: RunState, report_to: ReportTarget | None, environments: Environments, now: datetime
) -> None:
    tx.insert_run(state, report_to)
    if state.run.break_glass is not None:
        envs = {s.environment for s in state.stages if s.environment}
        within = min((environments.policy(e).break_glass_review for e in envs), default=DEFAULT_REVIEW_S)
        tx.open_review(open_review(state.run.id, state.run.triggered_by, state.run.break_glass, now, within))


def _record_deployment(tx: Tx, state: RunState, deployment: Deployment, now: datetime) -> None:
    built = artifact_for(tx, state)
    if built is not None:
        found = tx.artifact(built.ref)
        deployment = replace(
            deployment, artifact=built.ref, artifact_id=found.id if found is not None else None
        )
    tx.record_deployment(deployment)
    if deployment.kind != "rollback" or deployment.status != "succeeded":
        return
    why = (
        f"rolled back to {deployment.artifact or 'an earlier artifact'} by "
        f"{deployment.triggered_by} ({state.run.ref}); acknowledge before deploying again"
    )
    locked = tx.lock_after_rollback(deployment.environment, why, now)
    if locked is not None:
        tx.audit(
            AuditEntry(
                at=now,
                actor="shipyard",
                channel="system",
                action="relock_environment" if locked is LockAction.RELOCK else "lock_environment",
                target=deployment.environment,
                outcome="accepted",
                reason=why,
                detail={"kind": "rollback", "run_id": deployment.run_id},
            )
        )


def _deployments(decision: Decision, state: RunState) -> list[Deployment]:
    """Deploy stages this decision finished (only those that started: a stage canceled at its
    gate deployed nothing)."""
    found = []
    for event in decision.events:
        if event.subject != "stage" or event.to_status not in STAGE_DONE:
            continue
        stage = next((s for s in state.stages if s.id == event.subject_id), None)
        if stage is None or stage.environment is None or stage.started_at is None:
            continue
        run = state.run
        found.append(
            Deployment(
                environment=stage.environment,
                pipeline=run.pipeline,
                run_id=run.id,
                run_number=run.number,
                stage=stage.name,
                status=str(stage.status),
                revision=run.source_revision,
                revision_time=run.revision_time,
                parameters=dict(run.parameters),
                triggered_by=run.triggered_by,
                started_at=stage.started_at,
                finished_at=stage.finished_at or event.at,
                kind=run.kind,
                verification=_verification(event),
            )
        )
    return found


def _verification(event: Event) -> str | None:
    """How verification ended for a stage that leaves ``verifying`` (None: never verified)."""
    if event.from_status != StageStatus.VERIFYING:
        return None
    return {StageStatus.SUCCEEDED: "verified", StageStatus.FAILED: "failed"}.get(
        StageStatus(event.to_status or ""), "canceled"
    )


#: the command's fields copied into its audit entry's detail when set
_AUDITED_FIELDS = (
    "gate",
    "job_id",
    "attempt",
    "reason",
    "comment",
    "source_revision",
    "idempotency_key",
    "branch",
    "artifact_id",
    "deploy_to",
    "break_glass",
)


def audit_entry(command: Command, decision: Decision, now: datetime) -> AuditEntry:
    """The audit log's record of ``command`` and its outcome."""
    target = getattr(command, "run_id", None) or getattr(command, "pipeline", "")
    detail: dict[str, object] = {}
    if decision.state is not None:
        target = decision.state.run.ref
        detail["run_id"] = decision.state.run.id
    for key in _AUDITED_FIELDS:
        value = getattr(command, key, None)
        if value:
            detail[key] = value
    if isinstance(command, PromoteRollout) and command.step is not None:
        detail["step"] = command.step + 1  # (the step the person saw, counted from 1 as shown)
    if isinstance(command, TriggerRun):
        detail["parameters"] = {k: str(v) for k, v in command.parameters.items()}
        if command.kind != "deploy":
            detail["kind"] = command.kind
    return AuditEntry(
        at=now,
        actor=command.actor.name,
        channel=command.actor.channel,
        action=command_name(command),
        target=str(target),
        outcome="duplicate" if decision.duplicate else str(decision.outcome),
        reason=decision.reason,
        detail=detail,
    )
