"""The engine's decisions for a stage's canary rollout (``core.rollout`` says what a rollout
is). Pure, like the rest of the engine: these functions change a run's working copy (the
engine's plan) and never touch a router; the router's driver reads the recorded ``desired``
weights and reports back with ``ConfirmWeights``.

``enter`` starts the rollout once the stage's own jobs succeeded; ``settle`` moves a promoting
or aborting rollout on as its jobs finish; the handlers take the rollout commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from core.admission import EnvironmentView
from core.commands import (
    AbortRollout,
    AdvanceRollout,
    ConfirmWeights,
    EndStepAnalysis,
    NoteRouterWait,
    PromoteRollout,
)
from core.definition import StageDef, StrategyDef
from core.errors import CommandRefused
from core.model import Job, Stage
from core.rollout import (
    CANARY,
    ROLLOUT_DONE,
    STABLE,
    Rollout,
    analysis_id,
    describe_step,
    describe_weights,
    moved,
    step_words,
)
from core.states import JOB_FAILURES, JobStatus, RolloutStatus, RunStatus, StageStatus

if TYPE_CHECKING:
    from core.engine import _Plan

#: ``engine._finish``: end the run (status, reason, the stage that failed)
Finish = Callable[..., None]
#: ``engine._succeed``: the stage's work is done; True when the run may go on at once
Succeed = Callable[["_Plan", Stage], bool]

RO = RolloutStatus
#: rollout statuses in which traffic may be on the canary and an abort must put it back
_ABORTABLE = frozenset({RO.PROGRESSING, RO.WAITING, RO.PROMOTING})


def prepare(definition: StageDef, view: EnvironmentView | None) -> Rollout | None:
    """The rollout a stage with a strategy starts with (when the stage starts): which pool serves
    now and which takes the new version (blue/green: the idle colour), and who may promote past
    an open-ended pause, as the environment said then."""
    strategy = definition.strategy
    if strategy is None:
        return None
    pools = (STABLE, CANARY)
    if strategy.kind == "blue_green" and view is not None and strategy.router in view.router_pools:
        pools = view.router_pools[strategy.router]
    return Rollout(
        router=strategy.router,
        kind=strategy.kind,
        pools=pools,
        desired={pools[0]: 100, pools[1]: 0},
        approvers=view.approvers if view is not None else (),
        min_approvals=view.min_approvals if view is not None else 1,
        allow_self_approval=view.allow_self_approval if view is not None else False,
    )


def strategy_of(plan: _Plan, stage: Stage) -> StrategyDef:
    strategy = plan.definition.stages[stage.index].strategy
    assert strategy is not None
    return strategy


def phase_jobs(plan: _Plan, stage: Stage, phase: str) -> list[Job]:
    """The stage's own jobs (``""``), or its canary's ``promote`` or ``abort`` jobs."""
    sdef = plan.definition.stages[stage.index]
    return [j for j in plan.jobs_of(stage) if sdef.phase_of(j.index) == phase]


def rolling(plan: _Plan) -> tuple[Stage, Rollout]:
    """The stage rolling out and its rollout, or a refusal saying there is none."""
    stage = next((s for s in plan.stages if s.status is StageStatus.ROLLING_OUT), None)
    if stage is None or stage.rollout is None:
        if all(s.strategy is None for s in plan.definition.stages):
            raise CommandRefused(
                f"{plan.run.ref} has no rollout: none of its stages has a canary or blue/green "
                "strategy (to pause or resume the run itself, use its pause or resume)"
            )
        raise CommandRefused(f"{plan.run.ref} has no rollout under way")
    return stage, stage.rollout


# -- moving on ---------------------------------------------------------------------------------


def enter(plan: _Plan, stage: Stage) -> None:
    """The stage's own jobs put the new version on the canary servers: take the first step."""
    strategy = strategy_of(plan, stage)
    rollout = stage.rollout or Rollout(router=strategy.router, kind=strategy.kind)
    rollout = moved(rollout, RO.PROGRESSING, stage.id)
    stage = plan.move(
        stage, StageStatus.ROLLING_OUT, rollout=rollout, reason=f"rolling out through {strategy.router}"
    )
    _begin(plan, stage, 0)


