"""Environment rules applied to a fresh run, whichever pipeline it is.

A pipeline file cannot weaken them: an environment's allowed pipelines and branches are
checked before the run exists, and its required approvals become the deploy stage's gate (the
stricter of the two when the pipeline has its own manual gate). Promotions and rollbacks run
only the stages that deploy to their target. Break glass (an admin's, with a reason) drops the
approval gates of deploy stages; freezes it passes at admission (``core.admission``). An
environment's ``runner_labels`` are added to the labels of its deploy stage's jobs, so a pipeline
cannot send a production deploy to a runner that is not a production runner (``core.labels``).
"""

from __future__ import annotations

from core.environments import Environments, branch_refusal, pipeline_refusal
from core.errors import Forbidden, InvalidInput
from core.labels import needed
from core.model import Gate, RunState, evolve, gate_id
from core.states import GateStatus, JobStatus, StageStatus


def protect(state: RunState, config: Environments) -> RunState:
    """``state`` with its environments' rules applied; refuses a run they do not allow."""
    run = state.run
    gates = {g.stage_index: g for g in state.gates}
    for stage in state.stages:
        env = stage.environment
        if env is None or stage.status is StageStatus.SKIPPED:
            continue
        policy = config.policy(env)
        if policy.runner_labels:  # (break glass or not: a deploy runs only where it may)
            state = _require_labels(state, stage.index, policy.runner_labels)
        refusal = pipeline_refusal(policy, env, run.pipeline) or branch_refusal(policy, env, run.branch)
        if refusal:
            raise Forbidden(refusal)
        if run.break_glass is not None:
            gates.pop(stage.index, None)
            continue
        rule = policy.approvals
        if rule is None or (run.kind == "rollback" and policy.rollback_skips_approvals):
            continue
        own = gates.get(stage.index)
        if own is not None and own.kind != "manual":
            raise InvalidInput(
                f"stage {stage.name} deploys to {env}, which requires approvals, but its gate is "
                f"{own.kind}: move that check to a stage before it"
            )
        gates[stage.index] = Gate(
            id=gate_id(run.id, stage.index),
            run_id=run.id,
            stage_index=stage.index,
            stage_name=stage.name,
            kind="manual",
            approvers=rule.gate_approvers,
            min_approvals=max(rule.count, own.min_approvals if own else 1),
            allow_self_approval=rule.allow_self_approval and (own.allow_self_approval if own else True),
            timeout_s=own.timeout_s if own else None,
            on_timeout=own.on_timeout if own else "reject",
            interval_s=own.interval_s if own else 30.0,
        )
    return evolve(state, gates=tuple(gates[i] for i in sorted(gates)))


def _require_labels(state: RunState, stage_index: int, labels: list[str]) -> RunState:
    """``state`` with every job of stage ``stage_index`` needing ``labels`` as well."""
    jobs = tuple(
        evolve(j, labels=needed(j.labels, labels)) if j.stage_index == stage_index else j for j in state.jobs
    )
    return evolve(state, jobs=jobs)


def only_deploy_to(state: RunState, environment: str, why: str) -> RunState:
    """A promotion or rollback: every stage that does not deploy to ``environment`` is skipped
    from the start (nothing is rebuilt), saying ``why``; the run keeps ``environment`` as its
    ``deploy_to``."""
    if not any(s.environment == environment for s in state.stages):
        raise InvalidInput(f"pipeline {state.run.pipeline} has no stage that deploys to {environment}")
    keep = {s.index for s in state.stages if s.environment == environment}
    stages = tuple(
        s if s.index in keep else evolve(s, status=StageStatus.SKIPPED, reason=why) for s in state.stages
    )
    jobs = tuple(
        j if j.stage_index in keep else evolve(j, status=JobStatus.SKIPPED, reason=why) for j in state.jobs
    )
    gates = tuple(
        g if g.stage_index in keep else evolve(g, status=GateStatus.SKIPPED, reason=why) for g in state.gates
    )
    run = evolve(state.run, deploy_to=environment)
    return evolve(state, run=run, stages=stages, jobs=jobs, gates=gates)
