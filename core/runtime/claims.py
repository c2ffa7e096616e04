"""Runners' claims on queued jobs, and the leases that keep them.

A claim moves a queued job to running under a lease, and its attempt number becomes the
fencing token every later report must carry. Claims ride along with the orchestrator's group
commit (``claim``) or take a transaction of their own (``Claims.claim_jobs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from core import engine
from core.assignment import Assignment, for_job
from core.environments import Environments
from core.errors import Conflict
from core.model import RunState
from core.ports import Store, Tx
from core.runtime.clock import Clock
from core.runtime.reading import artifact_for
from core.secrets import secrets_environment


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimJobs:
    """A runner asks for up to ``limit`` queued jobs under a lease of ``lease_s``."""

    runner: str
    limit: int
    lease_s: float
    #: the labels it carries: it is handed only jobs that need no others (``core.labels``)
    labels: tuple[str, ...] = ()


def claim(
    tx: Tx, request: ClaimJobs, now: datetime, environments: Environments | None = None
) -> list[Assignment]:
    """Hand the oldest claimable jobs to the runner, in ``tx``; ``environments``' required
    runner labels decide whether it may hold a deploy job's secrets."""
    config = environments or Environments()
    # (job id, run id, run version), oldest first
    candidates = tx.claimable_jobs(request.limit, request.runner, request.labels)
    states: dict[str, RunState] = {}
    for _, run_id, _ in candidates:
        if run_id not in states and (loaded := tx.load_run(run_id)) is not None:
            states[run_id] = loaded
    won = []
    for job_id, run_id, _ in candidates:
        job = states[run_id].job(job_id) if run_id in states else None
        if job is not None:
            won.append(engine.claim(job, request.runner, now, request.lease_s))
    tx.apply_claims(won, {run_id: version for _, run_id, version in candidates})
    assignments, events = [], []
    for change in won:
        state = tx.load_run(change.id.split(".", 1)[0])
        claimed = state.job(change.id) if state is not None else None
        assert state is not None and claimed is not None
        events.append(engine.claimed(claimed, state.definition.stages[claimed.stage_index].name))
        assignment = for_job(state, claimed, artifact_for(tx, state))
        stage_env = state.stages[claimed.stage_index].environment
        required = config.policy(stage_env).runner_labels if stage_env else []
        if (environment := secrets_environment(state, claimed, request.labels, required)) is not None:
            sealed = tx.sealed_secrets(environment)
            assignment = replace(assignment, secrets_from=environment, sealed=sealed)
        assignments.append(assignment)
    tx.append_events(events)
    return assignments


class Claims:
    """Claims and leases, each in a transaction of its own."""

    def __init__(self, store: Store, clock: Clock, environments: Environments | None = None) -> None:
        self.store = store
        self.clock = clock
        self.environments = environments or Environments()

    def claim_jobs(
        self, runner: str, limit: int, lease_s: float, labels: Sequence[str] = ()
    ) -> list[Assignment]:
        """Hand up to ``limit`` queued jobs that ``labels`` satisfy to ``runner`` under a lease."""
        if limit <= 0:
            return []
        request = ClaimJobs(runner=runner, limit=limit, lease_s=lease_s, labels=tuple(labels))
        with self.store.transaction() as tx:
            return claim(tx, request, self.clock(), self.environments)

    def renew_leases(self, runner: str, held: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        """Extend the leases ``runner`` still rightfully holds; the rest must be killed. One
        short transaction per job, so a renewal never holds one row while waiting for another."""
        kept = set()
        for job_id, attempt in held:
            try:
                with self.store.transaction() as tx:
                    if tx.renew_lease(runner, job_id, attempt, self.clock() + timedelta(seconds=lease_s)):
                        kept.add(job_id)
            except Conflict:
                kept.add(job_id)  # undecided: keep running, the next heartbeat asks again
        return kept

    def still_held(self, runner: str, held: Sequence[tuple[str, int]]) -> set[str]:
        """Which of these attempts ``runner`` still rightfully runs (a read; nothing changes)."""
        if not held:
            return set()
        with self.store.transaction() as tx:
            return tx.held_attempts(runner, held)

    def jobs_held_by(self, runner: str) -> list[tuple[str, str, int]]:
        with self.store.transaction() as tx:
            return [(j.run_id, j.id, j.attempt) for j in tx.jobs_held_by(runner)]

    def runs_over(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs are over (ended, or unknown here): a runner removes their
        workspaces (``core.runtime.workspaces``)."""
        if not run_ids:
            return set()
        with self.store.reading() as tx:
            return set(run_ids) - tx.runs_going_on(run_ids)