def _begin(plan: _Plan, stage: Stage, index: int, how: str = "passed") -> None:
    """Take step ``index`` (and the ones after it that need nothing to wait for); ``how``: how
    the step left ended its analysis, if it had one."""
    strategy = strategy_of(plan, stage)
    assert stage.rollout is not None
    rollout = _leave_step(plan, stage, stage.rollout, how)
    while index < len(strategy.steps):
        step = strategy.steps[index]
        if plan.run.kind == "rollback" and not (
            step.set_weight is not None and strategy.kind == "blue_green"
        ):
            index += 1  # a rollback goes straight back: no pauses, no analyses, no canary share
            continue
        rollout = replace(
            rollout,
            step=index,
            step_started_at=plan.now,
            step_until=None,
            analysis=None,
            paused_left=None,
            passed_while_paused=False,
            reason="",
        )
        if rollout.status is RO.WAITING:
            rollout = moved(rollout, RO.PROGRESSING, stage.id)
        if step.set_weight is not None:
            rollout = replace(rollout, desired=rollout.weights(step.set_weight))
        elif step.pause is not None and step.pause.duration is not None:
            rollout = replace(rollout, step_until=plan.now + timedelta(seconds=step.pause.duration))
        elif step.pause is not None:
            rollout = moved(rollout, RO.WAITING, stage.id, reason=f"paused at {step_words(strategy, index)}")
        else:
            assert step.analysis is not None
            until = plan.now + timedelta(seconds=step.analysis.initial_delay + step.analysis.duration)
            rollout = replace(
                rollout, analysis=analysis_id(plan.run.id, stage.index, index), step_until=until
            )
        stage = plan.set(stage, rollout=rollout, reason=step_words(strategy, index))
        _note(
            plan, "rollout.step", stage, step=index + 1, steps=len(strategy.steps), action=describe_step(step)
        )
        if step.set_weight is None or rollout.router_pending:
            break
        index += 1
    else:
        _promote(plan, stage, rollout)
        return
    _run_follows(plan, rollout)


def _leave_step(plan: _Plan, stage: Stage, rollout: Rollout, how: str) -> Rollout:
    """End the current step's analysis, if it has one (the writer ends it in the same
    transaction: ``core.runtime.writes``)."""
    if rollout.analysis is not None:
        _note(plan, "rollout.analysis_ended", stage, analysis=rollout.analysis, status=how)
        rollout = replace(rollout, analysis=None)
    return rollout


def _run_follows(plan: _Plan, rollout: Rollout) -> None:
    """The run waits while its rollout waits for a person, and runs otherwise."""
    run = plan.run
    if rollout.status is RO.WAITING and run.status is RunStatus.RUNNING:
        plan.move(run, RunStatus.WAITING, reason=rollout.reason)
    elif rollout.status is not RO.WAITING and run.status is RunStatus.WAITING:
        plan.move(run, RunStatus.RUNNING, reason="")


def _promote(plan: _Plan, stage: Stage, rollout: Rollout) -> None:
    strategy = strategy_of(plan, stage)
    rollout = _leave_step(plan, stage, rollout, "canceled")
    rollout = moved(
        rollout,
        RO.PROMOTING,
        stage.id,
        step=len(strategy.steps),
        step_until=None,
        paused_left=None,
        reason="",
    )
    why = "promoting: the new version goes on the stable servers"
    if rollout.kind == "blue_green":
        why = f"promoted: {rollout.pools[1]} serves all traffic"
    stage = plan.set(stage, rollout=rollout, reason=why)
    _note(plan, "rollout.promoting", stage, weight=rollout.canary_weight)
    _run_follows(plan, rollout)


def _abort(plan: _Plan, stage: Stage, rollout: Rollout, outcome: str, reason: str) -> None:
    """All traffic back to stable first; the abort jobs run once the router confirms it."""
    rollout = _leave_step(plan, stage, rollout, "canceled")
    rollout = moved(
        rollout,
        RO.ABORTING,
        stage.id,
        desired=rollout.at_rest,
        outcome=outcome,
        reason=reason,
        step_until=None,
        paused_left=None,
    )
    stage = plan.set(stage, rollout=rollout, reason=f"aborting: {reason}")
    for job in phase_jobs(plan, stage, "promote"):
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            plan.move(
                job, JobStatus.CANCELED, finished_at=plan.now, lease_expires_at=None, reason="rollout aborted"
            )
    _note(plan, "rollout.aborting", stage, reason=reason)
    if plan.run.status in (RunStatus.WAITING, RunStatus.PAUSED):
        plan.move(plan.run, RunStatus.RUNNING, reason="")


