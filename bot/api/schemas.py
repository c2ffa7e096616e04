"""The API's request and response bodies as pydantic models; the OpenAPI document is generated
from these, so what is documented is what is validated and sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from core.analysis import Health
from core.checks import CheckResult, Measurement
from core.definition import PipelineDef
from core.dora import FourKeys
from core.model import Gate, Job, RunState, Stage
from core.ports import Deployment, PipelineVersion
from core.rollout import step_words
from core.states import GateStatus, JobStatus, RolloutStatus, RunStatus, StageStatus

Name = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", max_length=63)


def _iso_text(value: object) -> object:
    """A time in a body is an ISO 8601 string, as documented, never a bare number."""
    if not isinstance(value, str | datetime):
        raise ValueError("expected an ISO 8601 date and time with an offset, e.g. 2026-12-01T09:30:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """The time in UTC, as it is stored: an offset can carry a time at the calendar's edge
    (0001-01-01T00:00:00+14:00) out of the years a datetime holds, which is refused here
    instead of failing when the run is written."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range: in UTC it falls outside the years 1 to 9999") from None


#: an ISO 8601 date and time with an offset (numbers refused: the document says string), in UTC
IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_in_utc)]
#: an integer the database's INTEGER columns hold (32 bits on PostgreSQL)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class Strict(BaseModel):
    """A request body: unknown fields are errors, and so are values of the wrong JSON type
    (no ``true`` for a number, no ``"1"`` for an integer)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class QueryModel(BaseModel):
    """Query parameters arrive as strings, so these convert (``?limit=5``) but still refuse
    unknown names."""

    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------------
class ProblemOut(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="each invalid field, for 400 and 422")
    ungranted_labels: list[str] | None = Field(
        None, description="the labels a runner's claim carried that were not granted to it (403)"
    )


# -- requests ----------------------------------------------------------------------------------
ParamValue = str | int | float | bool


class TriggerIn(Strict):
    """Start a run of a pipeline's current version (or of ``pipeline_version``)."""

    parameters: dict[str, ParamValue] = Field(default_factory=dict, max_length=100)
    revision: str | None = Field(
        None, min_length=1, max_length=200, description="the source revision (commit SHA) this run is for"
    )
    pipeline_version: int | None = Field(None, ge=1, le=2_000_000_000)
    branch: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="the branch the revision is on (environments may allow only some)",
    )
    revision_time: IsoTime | None = Field(
        None,
        strict=False,  # (JSON has no datetime: an ISO 8601 string)
        description="when the revision's commit was made (ISO 8601 with an offset): DORA's lead time",
    )
    break_glass: str | None = Field(
        None,
        min_length=1,
        max_length=1000,
        description="admins: why this run goes through freezes and required approvals (audited, announced)",
    )


class CancelIn(Strict):
    reason: str = Field("", max_length=1000)


def _whole(value: Any) -> Any:
    """JSON Schema counts ``2.0`` as an integer, so a client may send one; strict mode would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class VerificationIn(Strict):
    """A person's verdict on a deployment being verified."""

    #: ``passed``: it looks good (not by who triggered the run); ``failed``: roll it back
    verdict: Literal["passed", "failed"]
    reason: str = Field("", max_length=1000)
    stage: Annotated[int, Field(ge=0, le=999), BeforeValidator(_whole)] | None = Field(
        None,
        description="the index of the stage whose verification you judged (the run's "
        "stages[].index): refused with 409 once that verification ended, so a verdict on staging "
        "never ends production's; omitted: whichever stage is verified now",
    )


class PromoteIn(Strict):
    """Promote a rollout past the step it waits in."""

    comment: str = Field("", max_length=1000)
    step: Annotated[int, Field(ge=1, le=10_000), BeforeValidator(_whole)] | None = Field(
        None,
        description="the step you are promoting: the run's `rollout.step` as you saw it (from 1). A rollout "
        "that moved on since is refused (409) rather than promoted past a step you did not see (two "
        "presses on one pause). Clients should send it; without it the rollout goes past whatever step "
        "it is in now",
    )


class AbortIn(Strict):
    """Abort a rollout: all traffic back to stable, the abort jobs run, the run ends canceled."""

    reason: str = Field("", max_length=1000)


class EmptyIn(Strict):
    """No fields."""


class ApproveIn(Strict):
    comment: str = Field("", max_length=1000)


class RejectIn(Strict):
    comment: str = Field("", max_length=1000, description="why; shown on the run")


class Page(BaseModel):
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null at the end")


# -- queries -----------------------------------------------------------------------------------
NEXT = "the next_cursor of the previous page"


