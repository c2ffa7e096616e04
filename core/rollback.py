"""Rollback: a new run that deploys a known-good artifact again (never an undo of the last run).

The target is the artifact of the most recent successful deployment to the environment whose
artifact differs from the latest deployment's (so a rollback after a failed deploy goes back to
what last worked, and after a suspicious success to what came before it), skipping artifacts
marked bad and versions a rollback replaced (with their older deployments too): a version
people rolled back from was not known to be good, so a second or third rollback goes further
back rather than forward to it, unless it was deployed again since. After a
rollback that failed, it is that rollback's target again, and never the version people were
escaping (even once that target is marked bad). ``to`` picks a version by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.artifacts import Artifact
from core.errors import InvalidInput, NotFound
from core.ports import Deployment


@dataclass(frozen=True, slots=True)
class RollbackPlan:
    environment: str
    pipeline: str
    #: what is there now (the latest deployment), if anything was deployed
    current: Deployment | None
    target: Artifact

    def describe(self) -> str:
        now = self.current.artifact if self.current is not None and self.current.artifact else "what runs now"
        return f"roll {self.environment} back from {now} to {self.target.ref}"


def plan_rollback(
    environment: str,
    history: Sequence[Deployment],
    artifact: Callable[[str], Artifact | None],
    to: str | None = None,
) -> RollbackPlan:
    """``history``: the environment's deployments, newest first. ``artifact`` finds one by id or
    ``name@version``. Raises ``NotFound``/``InvalidInput`` with what is missing."""
    with_artifacts = [d for d in history if d.artifact_id]
    if not with_artifacts:
        raise NotFound(
            f"nothing with an artifact was ever deployed to {environment}: nothing to roll back to"
        )
    current = history[0] if history else None
    latest = with_artifacts[0]
    if to is not None:
        ref = to if "@" in to else f"{(latest.artifact or '').split('@')[0]}@{to}"
        target = artifact(ref)
        if target is None:
            raise NotFound(f"no artifact {ref} is registered: it cannot be deployed again")
        if target.bad:
            raise InvalidInput(f"{target.ref} is marked bad ({target.bad_reason}); pick another version")
        pipeline = next((d.pipeline for d in with_artifacts if d.artifact_id == target.id), latest.pipeline)
        return RollbackPlan(environment, target.pipeline or pipeline, current, target)
    if current is not None and current.kind == "rollback" and current.status != "succeeded":
        again = artifact(current.artifact_id or "")  # a rollback that failed: its target again
        if again is not None and not again.bad:
            return RollbackPlan(environment, current.pipeline, current, again)
    avoid = {current.artifact_id if current is not None else None}  # what is there now
    escaping = _escaping(current, with_artifacts)
    if escaping is not None:
        avoid.add(escaping.artifact_id)
    fled_from = _fled_from(history)
    skipped: list[str] = []
    fled: list[str] = []
    for deployment in with_artifacts:
        if deployment.status != "succeeded" or deployment.artifact_id in avoid:
            continue
        if any(deployment is d for d in fled_from):
            fled.append(deployment.artifact or "?")
            continue
        found = artifact(deployment.artifact_id or "")
        if found is None or found.bad:
            skipped.append(deployment.artifact or "?")
            continue
        return RollbackPlan(environment, deployment.pipeline, current, found)
    raise NotFound(
        f"no earlier good deployment to {environment} to roll back to{_passed_over(escaping, fled, skipped)}"
    )


def _fled_from(history: Sequence[Deployment]) -> list[Deployment]:
    """The deployments that are no evidence their artifact is good: each one a rollback
    replaced, and every older deployment of its artifact (so a chain of rollbacks never lands
    on one). A deployment of it since such a rollback still counts."""
    gone: set[str | None] = set()
    found: list[Deployment] = []
    newer: Deployment | None = None
    for deployment in history:
        if newer is not None and newer.kind == "rollback" and deployment.status == "succeeded":
            gone.add(deployment.artifact_id)
        if deployment.artifact_id in gone:
            found.append(deployment)
        newer = deployment
    return found


def _escaping(current: Deployment | None, with_artifacts: Sequence[Deployment]) -> Deployment | None:
    """After a rollback that failed, the deployment it was rolling back from: never the way
    forward (its target marked bad since, the one before goes in, not the one people fled)."""
    if current is None or current.kind != "rollback" or current.status == "succeeded":
        return None
    return next((d for d in with_artifacts if d.kind != "rollback"), None)


def _passed_over(escaping: Deployment | None, fled: Sequence[str], skipped: Sequence[str]) -> str:
    if escaping is None and not fled:
        return f" (passed over, no longer deployable: {', '.join(skipped)})" if skipped else ""
    parts = [f"{escaping.artifact or '?'}, being rolled back from"] if escaping is not None else []
    parts += [f"{ref}, rolled back from" for ref in dict.fromkeys(fled)]
    if skipped:
        parts.append(f"no longer deployable: {', '.join(skipped)}")
    return f" (passed over: {'; '.join(parts)})"