def settle(plan: _Plan, stage: Stage, finish: Finish, succeed: Succeed) -> bool:
    """Move a rollout on as far as its jobs and router allow; True when the stage is done and
    the run may go on."""
    rollout = stage.rollout
    assert rollout is not None
    if rollout.status is RO.PROMOTING:
        return _settle_promotion(plan, stage, rollout, succeed, finish)
    if rollout.status is RO.ABORTING and not rollout.router_pending:
        jobs = phase_jobs(plan, stage, "abort")
        if not _jobs_done(plan, jobs):
            return False
        rollout = moved(rollout, RO.ABORTED, stage.id)
        stage = plan.set(stage, rollout=rollout)
        _note(plan, "rollout.aborted", stage, reason=rollout.reason)
        if rollout.outcome == "canceled":
            finish(plan, RunStatus.CANCELED, rollout.reason)
        else:
            finish(plan, RunStatus.FAILED, rollout.reason, failed_stage=stage)
    return False


def _settle_promotion(plan: _Plan, stage: Stage, rollout: Rollout, succeed: Succeed, finish: Finish) -> bool:
    """A canary: the promote jobs put the new version on stable, then all traffic returns to
    stable. Blue/green: traffic is on the new colour already (promoted before the switch: it
    switches first); the scale-down jobs retire the old one ``scale_down_after`` the switch."""
    jobs = phase_jobs(plan, stage, "promote")
    broken = next((j for j in jobs if j.status in JOB_FAILURES and not j.allow_failure), None)
    if broken is not None and rollout.kind == "blue_green" and dict(rollout.applied or {}) == rollout.final:
        _retire_failed(plan, stage, rollout, broken, finish)
        return False
    if broken is not None:
        _abort(plan, stage, rollout, "failed", f"promote job {stage.name}/{broken.name} {broken.reason}")
        return False
    if rollout.kind == "blue_green":
        if dict(rollout.desired) != rollout.final:
            stage = plan.set(stage, rollout=replace(rollout, desired=rollout.final))
            _note(plan, "rollout.step", stage, action=f"all traffic to {rollout.pools[1]}")
            return False
        if rollout.router_pending or not _retired(plan, stage, rollout, jobs):
            return False
    if not _jobs_done(plan, jobs):
        return False
    if dict(rollout.desired) != rollout.final:
        stage = plan.set(stage, rollout=replace(rollout, desired=rollout.final))
        _note(plan, "rollout.step", stage, action="all traffic to the stable servers, now the new version")
        return False
    if rollout.router_pending:
        return False
    stage = plan.set(stage, rollout=moved(rollout, RO.PROMOTED, stage.id))
    _note(plan, "rollout.promoted", stage, live=rollout.pools[1] if rollout.kind == "blue_green" else None)
    return succeed(plan, stage)


def _retire_failed(plan: _Plan, stage: Stage, rollout: Rollout, broken: Job, finish: Finish) -> None:
    """Blue/green: a scale-down job failed after the switch. The old colour may be partly torn
    down, so traffic is not switched back to it: the new colour stays live (the next release
    goes on the old one) and the run fails saying so."""
    old, new = rollout.pools
    why = (
        f"scale-down job {stage.name}/{broken.name} {broken.reason}; {new} serves all traffic "
        f"(the switch stands), {old} may be partly retired"
    )
    stage = plan.set(stage, rollout=moved(rollout, RO.PROMOTED, stage.id, reason=why))
    _note(plan, "rollout.promoted", stage, live=new)
    finish(plan, RunStatus.FAILED, why, failed_stage=stage)


