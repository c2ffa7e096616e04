"""The one entry point for every change: ``Service.handle(command)``.

Slack, the REST API, the CLI, the scheduler and runners all call it. Each call is one
transaction: load the run, ``engine.decide``, apply the changes as conditional updates, append
the events, write the audit entry. If another writer changed the run first (``Conflict``),
the whole command is decided again on fresh state. Refused commands are audited too.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from core import engine
from core.access import authorize
from core.admission import EnvironmentView, Queue, QueueEntry, Views, admit, estimate_start
from core.artifacts import ArtifactSpec, as_built, check_deployable, parse_artifact_output, to_spec
from core.assignment import Assignment, for_gate_check, for_job, run_artifact
from core.blockers import Blocker, Facts, blockers
from core.commands import (
    ApproveGate,
    Command,
    CompleteJob,
    MoveToFront,
    RejectGate,
    RetryRun,
    TriggerRun,
    command_name,
)
from core.definition import PipelineDef, resolve_parameters
from core.engine import Decision
from core.environments import Environments
from core.errors import CommandRefused, Conflict, Forbidden, InvalidInput, NotFound
from core.freeze import active_freeze
from core.model import RunState, new_run_state
from core.ports import AuditEntry, Deployment, PipelineVersion, Store, Tx
from core.protection import only_deploy_to, protect
from core.review import open_review
from core.rollback import RollbackPlan, plan_rollback
from core.states import RUN_TERMINAL, STAGE_DONE, JobStatus, RunStatus

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]

MICROSECOND = timedelta(microseconds=1)

#: how far down an environment's queue the timer looks for a run that may go (break glass)
QUEUE_SCAN = 20

#: how often a command is decided again after losing a compare-and-set race
CONFLICT_RETRIES = 20


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimJobs:
    """A runner asks for up to ``limit`` queued jobs under a lease of ``lease_s``."""

    runner: str
    limit: int
    lease_s: float


@dataclass(frozen=True, slots=True)
class Timers:
    """What the clock has made due: the orchestrator turns each into a command."""

    expired: list[tuple[str, str, int]]  #: (run_id, job_id, attempt)
    gate_deadlines: list[tuple[str, str]]  #: (run_id, gate_id)
    gate_checks: list[Assignment]
    run_deadlines: list[str] = field(default_factory=list)  #: run ids past their timeout
    #: queued runs that may now enter their environment (the head of a free one's queue)
    admissions: list[str] = field(default_factory=list)
    #: (run id, ref of the newer run) for queued runs a newer one supersedes
    superseded: list[tuple[str, str]] = field(default_factory=list)


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

    # -- commands -------------------------------------------------------------------------
    def handle(self, command: Command) -> Decision:
        """Decide and apply ``command`` atomically; retried on write conflicts."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                with self.store.transaction() as tx:
                    return self._apply(tx, command, self.clock())
            except Conflict:
                time.sleep(min(0.002 * 2**attempt, 0.2) * random.random())  # let the winner finish
                continue
        raise Conflict(f"{command_name(command)} lost {CONFLICT_RETRIES} races in a row; try again")

    def handle_many(self, commands: Sequence[Command]) -> list[Decision | Exception]:
        """Apply several commands in one transaction (see ``commit``)."""
        return self.commit(commands, ())[0]

    def commit(
        self, commands: Sequence[Command], claims: Sequence[ClaimJobs]
    ) -> tuple[list[Decision | Exception], list[list[Assignment] | Exception]]:
        """Apply commands and runners' claims in one transaction (group commit).

        Commands on existing runs go first, in run-id order, then new runs, then the claims
        (which see the jobs those commands queued): every transaction takes its locks in one
        global order, so concurrent batches cannot deadlock. If anything fails, the batch is
        rolled back and each command and claim is applied on its own; one that fails outright
        gets its exception back instead of a result."""
        if len(commands) + len(claims) == 1 and commands:
            return [self._handle_alone(commands[0])], []
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
                    decided[i] = self._apply(tx, commands[i], now + k * MICROSECOND)
                if claims:
                    tx.flush_writes()
                    taken = [self._claim(tx, claim, now) for claim in claims]
            results: list[list[Assignment] | Exception] = list(taken) if claims else []
            return [decided[i] for i in range(len(commands))], results
        except Exception:  # one command's trouble must not sink the others
            alone = [self._claim_alone(claim) for claim in claims]
            return [self._handle_alone(command) for command in commands], alone

    def _handle_alone(self, command: Command) -> Decision | Exception:
        try:
            return self.handle(command)
        except Exception as exc:  # handed to that command's caller
            return exc

    def _apply(self, tx: Tx, command: Command, now: datetime) -> Decision:
        decision = self._decide(tx, command, now)
        if decision.accepted and not decision.duplicate:
            state = decision.state
            assert state is not None
            if decision.created:
                assert isinstance(command, TriggerRun | RetryRun)
                tx.insert_run(state, command.report_to)
                if state.run.break_glass is not None:
                    envs = {s.environment for s in state.stages if s.environment}
                    within = min(
                        (self.environments.policy(e).break_glass_review for e in envs), default=86400.0
                    )
                    tx.open_review(
                        open_review(state.run.id, state.run.triggered_by, state.run.break_glass, now, within)
                    )
            else:
                assert decision.expect_version is not None
                tx.apply(state, decision.expect_version, decision.changes)
            tx.append_events(decision.events)
            for deployment in _deployments(decision):
                built = self.artifact_for(tx, state) if state is not None else None
                if built is not None:
                    found = tx.artifact(built.ref)
                    deployment = replace(
                        deployment, artifact=built.ref, artifact_id=found.id if found is not None else None
                    )
                tx.record_deployment(deployment)
                if deployment.kind == "rollback" and deployment.status == "succeeded":
                    why = (
                        f"rolled back to {deployment.artifact or 'an earlier artifact'} by "
                        f"{deployment.triggered_by} ({state.run.ref if state else ''}); acknowledge "
                        "before deploying again"
                    )
                    if tx.lock_after_rollback(deployment.environment, why, now):
                        tx.audit(
                            AuditEntry(
                                at=now,
                                actor="shipyard",
                                channel="system",
                                action="lock_environment",
                                target=deployment.environment,
                                outcome="accepted",
                                reason=why,
                                detail={"kind": "rollback", "run_id": deployment.run_id},
                            )
                        )
        if self._audited(command, decision):
            tx.audit(_audit_entry(command, decision, now))
        return decision

    def _decide(self, tx: Tx, command: Command, now: datetime) -> Decision:
        state = None if isinstance(command, TriggerRun) else tx.find_run(command.run_id)
        if state is None and not isinstance(command, TriggerRun):
            return engine.reject(f"no run {command.run_id!r}", kind="not_found")
        try:  # the one access check, whichever door the command came through
            gated = isinstance(command, ApproveGate | RejectGate)
            authorize(state, command, tx.grants_of(command.actor.name) if gated else ())
        except Forbidden as exc:
            return engine.reject(exc.message, state, exc.kind)
        if isinstance(command, TriggerRun):
            return self._trigger(tx, command, now)
        assert state is not None
        if isinstance(command, RetryRun):
            return self._retry(tx, state, command, now)
        if isinstance(command, MoveToFront) and command.before is None:
            command = replace(command, before=tx.queue_head_at(state))
        if (
            isinstance(command, CompleteJob)
            and command.outcome == "succeeded"
            and "artifact" in command.outputs
        ):
            command = self._register_artifact(tx, state, command, now)
        return engine.decide(state, command, now, self._views(tx, state.run.id, now))

    def _deploy_artifact(self, tx: Tx, command: TriggerRun) -> TriggerRun:
        """A promotion or rollback: the artifact must be registered and not marked bad, and a
        promotion must have passed the environment before its target on the path."""
        artifact = tx.artifact(command.artifact_id or "")
        if artifact is None:
            raise NotFound(f"no artifact {command.artifact_id!r} is registered")
        check_deployable(artifact)
        env = command.deploy_to
        if env is None:
            raise InvalidInput(f"say which environment to deploy {artifact.ref} to")
        previous = self.environments.required_previous(env)
        if command.kind == "promotion" and previous is not None and not tx.deployed_ok(artifact.id, previous):
            raise Forbidden(
                f"{artifact.ref} has not been deployed successfully to {previous} yet; "
                f"promote it to {previous} first (the path is {' → '.join(self.environments.path)})"
            )
        building = tx.load_run(artifact.run_id) if artifact.run_id else None
        return as_built(command, artifact, building.run if building is not None else None)

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
                view=self.view(tx, env, None, now),
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

    def _register_artifact(self, tx: Tx, state: RunState, report: CompleteJob, now: datetime) -> CompleteJob:
        """A job that built an artifact registers it with its report; if the registry refuses
        it (a mutable version, a digest that differs from the one registered), the job fails
        saying why instead of deploying something that is not what it claims."""
        job = state.job(report.job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.attempt != report.attempt:
            return report  # a stale report: the engine refuses it
        try:
            tx.register_artifact(parse_artifact_output(report.outputs["artifact"]), state.run, now)
        except CommandRefused as exc:
            return replace(report, outcome="failed", detail=f"artifact refused: {exc.message}")
        return report

    def artifact_for(self, tx: Tx, state: RunState) -> ArtifactSpec | None:
        """What the run's deploy stages deploy: the artifact it was given, or the one it built."""
        if state.run.artifact_id is not None:
            found = tx.artifact(state.run.artifact_id)
            return to_spec(found) if found is not None else None
        return run_artifact(state)

    def _views(self, tx: Tx, run_id: str, now: datetime) -> Views:
        return _LazyViews(lambda env: self.view(tx, env, run_id, now))

    def view(self, tx: Tx, env: str, run_id: str | None, now: datetime) -> EnvironmentView:
        """What stands between ``run_id`` and ``env`` now (read in this transaction)."""
        busy, first = tx.environment_queue(env, limit=1)
        head = first[0] if first else (None, None)
        freeze = active_freeze(self.environments.policy(env).freezes, now)
        bad = None
        state = tx.load_run(run_id) if run_id is not None else None
        spec = self.artifact_for(tx, state) if state is not None else None
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
            freeze_fails=self.environments.policy(env).on_freeze == "fail",
            bad_artifact=bad,
        )

    def _trigger(self, tx: Tx, command: TriggerRun, now: datetime) -> Decision:
        if command.artifact_id is not None:
            try:
                command = self._deploy_artifact(tx, command)
            except CommandRefused as exc:
                return engine.reject(exc.message, kind=exc.kind)
        version = tx.latest_version(command.pipeline)
        if version is None:
            if tx.is_archived(command.pipeline):
                return engine.reject(f"pipeline {command.pipeline!r} is archived; restore it to run it")
            known = ", ".join(tx.pipeline_names()) or "none yet"
            return engine.reject(f"unknown pipeline {command.pipeline!r} (known: {known})", kind="not_found")
        if command.pipeline_version is not None and command.pipeline_version != version.version:
            pinned = tx.version_by_number(command.pipeline, command.pipeline_version)
            if pinned is None:
                return engine.reject(
                    f"{command.pipeline} has no version {command.pipeline_version} "
                    f"(latest: {version.version})",
                    kind="not_found",
                )
            version = pinned
        number = tx.next_run_number(command.pipeline)  # also serializes triggers of this pipeline
        if command.idempotency_key:
            existing = tx.run_by_idempotency_key(command.pipeline, command.idempotency_key)
            if existing is not None:
                return Decision(
                    engine.Outcome.ACCEPTED,
                    state=existing,
                    duplicate=True,
                    reason=f"already triggered as {existing.run.ref}",
                )
        try:
            parameters = resolve_parameters(version.definition, command.parameters)
        except CommandRefused as exc:
            return engine.reject(exc.message, kind=exc.kind)
        run_id = uuid.uuid4().hex
        fresh = new_run_state(
            run_id=run_id,
            number=number,
            definition=version.definition,
            pipeline_version=version.version,
            version_id=version.id,
            parameters=parameters,
            source_revision=command.source_revision,
            actor=command.actor,
            idempotency_key=command.idempotency_key,
            retry_of=None,
            now=now,
            requested_by=command.requested_by,
            branch=command.branch,
            kind=command.kind,
            artifact_id=command.artifact_id,
            break_glass=command.break_glass,
        )
        try:
            if command.deploy_to is not None:
                fresh = only_deploy_to(fresh, command.deploy_to, f"{command.kind} to {command.deploy_to}")
            fresh = protect(fresh, self.environments)
        except CommandRefused as exc:
            return engine.reject(exc.message, kind=exc.kind)
        return engine.start(fresh, now, environments=self._views(tx, run_id, now))

    def _retry(self, tx: Tx, old: RunState, command: RetryRun, now: datetime) -> Decision:
        if old.run.status not in (RunStatus.FAILED, RunStatus.CANCELED):
            return engine.reject(
                f"{old.run.ref} is {old.run.status}; only failed or canceled runs can be retried"
            )
        version = tx.version_by_id(old.run.version_id)
        assert version is not None
        fresh = new_run_state(
            run_id=uuid.uuid4().hex,
            number=tx.next_run_number(old.run.pipeline),
            definition=version.definition,
            pipeline_version=version.version,
            version_id=version.id,
            parameters=old.run.parameters,
            source_revision=old.run.source_revision,
            actor=command.actor,
            idempotency_key=None,
            retry_of=old.run.id,
            now=now,
            requested_by=old.run.requested_by or (old.run.triggered_by,),
            branch=old.run.branch,
            kind=old.run.kind,
            artifact_id=old.run.artifact_id,
        )
        try:
            if old.run.kind != "deploy":  # a promotion or rollback stays one: its target only
                artifact = tx.artifact(old.run.artifact_id or "")
                if artifact is None:
                    raise NotFound(f"the artifact {old.run.ref} deployed is no longer registered")
                check_deployable(artifact)
                target = old.run.deploy_to
                if target is None:
                    raise InvalidInput(f"{old.run.ref} is a {old.run.kind} that names no environment")
                fresh = only_deploy_to(fresh, target, f"{old.run.kind} to {target}")
            fresh = protect(fresh, self.environments)
            return engine.start(
                fresh,
                now,
                reuse=old,
                ignored_by=command.actor.name if command.ignore_failure else None,
                environments=self._views(tx, fresh.run.id, now),
            )
        except CommandRefused as exc:
            return engine.reject(exc.message, old, exc.kind)

    def _audited(self, command: Command, decision: Decision) -> bool:
        if command.actor.channel != "runner":
            return True
        return self.audit_runner_reports or not decision.accepted

    # -- runners --------------------------------------------------------------------------
    def claim_jobs(self, runner: str, limit: int, lease_s: float) -> list[Assignment]:
        """Hand up to ``limit`` queued jobs to ``runner`` under a lease."""
        if limit <= 0:
            return []
        with self.store.transaction() as tx:
            return self._claim(tx, ClaimJobs(runner=runner, limit=limit, lease_s=lease_s), self.clock())

    def _claim_alone(self, claim: ClaimJobs) -> list[Assignment] | Exception:
        try:
            return self.claim_jobs(claim.runner, claim.limit, claim.lease_s)
        except Exception as exc:  # handed to that runner
            return exc

    def _claim(self, tx: Tx, claim: ClaimJobs, now: datetime) -> list[Assignment]:
        candidates = tx.claimable_jobs(claim.limit)  # (job id, run id, run version), oldest first
        states: dict[str, RunState] = {}
        for _, run_id, _ in candidates:
            if run_id not in states and (loaded := tx.load_run(run_id)) is not None:
                states[run_id] = loaded
        won = []
        for job_id, run_id, _ in candidates:
            job = states[run_id].job(job_id) if run_id in states else None
            if job is not None:
                won.append(engine.claim(job, claim.runner, now, claim.lease_s))
        tx.apply_claims(won, {run_id: version for _, run_id, version in candidates})
        assignments, events = [], []
        for change in won:
            state = tx.load_run(change.id.split(".", 1)[0])
            claimed = state.job(change.id) if state is not None else None
            assert state is not None and claimed is not None
            events.append(engine.claimed(claimed, state.definition.stages[claimed.stage_index].name))
            assignments.append(for_job(state, claimed, self.artifact_for(tx, state)))
        tx.append_events(events)
        return assignments

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

    # -- clocks ---------------------------------------------------------------------------
    def due(self, check_lease_s: float, limit: int = 100) -> Timers:
        """Leases that expired, gate deadlines that passed, automated gate checks now due
        (each check is claimed by moving its next check time, so one process runs it)."""
        with self.store.transaction() as tx:
            now = self.clock()
            expired = [(j.run_id, j.id, j.attempt) for j in tx.expired_leases(now, limit)]
            deadlines, checks = [], []
            for gate in tx.due_gates(now, limit):
                if gate.deadline is not None and gate.deadline <= now and gate.kind == "manual":
                    deadlines.append((gate.run_id, gate.id))
                elif gate.kind == "automated" and tx.claim_gate_check(
                    gate, now + timedelta(seconds=gate.interval_s + check_lease_s)
                ):
                    state = tx.load_run(gate.run_id)
                    if state is not None and state.run.status not in RUN_TERMINAL:
                        checks.append(for_gate_check(state, gate))
            admissions, superseded = self._queues(tx, now)
            return Timers(expired, deadlines, checks, tx.overdue_runs(now, limit), admissions, superseded)

    def _queues(self, tx: Tx, now: datetime) -> tuple[list[str], list[tuple[str, str]]]:
        """For each environment with runs waiting: under ``supersede``, all but the newest run
        of each pipeline give way; the head of the queue is admitted if nothing is in its way."""
        admissions: list[str] = []
        superseded: list[tuple[str, str]] = []
        for env in tx.queued_environments():
            _, queued = tx.environment_queue(env)
            if self.environments.policy(env).concurrency == "supersede":
                newest: dict[str, tuple[int, str]] = {}  # pipeline -> (number, ref) of its newest run
                for _, ref in queued:
                    pipeline, number = ref.rsplit("#", 1)
                    newest[pipeline] = max(newest.get(pipeline, (0, "")), (int(number), ref))
                for run_id, ref in queued:
                    keep = newest[ref.rsplit("#", 1)[0]][1]
                    if ref != keep:
                        superseded.append((run_id, keep))
                gone = {r for r, _ in superseded}
                queued = [q for q in queued if q[0] not in gone]
            admitted = False
            for run_id, _ in queued[:QUEUE_SCAN]:
                state = tx.load_run(run_id)
                if state is None:
                    continue
                verdict = admit(self.view(tx, env, run_id, now), state.run)
                if verdict.outcome != "wait" and not admitted:
                    admissions.append(run_id)  # the head, or one breaking the glass behind it
                    admitted = True  # (a freeze that fails runs fails it on admission)
                elif verdict.outcome == "wait" and verdict.reason != state.run.reason:
                    admissions.append(run_id)  # what it waits for changed: its message must say so
        return admissions, superseded

    # -- pipelines ------------------------------------------------------------------------
    def register_pipeline(
        self, definition: PipelineDef, source: str, source_path: str | None = None
    ) -> tuple[PipelineVersion, bool]:
        """Store ``definition`` as a new version unless that exact content is already the latest."""
        with self.store.transaction() as tx:
            return tx.add_version(definition, source, source_path, self.clock())

    def set_archived(self, name: str, archived: bool) -> bool:
        """Archived: no new runs of ``name``; its runs and versions stay readable."""
        with self.store.transaction() as tx:
            return tx.set_archived(name, archived)

    def find_run(self, ref: str) -> RunState | None:
        with self.store.transaction() as tx:
            return tx.find_run(ref)