def text_filter(max_length: int, description: str | None = None) -> Any:
    """An optional text filter on a list. Empty is refused (400 naming the parameter), not
    matched: ``?actor=$WHO`` or ``?pipeline=$P`` with the variable unset would otherwise ask for
    the entries of "" and get an empty page, which reads as "there are none"."""
    return Field(None, min_length=1, max_length=max_length, description=description)


class PageQuery(QueryModel):
    """A list ordered by a numeric key (deployments, audit entries, versions)."""

    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, pattern=r"^[0-9]{0,18}$", description=NEXT)


class PipelinesQuery(PageQuery):
    cursor: str | None = Field(None, pattern=r"^([a-z0-9][a-z0-9-]{0,62})?$", description=NEXT)
    archived: bool = Field(False, description="include archived pipelines")


class RunsQuery(PageQuery):
    cursor: str | None = Field(None, pattern=r"^([0-9]{1,18}\.[0-9a-f]{1,64})?$", description=NEXT)
    pipeline: str | None = text_filter(63, "only this pipeline's runs")
    status: RunStatus | None = None
    environment: str | None = text_filter(63, "only runs with a stage in this environment")
    triggered_by: str | None = text_filter(200, "only runs this principal started")
    stuck: bool = Field(
        False, description="only zombies: unfinished runs unchanged longer than the stuck limit, oldest first"
    )


class AuditQuery(PageQuery):
    actor: str | None = text_filter(200, "only this principal's entries")
    action: str | None = text_filter(40, "only entries of this action")


class LogQuery(QueryModel):
    tail: int | None = Field(None, ge=1, le=10_000, description="only the last N lines")
    attempt: int | None = Field(None, ge=0, le=1000, description="default: the latest attempt")


# -- pipelines ---------------------------------------------------------------------------------
class VersionOut(BaseModel):
    id: str
    version: int
    digest: str
    created_at: datetime
    source_path: str | None = Field(None, description="the file it was loaded from; null if sent by API")

    @classmethod
    def of(cls, v: PipelineVersion) -> VersionOut:
        return cls(
            id=v.id, version=v.version, digest=v.digest, created_at=v.created_at, source_path=v.source_path
        )


class PipelineOut(BaseModel):
    id: str = Field(description="the pipeline's unique name")
    name: str
    description: str
    archived: bool
    created_at: datetime
    latest_version: VersionOut
    definition: PipelineDef


class PipelinePage(Page):
    items: list[PipelineOut]


class VersionPage(Page):
    items: list[VersionOut]


# -- runs --------------------------------------------------------------------------------------
class ApprovalOut(BaseModel):
    by: str
    at: datetime
    comment: str


class GateOut(BaseModel):
    id: str
    kind: Literal["manual", "automated", "external"]
    status: GateStatus
    approvers: list[str]
    min_approvals: int
    allow_self_approval: bool
    approvals: list[ApprovalOut]
    deadline: datetime | None
    #: what the deadline does: reject the gate (the run fails) or approve it (a soak gate)
    on_timeout: Literal["reject", "approve"]
    decided_by: str | None
    reason: str
    opened_at: datetime | None
    decided_at: datetime | None

    @classmethod
    def of(cls, g: Gate) -> GateOut:
        return cls(
            id=g.id,
            kind=g.kind,
            status=g.status,
            approvers=list(g.approvers),
            min_approvals=g.min_approvals,
            allow_self_approval=g.allow_self_approval,
            approvals=[ApprovalOut(by=a.actor, at=a.at, comment=a.comment) for a in g.approvals],
            deadline=g.deadline,
            on_timeout=g.on_timeout,
            decided_by=g.decided_by,
            reason=g.reason,
            opened_at=g.opened_at,
            decided_at=g.decided_at,
        )


class LostAttemptOut(BaseModel):
    attempt: int
    runner: str | None
    reason: str = Field(description="why it was declared lost")
    late_outcome: str | None = Field(
        description="how the attempt in fact ended, reported by its runner after its server "
        "restarted: it finished and the retry ran as well (check the target); null: no late result"
    )
    late_exit_code: int | None