def _retired(plan: _Plan, stage: Stage, rollout: Rollout, jobs: list[Job]) -> bool:
    """Blue/green: True once the scale-down jobs may run (``scale_down_after`` the switch; the
    clock's ``AdvanceRollout`` says when)."""
    if any(j.status is not JobStatus.PENDING for j in jobs):
        return True
    blue_green = strategy_of(plan, stage).blue_green
    assert blue_green is not None
    if rollout.retire_at is None:
        if blue_green.scale_down_after <= 0 or not jobs:
            return True
        until = plan.now + timedelta(seconds=blue_green.scale_down_after)
        plan.set(
            stage,
            rollout=replace(rollout, retire_at=until),
            reason=f"retiring {rollout.pools[0]} at {until:%H:%M:%S}",
        )
        return False
    return rollout.retire_at <= plan.now


def _jobs_done(plan: _Plan, jobs: list[Job]) -> bool:
    """Queue the pending ones (unless the run is paused); True when all are done."""
    if plan.run.status is RunStatus.RUNNING:
        for job in jobs:
            if job.status is JobStatus.PENDING:
                plan.move(job, JobStatus.QUEUED, queued_at=plan.now, reason="")
    return all(j.is_done for j in jobs)


def abort_instead(plan: _Plan, outcome: str, reason: str) -> bool:
    """A run ending while its canary may have traffic aborts the rollout first (the run ends
    once traffic is back on stable and the abort jobs ran); False when there is none."""
    stage = next((s for s in plan.stages if s.status is StageStatus.ROLLING_OUT), None)
    if stage is None or stage.rollout is None or stage.rollout.status not in _ABORTABLE:
        if stage is not None and stage.rollout is not None and stage.rollout.status is RO.ABORTING:
            raise CommandRefused(
                f"{plan.run.ref} is aborting its rollout: it ends once traffic is back on stable"
            )
        return False
    _abort(plan, stage, stage.rollout, outcome, reason)
    return True


# -- commands ----------------------------------------------------------------------------------


def confirm_weights(plan: _Plan, command: ConfirmWeights, finish: Finish) -> None:
    stage, rollout = rolling(plan)
    if rollout.status in ROLLOUT_DONE or dict(command.desired) != dict(rollout.desired):
        raise CommandRefused(
            f"stale router report for {plan.run.ref}: it wants {describe_weights(rollout.desired)} now"
        )
    applied = dict(command.applied) if command.applied is not None else None
    rollout = replace(rollout, router_wait="")  # (it answered, or the driver gave up on it)
    if command.error or applied != dict(rollout.desired):
        why = command.error or (
            f"it applies {describe_weights(applied)} instead of {describe_weights(rollout.desired)}"
        )
        reason = f"router {rollout.router} failed: {why}; {_traffic_now(rollout, applied)}"
        if rollout.status is RO.ABORTING:
            reason = f"{rollout.reason}; then {reason}"
        if applied is not None:  # (what the router read back is the traffic now, whatever it was asked)
            rollout = replace(rollout, applied=applied)
        stage = plan.set(
            stage,
            rollout=moved(_leave_step(plan, stage, rollout, "canceled"), RO.FAILED, stage.id, reason=reason),
        )
        _note(plan, "rollout.failed", stage, reason=reason)
        finish(plan, RunStatus.FAILED, reason, failed_stage=stage)
        return
    rollout = replace(rollout, applied=applied)
    stage = plan.set(stage, rollout=rollout)
    _note(plan, "rollout.weights_applied", stage, weights=applied)
    strategy = strategy_of(plan, stage)
    if rollout.status is not RO.PROGRESSING or strategy.steps[rollout.step].set_weight is None:
        return
    if plan.run.status is RunStatus.PAUSED:
        # (paused while the router was being set: the change is done, the next step waits for
        # the run to resume, as ``pause_clock`` takes it: a paused run moves no traffic)
        after = step_words(strategy, rollout.step + 1)
        reason = f"weights confirmed while the run was paused: {after} when it resumes"
        stage = plan.set(
            stage, rollout=replace(rollout, passed_while_paused=True, reason=reason), reason=reason
        )
        _note(plan, "rollout.held", stage, reason=reason)
        return
    _begin(plan, stage, rollout.step + 1)


