"""Ending a deployment's verification, and the rollback a failure starts, in one transaction.

The verdict comes from the stage's analysis (``core.runtime.analyses``) or from a person (an
approver's "Looks good" or "Roll back"). ``EndVerification`` is decided like any command; when
it fails the stage and the environment rolls back on failure, the rollback run (the existing
rollback: the last known-good artifact, locked afterwards) is triggered in the same
transaction with an idempotency key derived from the failed run, so a crash cannot lose it
and two replicas cannot start two.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

from core.analysis import Analysis, AnalysisKind, AnalysisStatus
from core.commands import EndStepAnalysis, EndVerification, RunCommand, TriggerRun
from core.engine import Decision
from core.environments import Environments
from core.errors import InvalidInput, NotFound
from core.model import SYSTEM
from core.ports import AuditEntry, Tx
from core.rollback import plan_rollback
from core.runtime.handling import handle
from core.runtime.writes import write
from core.states import RunStatus, StageStatus

log = logging.getLogger(__name__)


#: the engine's verdict for an analysis' status
_VERDICTS: dict[AnalysisStatus, Literal["passed", "failed", "inconclusive"]] = {
    AnalysisStatus.PASSED: "passed",
    AnalysisStatus.FAILED: "failed",
    AnalysisStatus.INCONCLUSIVE: "inconclusive",
}


def verdicts_to(
    handle_command: Callable[[RunCommand], Awaitable[Decision]],
    end: Callable[[str, AnalysisStatus, str], Awaitable[bool]],
) -> Callable[[Analysis, AnalysisStatus, str], Awaitable[None]]:
    """The analysis loop's ``on_verdict``: the verdict as ``EndVerification`` to the engine. A
    verdict the engine refuses because the run no longer verifies (it was canceled meanwhile)
    ends the analysis, so it is not judged again."""

    async def on_verdict(analysis: Analysis, status: AnalysisStatus, reason: str) -> None:
        verdict = _VERDICTS.get(status)
        if analysis.run_id is None or verdict is None:
            return
        if analysis.kind is AnalysisKind.ROLLOUT:
            step = EndStepAnalysis(
                run_id=analysis.run_id, analysis_id=analysis.id, verdict=verdict, reason=reason
            )
            if not (await handle_command(step)).accepted:
                # the rollout moved past this step (a person promoted or aborted): stop measuring
                await end(analysis.id, AnalysisStatus.CANCELED, "the rollout no longer measures this step")
            return
        command = EndVerification(
            run_id=analysis.run_id, verdict=verdict, reason=reason, stage=analysis.stage_index
        )
        decision = await handle_command(command)
        if decision.accepted:
            log.info(
                "verification of %s in %s %s: %s", analysis.run_id, analysis.environment, verdict, reason
            )
        elif not _still_verifies(decision, analysis.stage_index):
            await end(analysis.id, AnalysisStatus.CANCELED, f"the run no longer verifies: {decision.reason}")

    return on_verdict


def _still_verifies(decision: Decision, stage_index: int | None) -> bool:
    """Does the stage a refused verdict was about still verify (then it is judged again)?"""
    state = decision.state
    if state is None or state.run.status is not RunStatus.VERIFYING:
        return False
    return any(s.status is StageStatus.VERIFYING and stage_index in (None, s.index) for s in state.stages)


def rollback_key(run_id: str) -> str:
    """The idempotency key of the rollback a failed verification of ``run_id`` starts."""
    return f"verify-rollback:{run_id}"


def rollback_after(tx: Tx, decision: Decision, now: datetime, environments: Environments) -> Decision | None:
    """If ``decision`` failed a verification that rolls back, trigger the rollback in ``tx``
    and return its decision; None when there is nothing to roll back (said in the audit log)."""
    failed = next((e for e in decision.events if e.name == "stage.verification_failed"), None)
    if not decision.accepted or failed is None or not failed.data.get("rollback"):
        return None
    state = decision.state
    assert state is not None
    env = next(s.environment for s in state.stages if s.id == failed.subject_id)
    assert env is not None
    tx.flush_writes()  # (the failed deployment is now in the history the plan reads)
    try:
        if state.run.kind == "rollback":  # rolling a rollback back could go on for ever
            raise InvalidInput(f"{state.run.ref} is itself a rollback: people decide what runs there now")
        plan = plan_rollback(env, tx.deployments_to(env, 200), tx.artifact)
    except (NotFound, InvalidInput) as exc:
        log.warning("verification of %s failed in %s; no rollback: %s", env, state.run.ref, exc.message)
        tx.audit(
            AuditEntry(
                at=now,
                actor=SYSTEM.name,
                channel=SYSTEM.channel,
                action="rollback",
                target=env,
                outcome="rejected",
                reason=f"verification of {state.run.ref} failed; no rollback: {exc.message}",
                detail={"run_id": state.run.id},
            )
        )
        return None
    command = TriggerRun(
        pipeline=plan.pipeline,
        actor=SYSTEM,
        kind="rollback",
        artifact_id=plan.target.id,
        deploy_to=env,
        idempotency_key=rollback_key(state.run.id),
        requested_by=(state.run.triggered_by,),
    )
    rolled = handle(tx, command, now, environments)
    write(tx, command, rolled, now, environments, True)
    if rolled.accepted and rolled.state is not None and not rolled.duplicate:
        log.warning(
            "verification of %s failed in %s: rolling back to %s as %s",
            env,
            state.run.ref,
            plan.target.ref,
            rolled.state.run.ref,
        )
    return rolled