class JobOut(BaseModel):
    id: str
    name: str
    status: JobStatus
    attempt: int
    retries: int
    allow_failure: bool
    exit_code: int | None
    runner: str | None
    outputs: dict[str, str]
    reason: str
    reused_from: str | None = Field(
        description="skipped by a retry that reused its outputs: the id of the run that made them"
    )
    lost_attempts: list[LostAttemptOut] = Field(
        description="attempts declared lost because their runner vanished (the job was retried)"
    )
    started_at: datetime | None
    finished_at: datetime | None
    labels: list[str] = Field(
        default_factory=list,
        description="a runner must carry all of these to take it: its own, its stage's and its "
        "environment's `runner_labels`",
    )
    waiting_for: str = Field(
        "", description="queued a while and no online runner can take it: which runner it waits for"
    )

    @classmethod
    def of(cls, j: Job) -> JobOut:
        return cls(
            id=j.id,
            name=j.name,
            status=j.status,
            attempt=j.attempt,
            retries=j.retries,
            allow_failure=j.allow_failure,
            exit_code=j.exit_code,
            runner=j.runner,
            outputs=dict(j.outputs),
            reason=j.reason,
            reused_from=j.reused_from,
            lost_attempts=[LostAttemptOut(**asdict(a)) for a in j.lost],
            started_at=j.started_at,
            finished_at=j.finished_at,
            labels=list(j.labels),
        )


class RolloutOut(BaseModel):
    """Where a stage's canary rollout stands (``docs/rollouts.md``)."""

    stage: str
    strategy: Literal["canary", "blue_green"]
    pools: list[str] = Field(description="the pool serving before the rollout, then the one it moves to")
    router: str
    status: RolloutStatus
    step: int | None = Field(
        description="the step being taken, from 1; null before the first and after the last"
    )
    steps: int
    action: str = Field(description="what the current step does, in words")
    step_until: datetime | None = Field(description="when a timed pause or an analysis step ends")
    desired: dict[str, int] = Field(
        description="the weights the rollout wants, recorded before the router is set"
    )
    applied: dict[str, int] | None = Field(
        description="what the router confirmed last (read back); null: never"
    )
    analysis: str | None = Field(
        description="the analysis measuring this step (GET /runs/{run}/verification)"
    )
    reason: str
    router_wait: str = Field(
        "",
        description="a rollout resumed after a restart whose router does not answer yet: what it "
        "waits for, and until when, before it fails; empty otherwise",
    )

    @classmethod
    def of(cls, s: Stage, state: RunState) -> RolloutOut | None:
        r = s.rollout
        strategy = state.definition.stages[s.index].strategy
        if r is None or strategy is None:
            return None
        steps = strategy.steps
        current = 0 <= r.step < len(steps)
        return cls(
            stage=s.name,
            strategy=strategy.kind,
            pools=list(r.pools),
            router=r.router,
            status=r.status,
            step=r.step + 1 if current else None,
            steps=len(steps),
            action=step_words(strategy, r.step) if r.step >= 0 else "waiting for the stage's jobs",
            step_until=r.step_until,
            desired=dict(r.desired),
            applied=dict(r.applied) if r.applied is not None else None,
            analysis=r.analysis,
            reason=r.reason,
            router_wait=r.router_wait,
        )


class StageOut(BaseModel):
    id: str
    name: str
    index: int
    environment: str | None
    status: StageStatus
    reason: str
    reused_from: str | None = Field(
        description="skipped by a retry that reused the work: the id of the run that did it"
    )
    started_at: datetime | None
    finished_at: datetime | None
    gate: GateOut | None
    jobs: list[JobOut]
    rollout: RolloutOut | None = Field(None, description="a stage with a strategy: its rollout")

    @classmethod
    def of(cls, s: Stage, state: RunState) -> StageOut:
        gate = state.gate_of(s.index)
        return cls(
            id=s.id,
            name=s.name,
            index=s.index,
            environment=s.environment,
            status=s.status,
            reason=s.reason,
            reused_from=s.reused_from,
            started_at=s.started_at,
            finished_at=s.finished_at,
            gate=GateOut.of(gate) if gate is not None else None,
            jobs=[JobOut.of(j) for j in state.jobs_of(s.index)],
            rollout=RolloutOut.of(s, state),
        )


class TriggeredBy(BaseModel):
    principal: str
    channel: str