def note_router_wait(plan: _Plan, command: NoteRouterWait) -> None:
    stage, rollout = rolling(plan)
    if rollout.status in ROLLOUT_DONE or dict(command.desired) != dict(rollout.desired):
        raise CommandRefused(
            f"stale router report for {plan.run.ref}: it wants {describe_weights(rollout.desired)} now"
        )
    if rollout.router_wait == command.waiting:
        raise CommandRefused(f"{plan.run.ref}'s rollout says so already")
    stage = plan.set(stage, rollout=replace(rollout, router_wait=command.waiting))
    _note(plan, "rollout.router_waiting", stage, waiting=command.waiting)


def _traffic_now(rollout: Rollout, read_back: dict[str, int] | None) -> str:
    """Where a failed change leaves traffic, for the reason: what the router read back after it,
    else where it was last confirmed."""
    if read_back is not None:
        return f"traffic is at {describe_weights(read_back)} (read back from the router)"
    if rollout.applied is None:
        return "no weights were confirmed yet: traffic stays as the router had it"
    return f"traffic stays at {describe_weights(rollout.applied)} (last confirmed)"


def advance_rollout(plan: _Plan, command: AdvanceRollout) -> None:
    stage, rollout = rolling(plan)
    strategy = strategy_of(plan, stage)
    if rollout.status is RO.PROMOTING and rollout.retire_at is not None:
        _retire(plan, stage, rollout)
        return
    timed = (
        rollout.status is RO.PROGRESSING
        and 0 <= rollout.step < len(strategy.steps)
        and strategy.steps[rollout.step].pause is not None
        and rollout.step_until is not None
    )
    if not timed or plan.run.status is RunStatus.PAUSED:
        raise CommandRefused(f"{plan.run.ref} is not in a timed pause")
    assert rollout.step_until is not None
    if rollout.step_until > plan.now:
        raise CommandRefused(f"{plan.run.ref}'s pause lasts until {rollout.step_until:%H:%M:%S}")
    _begin(plan, stage, rollout.step + 1)


def _retire(plan: _Plan, stage: Stage, rollout: Rollout) -> None:
    """Blue/green's ``scale_down_after`` ended: queue the scale-down jobs now."""
    assert rollout.retire_at is not None
    old = rollout.pools[0]
    if rollout.retire_at > plan.now:
        raise CommandRefused(f"{plan.run.ref} retires {old} at {rollout.retire_at:%H:%M:%S}")
    if plan.run.status is not RunStatus.RUNNING:
        raise CommandRefused(f"{plan.run.ref} is {plan.run.status}: {old} is retired once it runs")
    stage = plan.set(stage, rollout=replace(rollout, retire_at=None), reason=f"retiring {old}")
    _jobs_done(plan, phase_jobs(plan, stage, "promote"))  # (queued now: the clock is done)


def end_step_analysis(plan: _Plan, command: EndStepAnalysis) -> None:
    stage, rollout = rolling(plan)
    if rollout.analysis != command.analysis_id or rollout.status is not RO.PROGRESSING:
        raise CommandRefused(f"{plan.run.ref} no longer measures {command.analysis_id}")
    strategy = strategy_of(plan, stage)
    new = "canary" if rollout.kind == "canary" else rollout.pools[1]
    where = f"step {rollout.step + 1} ({new} at {rollout.canary_weight}%)"
    if command.verdict == "passed" and plan.run.status is RunStatus.PAUSED:
        _hold_pass(plan, stage, rollout, where)
    elif command.verdict == "passed":
        _begin(plan, stage, rollout.step + 1)
    elif command.verdict == "failed":  # (paused or not: traffic back to stable protects users)
        rollout = _leave_step(plan, stage, rollout, "failed")
        _abort(plan, stage, rollout, "failed", f"analysis at {where} failed: {command.reason}")
    else:
        reason = f"analysis at {where} inconclusive: {command.reason}; promote or abort"
        rollout = moved(
            _leave_step(plan, stage, rollout, "inconclusive"), RO.WAITING, stage.id, reason=reason
        )
        stage = plan.set(stage, rollout=rollout, reason=reason)
        _note(plan, "rollout.waiting", stage, reason=reason, step=step_words(strategy, rollout.step))
        _run_follows(plan, rollout)


