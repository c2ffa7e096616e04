"""A pipeline's rollout strategies checked against the service configuration: the router must
be one its environment declares (a canary's with ``stable`` and ``canary`` pools); the checks
its analyses measure must be declared there; an open-ended pause is a gate, so someone must be
able to clear it (the pause's own approvers, or the environment's approval rule). Pure:
registration (``core.runtime.service``) refuses a pipeline these find problems in."""

from __future__ import annotations

from core.definition import PipelineDef, StrategyDef
from core.environments import EnvironmentPolicy, Environments
from core.rollout import CANARY, STABLE


def strategy_problems(definition: PipelineDef, environments: Environments) -> list[str]:
    """Each problem as ``stages.<i>.strategy.<kind>.<field>: what is wrong``."""
    problems: list[str] = []
    for i, stage in enumerate(definition.stages):
        if stage.strategy is None or stage.environment is None:
            continue
        where = f"stages.{i}.strategy.{stage.strategy.kind}"
        if stage.environment not in environments:
            problems.append(
                f"{where}: environment {stage.environment!r} is not configured, so it has no routers"
            )
            continue
        policy = environments.policy(stage.environment)
        problems.extend(_router(where, stage.environment, policy, stage.strategy))
        problems.extend(_steps(where, stage.environment, policy, stage.strategy))
    return problems


def _router(where: str, env: str, policy: EnvironmentPolicy, strategy: StrategyDef) -> list[str]:
    router = policy.routers.get(strategy.router)
    if router is None:
        known = ", ".join(policy.routers) or "none are configured"
        return [f"{where}.router: {env} has no router {strategy.router!r} (routers: {known})"]
    if strategy.kind == "canary" and set(router.pools) != {STABLE, CANARY}:
        pools = ", ".join(router.pools)
        return [
            f"{where}.router: router {strategy.router} has pools {pools}; a canary needs stable and canary"
        ]
    return []


def _steps(where: str, env: str, policy: EnvironmentPolicy, strategy: StrategyDef) -> list[str]:
    problems = []
    fields = {"canary": "steps.{k}", "blue_green": "steps"}
    for k, step in enumerate(strategy.steps):
        at = f"{where}.{fields[strategy.kind].format(k=k)}"
        if step.analysis is not None:
            unknown = [c for c in step.analysis.checks if c not in policy.checks]
            if unknown:
                known = ", ".join(policy.checks) or "none are declared"
                named = ", ".join(map(repr, unknown))
                problems.append(f"{at}.analysis.checks: {env} declares no check {named} (checks: {known})")
        pause = step.pause
        if pause is not None and pause.duration is None and not pause.approvers and policy.approvals is None:
            problems.append(
                f"{at}.pause: waits for a person, but neither the strategy nor {env} names approvers: "
                "add approvers (or auto_promote) or an approvals rule to the environment"
            )
    return problems