class _LazyViews(Mapping[str, EnvironmentView]):
    """Environment views read on first use: most decisions never reach a deploy stage."""

    def __init__(self, load: Callable[[str], EnvironmentView]) -> None:
        self._load = load
        self._seen: dict[str, EnvironmentView] = {}

    def __getitem__(self, env: str) -> EnvironmentView:
        if env not in self._seen:
            self._seen[env] = self._load(env)
        return self._seen[env]

    def __iter__(self) -> Iterator[str]:
        return iter(self._seen)

    def __len__(self) -> int:
        return len(self._seen)


def _deployments(decision: Decision) -> list[Deployment]:
    """Deploy stages this decision finished (only those that started: a stage canceled at its
    gate deployed nothing)."""
    state = decision.state
    assert state is not None
    found = []
    for event in decision.events:
        if event.subject != "stage" or event.to_status not in STAGE_DONE:
            continue
        stage = next((s for s in state.stages if s.id == event.subject_id), None)
        if stage is None or stage.environment is None or stage.started_at is None:
            continue
        run = state.run
        found.append(
            Deployment(
                environment=stage.environment,
                pipeline=run.pipeline,
                run_id=run.id,
                run_number=run.number,
                stage=stage.name,
                status=str(stage.status),
                revision=run.source_revision,
                parameters=dict(run.parameters),
                triggered_by=run.triggered_by,
                started_at=stage.started_at,
                finished_at=stage.finished_at or event.at,
                kind=run.kind,
            )
        )
    return found


