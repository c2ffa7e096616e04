"""A pipeline's rollout strategies checked against the service configuration: the router must
be one its environment declares, with ``stable`` and ``canary`` pools; an analysis step's
checks must be declared there; an open-ended pause is a gate, so someone must be able to clear
it (the pause's own approvers, or the environment's approval rule). Pure: registration
(``core.runtime.service``) refuses a pipeline these find problems in."""

from __future__ import annotations

from core.definition import PipelineDef
from core.environments import Environments
from core.rollout import CANARY, STABLE


def strategy_problems(definition: PipelineDef, environments: Environments) -> list[str]:
    """Each problem as ``stages.<i>.strategy.canary.<field>: what is wrong``."""
    problems: list[str] = []
    for i, stage in enumerate(definition.stages):
        if stage.strategy is None or stage.environment is None:
            continue
        canary = stage.strategy.canary
        where = f"stages.{i}.strategy.canary"
        env = stage.environment
        if env not in environments:
            problems.append(f"{where}: environment {env!r} is not configured, so it has no routers")
            continue
        policy = environments.policy(env)
        router = policy.routers.get(canary.router)
        if router is None:
            known = ", ".join(policy.routers) or "none are configured"
            problems.append(f"{where}.router: {env} has no router {canary.router!r} (routers: {known})")
        elif set(router.pools) != {STABLE, CANARY}:
            pools = ", ".join(router.pools)
            problems.append(
                f"{where}.router: router {canary.router} has pools {pools}; a canary needs stable and canary"
            )
        for k, step in enumerate(canary.steps):
            if step.analysis is not None:
                unknown = [c for c in step.analysis.checks if c not in policy.checks]
                if unknown:
                    known = ", ".join(policy.checks) or "none are declared"
                    problems.append(
                        f"{where}.steps.{k}.analysis.checks: {env} declares no check "
                        f"{', '.join(map(repr, unknown))} (checks: {known})"
                    )
            pause = step.pause
            if (
                pause is not None
                and pause.duration is None
                and not pause.approvers
                and policy.approvals is None
            ):
                problems.append(
                    f"{where}.steps.{k}.pause: waits for a person, but neither the pause nor {env} "
                    "names approvers: add approvers to the pause or an approvals rule to the environment"
                )
    return problems
