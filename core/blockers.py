"""Why can't I deploy? Every reason a deployment to an environment would wait or be refused
right now, all at once, each with what (or when) clears it. Pure: the service gathers the facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from core.admission import EnvironmentView
from core.environments import EnvironmentPolicy, branch_refusal, pipeline_refusal
from core.model import RunState
from core.states import GateStatus, RunStatus, StageStatus


@dataclass(frozen=True, slots=True)
class Blocker:
    kind: str  #: lock, freeze, health, busy, queue, approvals, promotion, pipeline, archived
    what: str
    clears: str


@dataclass(frozen=True, slots=True)
class Facts:
    """What the service read for one environment (and optionally one pipeline)."""

    environment: str
    view: EnvironmentView
    policy: EnvironmentPolicy
    queued: int = 0
    freeze_until: datetime | None = None
    pipeline: str | None = None
    archived: bool = False
    #: the pipeline's newest artifact and the environment it has yet to pass, if any
    unpromoted: tuple[str, str] | None = None


def blockers(f: Facts) -> list[Blocker]:
    env, view, found = f.environment, f.view, []
    if view.lock:
        found.append(
            Blocker("lock", view.lock, f"its holder or an admin unlocks it (`/deploy unlock {env}`)")
        )
    if view.freeze:
        until = f"{f.freeze_until:%a %d %b %H:%M} UTC" if f.freeze_until else "the window ends"
        clears = f"at {until}" + ("" if f.policy.on_freeze == "wait" else "; runs meeting it fail meanwhile")
        found.append(Blocker("freeze", view.freeze, clears + " (or an admin's --break-glass)"))
    if view.unhealthy:
        found.append(
            Blocker(
                "health",
                view.unhealthy,
                "when its health checks pass again (a rollback, `/deploy rollback "
                f"{env}`, or an admin's --break-glass goes on meanwhile)",
            )
        )
    if view.busy_with:
        found.append(Blocker("busy", f"{view.busy_with} is deploying to {env}", "when it finishes"))
    if f.queued:
        found.append(
            Blocker(
                "queue",
                f"{f.queued} run(s) wait in {env}'s queue",
                "after they deploy (first come, first served)",
            )
        )
    if f.policy.approvals is not None:
        rule = f.policy.approvals
        who = ", ".join(rule.approvers)
        found.append(
            Blocker(
                "approvals", f"needs {rule.count} approval(s) from {who}", "when they approve the run's gate"
            )
        )
    if f.pipeline is not None:
        if f.archived:
            found.append(
                Blocker("archived", f"pipeline {f.pipeline} is archived", "when an admin restores it")
            )
        refusal = pipeline_refusal(f.policy, env, f.pipeline)
        if refusal:
            found.append(Blocker("pipeline", refusal, "only an admin's configuration change"))
        branches = f.policy.branches
        if branches and branch_refusal(f.policy, env, None):
            found.append(
                Blocker(
                    "branch",
                    f"only branches {', '.join(branches)} may deploy to {env}",
                    "deploy from one of them",
                )
            )
        if f.unpromoted is not None:
            artifact, previous = f.unpromoted
            found.append(
                Blocker(
                    "promotion",
                    f"{artifact} has not been deployed successfully to {previous}",
                    f"when it succeeds in {previous} (`/deploy promote {artifact} to {previous}`)",
                )
            )
    return found


#: what an environment holds that keeps a run queued for it there
HOLDS = ("lock", "freeze", "health", "busy", "queue")


def run_blockers(
    state: RunState, environment: Sequence[Blocker] = (), waits: Mapping[str, str] | None = None
) -> list[Blocker]:
    """What a run waits for now, in the words above: paused, a gate and who may clear it, what
    holds the environment it queues for (``environment``: ``blockers`` of it), and jobs no
    online runner can take (``waits``: ``core.labels.runner_waits``, by job id)."""
    run, ref, found = state.run, state.run.ref, []
    if run.status is RunStatus.PAUSED:
        said = f"{ref} is paused" + (f": {run.reason}" if run.reason else "")
        found.append(Blocker("paused", said, f"when someone resumes it (`/deploy resume {ref}`)"))
    for gate in state.gates:
        if gate.status is not GateStatus.OPEN:
            continue
        if gate.kind == "manual":
            who = ", ".join(gate.approvers) or "anyone with the approver role"
            what = (
                f"gate {gate.stage_name} needs {gate.min_approvals} approval(s) from {who} "
                f"({len(gate.approvals)} so far)"
            )
            found.append(Blocker("approvals", what, f"when they approve it (`/deploy approve {ref}`)"))
        else:
            found.append(
                Blocker("check", f"gate {gate.stage_name} waits for its {gate.kind} check", "when it passes")
            )
    if any(s.status is StageStatus.QUEUED for s in state.stages) or run.status is RunStatus.QUEUED:
        found.extend(b for b in environment if b.kind in HOLDS)
    for job in state.jobs:
        if waits and job.id in waits:
            start = (
                f"`shipyard runner --labels {','.join(job.labels)}`" if job.labels else "`shipyard runner`"
            )
            what = f"{state.stages[job.stage_index].name}/{job.name} is {waits[job.id]}"
            found.append(
                Blocker("runner", what, f"when one comes online (start one: {start}; docs/runners.md)")
            )
    return found