class RunSummary(BaseModel):
    id: str
    ref: str = Field(description="the per-pipeline name people type: web#42")
    number: int
    pipeline: str
    pipeline_version: int
    status: RunStatus
    parameters: dict[str, str]
    revision: str | None
    triggered_by: TriggeredBy
    requested_by: list[str] = Field(description="who asked for this deployment, through every retry")
    retry_of: str | None
    reason: str
    warnings: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    kind: Literal["deploy", "promotion", "rollback"] = Field(
        description="a rollback or promotion deploys a known artifact"
    )
    branch: str | None
    artifact_id: str | None = Field(description="the artifact a promotion or rollback deploys")
    break_glass: str | None = Field(description="an admin pushed it through freezes and approvals: why")
    deploy_to: str | None = Field(
        description="the one environment a promotion or rollback deploys to (a retry deploys there again)"
    )

    @classmethod
    def fields_of(cls, state: RunState) -> dict[str, Any]:
        r = state.run
        return {
            "id": r.id,
            "ref": r.ref,
            "number": r.number,
            "pipeline": r.pipeline,
            "pipeline_version": r.pipeline_version,
            "status": r.status,
            "parameters": dict(r.parameters),
            "revision": r.source_revision,
            "triggered_by": TriggeredBy(principal=r.triggered_by, channel=r.trigger_channel),
            "requested_by": list(r.requested_by),
            "retry_of": r.retry_of,
            "reason": r.reason,
            "warnings": list(r.warnings),
            "created_at": r.created_at,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "kind": r.kind,  # (deploy, promotion or rollback by construction)
            "branch": r.branch,
            "artifact_id": r.artifact_id,
            "break_glass": r.break_glass,
            "deploy_to": r.deploy_to,
        }

    @classmethod
    def of(cls, state: RunState) -> RunSummary:
        return cls(**cls.fields_of(state))


class StuckOut(BaseModel):
    since: datetime = Field(description="when the run last changed")
    reason: str = Field(description="what it waits for")


class StuckRunSummary(RunSummary):
    stuck: StuckOut


class RunOut(RunSummary):
    stages: list[StageOut]
    rollout: RolloutOut | None = Field(
        None, description="the run's rollout (its latest stage with a strategy that started), if any"
    )
    waiting_for: str = Field(
        "",
        description="a job of it has been queued a while and no online runner can take it: why "
        "(`waiting for a runner with prod-eu: none online since 12:03 UTC`)",
    )

    @classmethod
    def of(cls, state: RunState, waits: Mapping[str, str] | None = None) -> RunOut:
        """``waits``: why queued jobs wait for a runner, by job id (``core.labels.runner_waits``)."""
        stages = [StageOut.of(s, state) for s in state.stages]
        rollout = next((s.rollout for s in reversed(stages) if s.rollout is not None), None)
        waits = waits or {}
        for stage in stages:
            for job in stage.jobs:
                job.waiting_for = waits.get(job.id, "")
        waiting = next((w for j in state.jobs if (w := waits.get(j.id))), "")
        return cls(**cls.fields_of(state), stages=stages, rollout=rollout, waiting_for=waiting)


class RunPage(Page):
    items: list[RunSummary | StuckRunSummary] = Field(
        description="with ?stuck=true each item says why it is stuck"
    )


# -- environments ------------------------------------------------------------------------------
class DeploymentOut(BaseModel):
    id: int
    environment: str
    pipeline: str
    run_id: str
    run_ref: str
    stage: str
    status: str
    revision: str | None
    parameters: dict[str, str]
    triggered_by: str
    started_at: datetime | None
    finished_at: datetime
    artifact: str | None = Field(description="what it deployed (name@version), when known")
    kind: Literal["deploy", "promotion", "rollback"]
    verification: Literal["verified", "failed", "canceled"] | None = Field(
        description="how its environment's verification ended; null where it is not verified"
    )

    @classmethod
    def of(cls, d: Deployment) -> DeploymentOut:
        assert d.id is not None
        return cls(
            id=d.id,
            environment=d.environment,
            pipeline=d.pipeline,
            run_id=d.run_id,
            run_ref=f"{d.pipeline}#{d.run_number}",
            stage=d.stage,
            status=d.status,
            revision=d.revision,
            parameters=dict(d.parameters),
            triggered_by=d.triggered_by,
            started_at=d.started_at,
            finished_at=d.finished_at,
            artifact=d.artifact,
            kind=d.kind,
            verification=d.verification,
        )


class MeasurementOut(BaseModel):
    check: str
    at: datetime
    result: CheckResult
    value: str | None = Field(description="what was measured, as text; null: nothing")
    detail: str = Field(description="for people: `error-rate = 0.034 > 0.01`, `status 503, expected 200`")
    took: float = Field(description="seconds the measurement took")

    @classmethod
    def of(cls, m: Measurement) -> MeasurementOut:
        return cls(check=m.check, at=m.at, result=m.result, value=m.value, detail=m.detail, took=m.took)


class VerificationOut(BaseModel):
    """One deploy stage's verification: its checks, deadline, how it ended, its measurements."""

    environment: str
    stage_index: int | None
    checks: list[str]
    started_at: datetime
    deadline: datetime | None
    status: str = Field(description="running, passed, failed, inconclusive or canceled")
    reason: str
    ended_at: datetime | None
    ended_by: str | None
    measurements: list[MeasurementOut] = Field(
        description="every measurement, oldest first (of a long one, the latest 500: those that decided it)"
    )