def _hold_pass(plan: _Plan, stage: Stage, rollout: Rollout, where: str) -> None:
    """The analysis passed while the run is paused: it ends passed (its loop stops measuring
    it), and the next step waits for the run to resume (``pause_clock``): a paused run moves no
    traffic."""
    reason = f"analysis at {where} passed while the run was paused: the rollout goes on when it resumes"
    rollout = replace(
        _leave_step(plan, stage, rollout, "passed"), step_until=None, passed_while_paused=True, reason=reason
    )
    stage = plan.set(stage, rollout=rollout, reason=reason)
    _note(plan, "rollout.analysis_held", stage, reason=reason)


def promote_rollout(plan: _Plan, command: PromoteRollout) -> None:
    stage, rollout = rolling(plan)
    strategy = strategy_of(plan, stage)
    if command.step is not None and command.step != rollout.step:
        raise CommandRefused(_moved_on(plan, strategy, rollout, command.step))
    if rollout.status not in (RO.PROGRESSING, RO.WAITING):
        raise CommandRefused(f"{plan.run.ref}'s rollout is {rollout.status}: there is nothing to promote")
    who = command.actor.name
    _note(plan, "rollout.promoted_by", stage, by=who, full=command.full, comment=command.comment)
    if command.full:
        _promote(plan, stage, rollout)
        return
    if rollout.status is RO.PROGRESSING and strategy.steps[rollout.step].set_weight is not None:
        raise CommandRefused(
            f"the router is being set to {describe_weights(rollout.desired)}; promote once it is"
        )
    _begin(plan, stage, rollout.step + 1, "canceled")


def _moved_on(plan: _Plan, strategy: StrategyDef, rollout: Rollout, seen: int) -> str:
    """Why a promote of step ``seen`` is refused: the rollout is at another step now."""
    steps = len(strategy.steps)
    if rollout.step >= steps:
        now = "its promotion (every step is behind it)"
    else:
        action = describe_step(strategy.steps[rollout.step], strategy.kind)
        now = f"step {rollout.step + 1} of {steps} ({action})"
    if rollout.step < seen:
        return f"{plan.run.ref}'s rollout is at {now}, not at step {seen + 1}: nothing was promoted"
    return (
        f"{plan.run.ref}'s rollout moved on to {now} since step {seen + 1}: nothing was promoted; "
        "look at it again and promote that step if you mean to"
    )


def abort_rollout(plan: _Plan, command: AbortRollout) -> None:
    stage, rollout = rolling(plan)
    if rollout.status not in _ABORTABLE:
        raise CommandRefused(f"{plan.run.ref}'s rollout is {rollout.status}: there is nothing to abort")
    why = f"rollout aborted by {command.actor.name}" + (f": {command.reason}" if command.reason else "")
    _abort(plan, stage, rollout, "canceled", why)


def pause_clock(plan: _Plan, paused: bool) -> None:
    """A paused run stops its timed pause's clock (the time left is kept); resuming restarts it,
    takes the next step if the analysis passed meanwhile, and a run whose rollout waits for a
    person goes back to waiting."""
    stage = next((s for s in plan.stages if s.status is StageStatus.ROLLING_OUT), None)
    if stage is None or stage.rollout is None:
        return
    rollout = stage.rollout
    if not paused and rollout.passed_while_paused and rollout.status is RO.PROGRESSING:
        _begin(plan, stage, rollout.step + 1)
        return
    if paused and rollout.step_until is not None and rollout.analysis is None:
        left = max(0.0, (rollout.step_until - plan.now).total_seconds())
        plan.set(stage, rollout=replace(rollout, step_until=None, paused_left=left))
    elif not paused and rollout.paused_left is not None:
        until = plan.now + timedelta(seconds=rollout.paused_left)
        plan.set(stage, rollout=replace(rollout, step_until=until, paused_left=None))
    if not paused:
        _run_follows(plan, rollout)  # (a rollout that waits for a person keeps its run waiting)


def _note(plan: _Plan, name: str, stage: Stage, **data: Any) -> None:
    rollout = stage.rollout
    assert rollout is not None
    facts: dict[str, Any] = {
        "stage": stage.name,
        "router": rollout.router,
        "status": str(rollout.status),
        "desired": dict(rollout.desired),
        "applied": dict(rollout.applied) if rollout.applied is not None else None,
        "kind": rollout.kind,
        "canary": rollout.canary_weight,
        "analysis": rollout.analysis,
    }
    plan.note(name, stage, **{**facts, **data})
