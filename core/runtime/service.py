"""The one entry point for every change: ``Service.handle(command)``, or ``Service.commit``
for a batch (the orchestrator's group commit).

Slack, the REST API, the CLI, the scheduler and runners all come through here. Each command
is handled in one transaction (``core.runtime.handling``): read what it needs, decide
(``core.engine``, pure), write the decision as conditional updates with its events and audit
entry (``core.runtime.writes``). If another writer changed the run first (``Conflict``), the
whole command is decided again on fresh state. Claims, timers and queries live in their own
modules; this class holds them together for the adapters.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from core.admission import Queue
from core.assignment import Assignment
from core.blockers import Blocker
from core.commands import Command, EndVerification, RetryRun, TriggerRun, command_name
from core.definition import PipelineDef
from core.engine import Decision
from core.environments import Environments
from core.errors import Conflict, DefinitionError
from core.model import RunState
from core.ports import PipelineVersion, Store, Tx
from core.rollback import RollbackPlan
from core.runtime import timers
from core.runtime.claims import ClaimJobs, Claims, claim
from core.runtime.clock import Clock, utcnow
from core.runtime.handling import handle
from core.runtime.queries import Queries
from core.runtime.timers import Timers
from core.runtime.verification import rollback_after
from core.runtime.writes import write
from core.strategies import strategy_problems

log = logging.getLogger(__name__)

MICROSECOND = timedelta(microseconds=1)

#: how often a command is decided again after losing a compare-and-set race
CONFLICT_RETRIES = 20

Outcomes = tuple[list[Decision | Exception], list[list[Assignment] | Exception]]
#: what the caller of a command writes in the command's own transaction, right after the
#: decision (the REST API stores an ``Idempotency-Key``'s answer there); raising rolls the
#: command back and hands the exception to that caller
Then = Callable[[Tx, Decision], None]


class Service:
    def __init__(
        self,
        store: Store,
        clock: Clock = utcnow,
        audit_runner_reports: bool = True,
        environments: Environments | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.audit_runner_reports = audit_runner_reports
        #: the environments' rules (configuration, not pipeline files)
        self.environments = environments or Environments()
        self.claims = Claims(store, clock, self.environments)
        self.queries = Queries(store, clock, self.environments)

    # -- commands -------------------------------------------------------------------------
    def handle(self, command: Command, then: Then | None = None) -> Decision:
        """Decide and apply ``command`` atomically; retried on write conflicts."""
        outcome = self._alone(command, then)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def commit(
        self,
        commands: Sequence[Command],
        claims: Sequence[ClaimJobs],
        thens: Sequence[Then | None] = (),
    ) -> Outcomes:
        """Apply commands and runners' claims in one transaction (group commit).

        Commands on existing runs go first, in run-id order, then new runs, then the claims
        (which see the jobs those commands queued): every transaction takes its locks in one
        global order, so concurrent batches cannot deadlock. If anything fails, the batch is
        rolled back and each command and claim is applied on its own; one that fails outright
        gets its exception back instead of a result. A lone command takes this path too: the
        one way a command is applied. ``thens[i]``, if any, runs in the transaction right after
        ``commands[i]`` is written."""
        thens = list(thens) or [None] * len(commands)
        order = sorted(range(len(commands)), key=lambda i: _lock_order(commands[i]))
        try:
            with self.store.transaction() as tx:
                now = self.clock()
                tx.read_versions([c.run_id for c in commands if not isinstance(c, TriggerRun)])
                triggers = [(c.pipeline, c.idempotency_key) for c in commands if isinstance(c, TriggerRun)]
                decided: dict[int, Decision] = {}
                for k, i in enumerate(order):
                    if len(triggers) > 1 and isinstance(commands[i], TriggerRun):
                        tx.prepare_triggers(triggers)  # once, after the commands on existing runs
                        triggers = []
                    # a microsecond apart, so runs started in one batch still sort by creation
                    command, at = commands[i], now + k * MICROSECOND
                    decided[i] = self._apply(tx, command, at)
                    if (then := thens[i]) is not None:
                        then(tx, decided[i])
                if claims:  # (each claim's read sends what was decided before it)
                    taken = [claim(tx, request, now, self.environments) for request in claims]
            results: list[list[Assignment] | Exception] = list(taken) if claims else []
            return [decided[i] for i in range(len(commands))], results
        except Exception as exc:  # one command's trouble must not sink the others
            if not isinstance(exc, Conflict) and self.store.unreachable(exc) is not None:
                # nor is trying each alone any use: every one would fail (or wait) the same way
                return [exc] * len(commands), [exc] * len(claims)
            alone = [self._claim_alone(request) for request in claims]
            return [self._alone(c, then) for c, then in zip(commands, thens, strict=True)], alone

    def _apply(self, tx: Tx, command: Command, now: datetime) -> Decision:
        """Decide and write one command; a failed verification that rolls back starts its
        rollback run here, in the same transaction (``core.runtime.verification``)."""
        decision = handle(tx, command, now, self.environments)
        write(tx, command, decision, now, self.environments, self.audit_runner_reports)
        if isinstance(command, EndVerification):
            rolled = rollback_after(tx, decision, now, self.environments)
            if rolled is not None:
                decision.extra["rollback"] = rolled
        return decision

    def _alone(self, command: Command, then: Then | None = None) -> Decision | Exception:
        """``command`` in a transaction of its own, decided again after a lost race; a
        failure is returned, to be handed to that command's caller."""
        try:
            for attempt in range(CONFLICT_RETRIES):
                try:
                    with self.store.transaction() as tx:
                        now = self.clock()
                        decision = self._apply(tx, command, now)
                        if then is not None:
                            then(tx, decision)
                        return decision
                except Conflict:
                    time.sleep(min(0.002 * 2**attempt, 0.2) * random.random())  # let the winner finish
            raise Conflict(f"{command_name(command)} lost {CONFLICT_RETRIES} races in a row; try again")
        except Exception as exc:
            return exc

    def _claim_alone(self, request: ClaimJobs) -> list[Assignment] | Exception:
        try:
            return self.claims.claim_jobs(request.runner, request.limit, request.lease_s, request.labels)
        except Exception as exc:  # handed to that runner
            return exc

    # -- runners (``core.runtime.claims``) -----------------------------------------------------
    def claim_jobs(
        self, runner: str, limit: int, lease_s: float, labels: Sequence[str] = ()
    ) -> list[Assignment]:
        return self.claims.claim_jobs(runner, limit, lease_s, labels)

    def renew_leases(self, runner: str, held: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        return self.claims.renew_leases(runner, held, lease_s)

    def still_held(self, runner: str, held: Sequence[tuple[str, int]]) -> set[str]:
        return self.claims.still_held(runner, held)

    def jobs_held_by(self, runner: str) -> list[tuple[str, str, int]]:
        return self.claims.jobs_held_by(runner)

    def runs_over(self, run_ids: Sequence[str]) -> set[str]:
        return self.claims.runs_over(run_ids)

    # -- clocks (``core.runtime.timers``) ------------------------------------------------------
    def due(self, check_lease_s: float, limit: int = 100) -> Timers:
        """Everything the clock has made due (an automated gate check is claimed here)."""
        with self.store.transaction() as tx:
            return timers.due(tx, self.environments, self.clock(), check_lease_s, limit)

    # -- queries (``core.runtime.queries``) ----------------------------------------------------
    def why(self, env: str, pipeline: str | None = None) -> list[Blocker]:
        return self.queries.why(env, pipeline)

    def queue(self, env: str) -> Queue:
        return self.queries.queue(env)

    def rollback_plan(self, env: str, to: str | None = None) -> RollbackPlan:
        return self.queries.rollback_plan(env, to)

    def find_run(self, ref: str) -> RunState | None:
        return self.queries.find_run(ref)

    # -- pipelines -----------------------------------------------------------------------------
    def register_pipeline(
        self, definition: PipelineDef, source: str, source_path: str | None = None
    ) -> tuple[PipelineVersion, bool]:
        """Store ``definition`` as a new version unless that exact content is already the latest.
        Raises ``DefinitionError`` when its rollout strategies do not fit the configuration."""
        problems = strategy_problems(definition, self.environments)
        if problems:
            raise DefinitionError(problems)
        with self.store.transaction() as tx:
            return tx.add_version(definition, source, source_path, self.clock())

    def set_archived(self, name: str, archived: bool) -> bool:
        """Archived: no new runs of ``name``; its runs and versions stay readable."""
        with self.store.transaction() as tx:
            return tx.set_archived(name, archived)


def _lock_order(command: Command) -> tuple[int, str]:
    if isinstance(command, TriggerRun):
        return 1, command.pipeline
    if isinstance(command, RetryRun):
        return 1, command.run_id
    return 0, command.run_id