class VerificationsOut(BaseModel):
    run_id: str
    items: list[VerificationOut]


class CheckHealthOut(BaseModel):
    name: str
    kind: Literal["http", "prometheus", "command"]
    last: list[MeasurementOut] = Field(description="its latest measurements, newest first")


class HealthOut(BaseModel):
    state: Health
    since: datetime | None = Field(description="when it entered this state; null: never measured")
    reason: str
    checks: list[CheckHealthOut] = Field(description="the checks watched all the time")


class EnvironmentOut(BaseModel):
    id: str = Field(description="the environment's name")
    name: str
    current: DeploymentOut | None = Field(description="the newest successful deployment: what runs there")
    last_deployment: DeploymentOut | None
    health: HealthOut | None = Field(None, description="its health (`GET /environments/{env}` only)")


class HealthChangeOut(BaseModel):
    id: int
    at: datetime
    from_state: Health
    to_state: Health
    reason: str


class HealthPage(Page):
    current: HealthOut
    items: list[HealthChangeOut] = Field(description="changes of its health, newest first")


class EnvironmentList(BaseModel):
    items: list[EnvironmentOut]


class DeploymentPage(Page):
    items: list[DeploymentOut]


# -- audit -------------------------------------------------------------------------------------
class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    channel: str
    action: str
    target: str
    outcome: str
    reason: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(Page):
    items: list[AuditOut]


# -- DORA's four keys --------------------------------------------------------------------------
#: a DORA window over REST: whole days up to a year, or hours
DORA_WINDOW = r"^(?:(?:36[0-5]|3[0-5][0-9]|[12][0-9]{2}|[1-9][0-9]?)d|[1-9][0-9]{0,2}h)$"
DORA_WINDOW_WORDS = "whole days (1d to 365d) or hours (1h to 999h), for example 7d, 30d, 90d or 12h"


class DoraQuery(QueryModel):
    window: str = Field(
        "30d",
        max_length=12,
        json_schema_extra={"pattern": DORA_WINDOW},  # (checked by the handler, which says how)
        description=DORA_WINDOW_WORDS,
    )
    pipeline: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="only this pipeline")


class FrequencyOut(BaseModel):
    deployments: int = Field(description="successful changes in the window")
    per_day: float
    per_week: float


class LeadTimeOut(BaseModel):
    median_seconds: float | None = Field(description="null: no commit time was known")
    deployments: int = Field(description="successful changes whose commit time is known")
    unknown: int = Field(description="successful changes whose commit time is unknown")


class FailureRateOut(BaseModel):
    rate: float | None = Field(description="failures / deployments; null: nothing deployed")
    failures: int
    deployments: int
    failed: int
    failed_verification: int
    rolled_back: int
    marked_bad: int


class RestoreOut(BaseModel):
    median_seconds: float | None = Field(description="null: nothing was restored")
    restores: int
    deployments: int = Field(description="failed deployments those restores ended")
    unrestored: int = Field(description="failed deployments not followed by a healthy one yet")


class DoraOut(BaseModel):
    environment: str
    pipeline: str | None
    window: str
    since: datetime
    until: datetime
    deployment_frequency: FrequencyOut
    lead_time: LeadTimeOut
    change_failure_rate: FailureRateOut
    time_to_restore: RestoreOut

    @classmethod
    def of(cls, keys: FourKeys, window: str) -> DoraOut:
        f, lead, cfr, ttr = (
            keys.deployment_frequency,
            keys.lead_time,
            keys.change_failure_rate,
            keys.time_to_restore,
        )
        return cls(
            environment=keys.environment,
            pipeline=keys.pipeline,
            window=window,
            since=keys.since,
            until=keys.until,
            deployment_frequency=FrequencyOut(
                deployments=f.deployments, per_day=f.per_day, per_week=f.per_week
            ),
            lead_time=LeadTimeOut(
                median_seconds=lead.median_s, deployments=lead.deployments, unknown=lead.unknown
            ),
            change_failure_rate=FailureRateOut(
                rate=cfr.rate,
                failures=cfr.failures,
                deployments=cfr.deployments,
                failed=cfr.failed,
                failed_verification=cfr.failed_verification,
                rolled_back=cfr.rolled_back,
                marked_bad=cfr.marked_bad,
            ),
            time_to_restore=RestoreOut(
                median_seconds=ttr.median_s,
                restores=ttr.restores,
                deployments=ttr.deployments,
                unrestored=ttr.unrestored,
            ),
        )
