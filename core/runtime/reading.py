"""Reading what a decision needs, before it is made.

``engine.needs`` names the environments a command may take a run into; ``known`` reads their
views in the command's transaction into one ``Known`` of plain values, which is all
``engine.decide`` gets to see beyond the run. The same views answer the timers (may the head
of a queue go?) and ``why``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from core.admission import EnvironmentView, Known
from core.analysis import Health
from core.artifacts import ArtifactSpec, to_spec
from core.assignment import run_artifact
from core.environments import EnvironmentPolicy, Environments
from core.freeze import active_freeze
from core.model import RunState
from core.ports import Tx


def known(tx: Tx, environments: Environments, envs: Iterable[str], run_id: str, now: datetime) -> Known:
    """The views of ``envs`` for ``run_id`` (read in this transaction)."""
    return Known(tuple(view(tx, environments, env, run_id, now) for env in sorted(envs)))


def view(tx: Tx, environments: Environments, env: str, run_id: str | None, now: datetime) -> EnvironmentView:
    """What stands between ``run_id`` and ``env`` now (a run not stored yet has no bad artifact
    to check: a new deploy's artifact was checked when it was triggered)."""
    busy, first = tx.environment_queue(env, limit=1)
    head = first[0] if first else (None, None)
    policy = environments.policy(env)
    freeze = active_freeze(policy.freezes, now)
    bad = None
    state = tx.load_run(run_id) if run_id is not None else None
    spec = artifact_for(tx, state) if state is not None else None
    artifact = tx.artifact(spec.ref) if spec is not None else None
    if artifact is not None and artifact.bad:
        bad = f"{artifact.ref} was marked bad by {artifact.bad_by} ({artifact.bad_reason})"
    return EnvironmentView(
        name=env,
        busy_with=busy[1] if busy is not None and busy[0] != run_id else None,
        queue_head=head[0],
        queue_head_ref=head[1],
        lock=tx.environment_lock(env, now),
        freeze=freeze.describe() if freeze is not None else None,
        freeze_fails=policy.on_freeze == "fail",
        bad_artifact=bad,
        verify_for=_verify_for(policy),
        verify_rollback=policy.verify is not None and policy.verify.on_failure == "rollback",
        router_pools=_router_pools(tx, env, policy) if policy.routers else {},
        approvers=policy.approvals.gate_approvers if policy.approvals is not None else (),
        min_approvals=policy.approvals.count if policy.approvals is not None else 1,
        allow_self_approval=policy.approvals is not None and policy.approvals.allow_self_approval,
        unhealthy=unhealthy(tx, environments, env),
    )


def _verify_for(policy: EnvironmentPolicy) -> float | None:
    """How long a deployment here stays verifying: its first measurement waits ``initial_delay``."""
    verify = policy.verify
    return verify.initial_delay + verify.duration if verify is not None else None


def _router_pools(tx: Tx, env: str, policy: EnvironmentPolicy) -> dict[str, tuple[str, str]]:
    """Each router's pools: the serving one first (a blue/green router's last promoted colour;
    before any, the pool that is not the candidate), then the idle one."""
    live = tx.live_pools(env)
    found = {}
    for name, router in policy.routers.items():
        first, second = router.pool_names
        serving = live.get(name) or (first if router.candidate == second else second)
        found[name] = (serving, second if serving == first else first)
    return found


def unhealthy(tx: Tx, environments: Environments, env: str) -> str | None:
    """Why ``env`` holds deployments back for its health ("production is unhealthy since
    12:03: …"), when it is unhealthy and declares ``block_when_unhealthy``."""
    if not environments.policy(env).block_when_unhealthy:
        return None
    health = tx.environment_health(env)
    if health is None or health.state is not Health.UNHEALTHY:
        return None
    return f"{env} is unhealthy since {health.since:%H:%M}: {health.reason}"


def artifact_for(tx: Tx, state: RunState) -> ArtifactSpec | None:
    """What the run's deploy stages deploy: the artifact it was given, or the one it built."""
    if state.run.artifact_id is not None:
        found = tx.artifact(state.run.artifact_id)
        return to_spec(found) if found is not None else None
    return run_artifact(state)
