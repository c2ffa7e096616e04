"""The domain model: a run and the stages, jobs and gates it is made of.

Entities are frozen dataclasses; a change is a new value. ``RunState`` is the aggregate the
engine decides on: one run with all of its parts and the pipeline version it started from.
Child ids are derived from the run id (``<run>.s1``, ``<run>.s1.j0``, ``<run>.g1``), so
building a run needs no id generator and a gate can be named by its stage in URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from core.definition import PipelineDef
from core.labels import needed
from core.rollout import Rollout
from core.states import (
    JOB_DONE,
    JOB_FAILURES,
    RUN_TERMINAL,
    GateStatus,
    JobStatus,
    RunStatus,
    StageStatus,
)

if TYPE_CHECKING:  # core.access reads the model, so the model names Principal for typing only
    from core.access import Principal

Channel = Literal["cli", "slack", "console", "rest", "web", "schedule", "webhook", "system", "runner"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked, and through which door.

    ``principal`` is what the door resolved the caller to hold (roles, groups), which
    ``core.access.authorize`` checks; None on the doors that act for an operator or for
    Shipyard itself (the CLI with database access, the system, runners, schedules, webhooks)."""

    name: str
    channel: Channel
    principal: Principal | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.name} via {self.channel}"


SYSTEM = Actor("shipyard", "system")


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    id: str
    number: int
    pipeline: str
    pipeline_version: int
    version_id: str
    status: RunStatus
    parameters: Mapping[str, str]
    source_revision: str | None
    triggered_by: str
    trigger_channel: str
    idempotency_key: str | None = None
    retry_of: str | None = None
    #: everyone who asked for this deployment: the trigger, and each retry back to the first
    #: run (none of them may approve its gates unless a gate allows self-approval)
    requested_by: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    reason: str = ""
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: when the run times out (the pipeline's ``timeout`` after it started), if it has one
    deadline: datetime | None = None
    #: the source branch the revision comes from (environments may allow only some branches)
    branch: str | None = None
    #: ``deploy`` (a run of the pipeline), ``promotion`` or ``rollback`` (deploy a known artifact)
    kind: str = "deploy"
    #: the artifact it deploys, when it was given one (promotion, rollback)
    artifact_id: str | None = None
    #: an admin pushed it through freezes and required approvals: why (None: no break glass)
    break_glass: str | None = None
    #: the one environment a promotion or rollback deploys to (its other stages are skipped);
    #: a retry deploys there again (None: a deploy, which runs every stage)
    deploy_to: str | None = None
    #: when the revision's commit was made (a push's head commit, ``revision_time`` on a trigger);
    #: None: unknown. DORA's lead time for changes starts there (``core.dora``)
    revision_time: datetime | None = None
    #: optimistic-lock counter: every accepted command bumps it with a compare-and-set
    version: int = 0

    @property
    def ref(self) -> str:
        """The short name people use: ``web#42``."""
        return f"{self.pipeline}#{self.number}"

    @property
    def is_finished(self) -> bool:
        return self.status in RUN_TERMINAL


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    id: str
    run_id: str
    index: int
    name: str
    environment: str | None
    status: StageStatus = StageStatus.PENDING
    reason: str = ""
    #: skipped by a retry that reused the work: the id of the run that did it
    reused_from: str | None = None
    #: when it joined its environment's queue: the order runs are admitted in
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: the environment's ``verify`` when the stage started (how long, and whether a failure
    #: rolls back), kept so the rule a deployment began under is the one it ends under
    verify_for: float | None = None
    verify_rollback: bool = False
    #: when its verification passes if nothing failed (set on entering ``verifying``); None
    #: while verifying once its analysis was inconclusive: then a person decides
    verify_until: datetime | None = None
    #: a stage with a ``strategy``: where its rollout stands (``core.rollout``)
    rollout: Rollout | None = None


@dataclass(frozen=True, slots=True)
class LostAttempt:
    """An attempt declared lost because its runner vanished (its server restarted, or it
    stopped renewing the lease), and the job was retried. Execution is at least once: if the
    attempt had in fact finished before its server died, its runner reports that late, and
    ``late_outcome`` and ``late_exit_code`` say how it ended, so a person can check the target
    the retry deployed to as well."""

    attempt: int
    runner: str | None
    reason: str
    late_outcome: str | None = None
    late_exit_code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    id: str
    run_id: str
    stage_index: int
    index: int
    name: str
    status: JobStatus = JobStatus.PENDING
    #: claim counter and fencing token: a runner's writes must name the attempt it claimed
    attempt: int = 0
    #: failed attempts so far; retries remain while failures <= retries
    failures: int = 0
    retries: int = 0
    allow_failure: bool = False
    timeout_s: float = 3600.0
    runner: str | None = None
    lease_expires_at: datetime | None = None
    exit_code: int | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""
    #: skipped by a retry that reused its outputs: the id of the run that made them
    reused_from: str | None = None
    #: attempts declared lost, oldest first, with a late result if one came
    lost: tuple[LostAttempt, ...] = ()
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: labels a runner must carry to claim it (``core.labels``), fixed when the run is laid out
    labels: tuple[str, ...] = ()

    @property
    def is_done(self) -> bool:
        return self.status in JOB_DONE

    @property
    def has_retries_left(self) -> bool:
        return self.failures <= self.retries

    @property
    def failed(self) -> bool:
        return self.status in JOB_FAILURES


@dataclass(frozen=True, slots=True)
class Approval:
    actor: str
    at: datetime
    comment: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    id: str
    run_id: str
    stage_index: int
    stage_name: str
    kind: Literal["manual", "automated", "external"]
    status: GateStatus = GateStatus.PENDING
    approvers: tuple[str, ...] = ()
    min_approvals: int = 1
    allow_self_approval: bool = False
    approvals: tuple[Approval, ...] = ()
    timeout_s: float | None = None
    on_timeout: Literal["reject", "approve"] = "reject"
    interval_s: float = 30.0
    deadline: datetime | None = None
    next_check_at: datetime | None = None
    decided_by: str | None = None
    reason: str = ""
    opened_at: datetime | None = None
    decided_at: datetime | None = None


Entity = Run | Stage | Job | Gate
E = TypeVar("E", Run, Stage, Job, Gate, "RunState")


_FIELDS: dict[type, tuple[tuple[str, ...], frozenset[str]]] = {}
_set = object.__setattr__


def evolve(entity: E, **changes: Any) -> E:
    """``dataclasses.replace`` for our slotted, frozen classes, without re-running ``__init__``:
    the engine makes thousands of these per second."""
    kind = type(entity)
    known = _FIELDS.get(kind)
    if known is None:
        known = _FIELDS[kind] = (kind.__slots__, frozenset(kind.__slots__))
    fields, names = known
    if not changes.keys() <= names:
        raise TypeError(f"{kind.__name__} has no field {sorted(changes.keys() - names)}")
    new = object.__new__(kind)
    for name in fields:
        _set(new, name, getattr(entity, name))
    for name, value in changes.items():
        _set(new, name, value)
    return new


@dataclass(frozen=True, slots=True)
class RunState:
    """A run with all its parts: the unit the engine decides on and the store saves."""

    run: Run
    stages: tuple[Stage, ...]
    jobs: tuple[Job, ...]
    gates: tuple[Gate, ...]
    definition: PipelineDef

    def jobs_of(self, stage_index: int) -> tuple[Job, ...]:
        return tuple(j for j in self.jobs if j.stage_index == stage_index)

    def gate_of(self, stage_index: int) -> Gate | None:
        return next((g for g in self.gates if g.stage_index == stage_index), None)

    def job(self, job_id: str) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def find_job(self, name: str) -> Job | None:
        """A job by id or by ``stage/job``."""
        return self.job(name) or next(
            (j for j in self.jobs if f"{self.stages[j.stage_index].name}/{j.name}" == name), None
        )

    def find_gate(self, name: str) -> Gate | None:
        """A gate by id or by its stage's name."""
        return next((g for g in self.gates if name in (g.id, g.stage_name)), None)

    @property
    def current_stage(self) -> Stage | None:
        """The first stage that has not finished."""
        return next((s for s in self.stages if s.status not in _STAGE_FINISHED), None)


_STAGE_FINISHED = frozenset(
    {
        StageStatus.SUCCEEDED,
        StageStatus.PARTIAL,
        StageStatus.FAILED,
        StageStatus.CANCELED,
        StageStatus.SKIPPED,
    }
)


def stage_id(run_id: str, index: int) -> str:
    return f"{run_id}.s{index}"


def job_id(run_id: str, stage_index: int, index: int) -> str:
    return f"{run_id}.s{stage_index}.j{index}"


def gate_id(run_id: str, stage_index: int) -> str:
    return f"{run_id}.g{stage_index}"


def new_run_state(
    *,
    run_id: str,
    number: int,
    definition: PipelineDef,
    pipeline_version: int,
    version_id: str,
    parameters: Mapping[str, str],
    source_revision: str | None,
    actor: Actor,
    idempotency_key: str | None,
    retry_of: str | None,
    now: datetime,
    requested_by: tuple[str, ...] = (),
    branch: str | None = None,
    kind: str = "deploy",
    artifact_id: str | None = None,
    break_glass: str | None = None,
    revision_time: datetime | None = None,
) -> RunState:
    """Every part of a fresh run, all pending, laid out from its pipeline version."""
    run = Run(
        id=run_id,
        number=number,
        pipeline=definition.name,
        pipeline_version=pipeline_version,
        version_id=version_id,
        status=RunStatus.PENDING,
        parameters=dict(parameters),
        source_revision=source_revision,
        revision_time=revision_time,
        triggered_by=actor.name,
        trigger_channel=actor.channel,
        idempotency_key=idempotency_key,
        retry_of=retry_of,
        requested_by=(*requested_by, *((actor.name,) if actor.name not in requested_by else ())),
        created_at=now,
        branch=branch,
        kind=kind,
        artifact_id=artifact_id,
        break_glass=break_glass,
    )
    stages, jobs, gates = [], [], []
    for i, sdef in enumerate(definition.stages):
        stages.append(
            Stage(
                id=stage_id(run_id, i), run_id=run_id, index=i, name=sdef.name, environment=sdef.environment
            )
        )
        for k, jdef in enumerate(sdef.all_jobs):
            jobs.append(
                Job(
                    id=job_id(run_id, i, k),
                    run_id=run_id,
                    stage_index=i,
                    index=k,
                    name=jdef.name,
                    retries=jdef.retries,
                    allow_failure=jdef.allow_failure,
                    timeout_s=jdef.timeout,
                    labels=needed(jdef.runs_on, sdef.runs_on),
                )
            )
        if sdef.gate is not None:
            g = sdef.gate
            gates.append(
                Gate(
                    id=gate_id(run_id, i),
                    run_id=run_id,
                    stage_index=i,
                    stage_name=sdef.name,
                    kind=g.type,
                    approvers=tuple(g.approvers),
                    min_approvals=g.min_approvals,
                    allow_self_approval=g.allow_self_approval,
                    timeout_s=g.timeout,
                    on_timeout=g.on_timeout,
                    interval_s=g.interval,
                )
            )
    return RunState(run, tuple(stages), tuple(jobs), tuple(gates), definition)
