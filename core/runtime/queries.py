"""Questions about environments and runs, apart from commands: each reads in a transaction
of its own and changes nothing."""

from __future__ import annotations

from core.admission import Queue, QueueEntry, estimate_start
from core.blockers import Blocker, Facts, blockers
from core.environments import Environments
from core.freeze import active_freeze
from core.model import RunState
from core.ports import Store
from core.rollback import RollbackPlan, plan_rollback
from core.runtime.clock import Clock
from core.runtime.reading import view


class Queries:
    def __init__(self, store: Store, clock: Clock, environments: Environments) -> None:
        self.store = store
        self.clock = clock
        self.environments = environments

    def why(self, env: str, pipeline: str | None = None) -> list[Blocker]:
        """Every reason a deployment of ``pipeline`` to ``env`` would wait or be refused now."""
        with self.store.reading() as tx:
            now = self.clock()
            policy = self.environments.policy(env)
            _, queued = tx.environment_queue(env)
            freeze = active_freeze(policy.freezes, now)
            unpromoted = None
            previous = self.environments.required_previous(env)
            newest = tx.newest_artifact_of(pipeline) if pipeline and previous else None
            if newest is not None and previous is not None and not tx.deployed_ok(newest.id, previous):
                unpromoted = (newest.ref, previous)
            facts = Facts(
                environment=env,
                view=view(tx, self.environments, env, None, now),
                policy=policy,
                queued=len(queued),
                freeze_until=freeze.until if freeze is not None else None,
                pipeline=pipeline,
                archived=bool(pipeline and tx.is_archived(pipeline)),
                unpromoted=unpromoted,
            )
            return blockers(facts)

    def queue(self, env: str) -> Queue:
        """What deploys to ``env`` now and what waits, in order, with estimated starts."""
        with self.store.reading() as tx:
            now = self.clock()
            busy, queued = tx.environment_queue(env)
            took = [
                (d.finished_at - d.started_at).total_seconds()
                for d in tx.deployments_to(env, 20)
                if d.started_at is not None and d.status == "succeeded"
            ]
            typical = sum(took) / len(took) if took else None
            since = None
            if busy is not None:
                state = tx.load_run(busy[0])
                stage = (
                    next((s for s in state.stages if s.environment == env and s.started_at), None)
                    if state
                    else None
                )
                since = stage.started_at if stage else None
            entries = [
                QueueEntry(run_id, ref, i + 1, estimate_start(i + 1, typical, since, now))
                for i, (run_id, ref) in enumerate(queued)
            ]
            return Queue(env, busy, since, entries, typical)

    def rollback_plan(self, env: str, to: str | None = None) -> RollbackPlan:
        """What ``rollback`` of ``env`` would deploy (for the confirmation people see first)."""
        with self.store.reading() as tx:
            return plan_rollback(env, tx.deployments_to(env, 200), tx.artifact, to)

    def find_run(self, ref: str) -> RunState | None:
        with self.store.transaction() as tx:
            return tx.find_run(ref)