def _lock_order(command: Command) -> tuple[int, str]:
    if isinstance(command, TriggerRun):
        return 1, command.pipeline
    if isinstance(command, RetryRun):
        return 1, command.run_id
    return 0, command.run_id


def _audit_entry(command: Command, decision: Decision, now: datetime) -> AuditEntry:
    target = getattr(command, "run_id", None) or getattr(command, "pipeline", "")
    if decision.state is not None:
        target = decision.state.run.ref
    detail: dict[str, object] = {}
    if decision.state is not None:
        detail["run_id"] = decision.state.run.id
    for key in (
        "gate",
        "job_id",
        "attempt",
        "reason",
        "comment",
        "source_revision",
        "idempotency_key",
        "branch",
        "artifact_id",
        "deploy_to",
        "break_glass",
    ):
        value = getattr(command, key, None)
        if value:
            detail[key] = value
    if isinstance(command, TriggerRun):
        detail["parameters"] = {k: str(v) for k, v in command.parameters.items()}
        if command.kind != "deploy":
            detail["kind"] = command.kind
    outcome = "duplicate" if decision.duplicate else str(decision.outcome)
    return AuditEntry(
        at=now,
        actor=command.actor.name,
        channel=command.actor.channel,
        action=command_name(command),
        target=str(target),
        outcome=outcome,
        reason=decision.reason,
        detail=detail,
    )
