"""The schema, as SQLModel table classes. Only ``storage`` knows these exist.

Timestamps are stored as naive UTC and handed to the domain as aware UTC (``UTCDateTime``), so
SQLite and PostgreSQL behave alike. Each change to this file needs an Alembic migration in
``storage/migrations/versions``; ``tests/storage/test_migrations.py`` fails when they drift.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Column, Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            if value.tzinfo is not UTC:  # (our own timestamps are UTC already: the common case)
                value = value.astimezone(UTC)
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _json(default: Any) -> Any:
    return Field(default_factory=lambda: default, sa_column=Column(sa.JSON(), nullable=False))


def _text() -> Any:
    return Field(default="", sa_column=Column(sa.Text(), nullable=False))


class PipelineRow(SQLModel, table=True):
    __tablename__ = "pipeline"
    name: str = Field(primary_key=True, max_length=63)
    archived: bool = False
    created_at: datetime = _ts(nullable=False)


class PipelineVersionRow(SQLModel, table=True):
    __tablename__ = "pipeline_version"
    __table_args__ = (sa.UniqueConstraint("pipeline", "version"),)
    id: str = Field(primary_key=True, max_length=64)
    pipeline: str = Field(foreign_key="pipeline.name", index=True, max_length=63)
    version: int
    digest: str = Field(max_length=64)
    definition: dict[str, Any] = _json({})
    source: str = _text()
    source_path: str | None = None
    created_at: datetime = _ts(nullable=False)


RETRIES = sa.text("retry_of IS NOT NULL")


class RunRow(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (
        sa.UniqueConstraint("pipeline", "number"),
        sa.UniqueConstraint("pipeline", "idempotency_key"),
        # which run retried a run (a run is retried once): the retries alone
        sa.Index("ix_run_retry_of", "retry_of", sqlite_where=RETRIES, postgresql_where=RETRIES),
    )
    id: str = Field(primary_key=True, max_length=64)
    number: int
    pipeline: str = Field(index=True, max_length=63)
    pipeline_version: int
    version_id: str = Field(foreign_key="pipeline_version.id", max_length=64)
    status: str = Field(index=True, max_length=16)
    parameters: dict[str, str] = _json({})
    source_revision: str | None = None
    triggered_by: str
    trigger_channel: str = Field(max_length=16)
    idempotency_key: str | None = Field(default=None, max_length=200)
    retry_of: str | None = Field(default=None, max_length=64)
    requested_by: list[str] = _json([])
    warnings: list[str] = _json([])
    reason: str = _text()
    created_at: datetime = _ts(nullable=False, index=True)
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    deadline: datetime | None = _ts(index=True)
    branch: str | None = Field(default=None, max_length=255)
    kind: str = Field(default="deploy", max_length=16)
    artifact_id: str | None = Field(default=None, max_length=64, index=True)
    break_glass: str | None = None
    deploy_to: str | None = Field(default=None, max_length=63)
    #: when the revision's commit was made (None: unknown)
    revision_time: datetime | None = _ts()
    version: int = 0


#: the stage statuses that hold an environment
DEPLOYING_STATUSES = ("running", "rolling_out", "verifying")
DEPLOYING = "status IN ({})".format(", ".join(f"'{s}'" for s in DEPLOYING_STATUSES))
#: the job statuses a query looks jobs up by (partial indexes on ``job``)
QUEUED, RUNNING = "status = 'queued'", "status = 'running'"


class StageRow(SQLModel, table=True):
    __tablename__ = "stage"
    __table_args__ = (
        # at most one deployment at a time per environment (being verified counts): a second
        # stage moving to running there breaks this index, so two processes can never both
        # admit a run
        sa.Index(
            "ux_stage_environment_running",
            "environment",
            unique=True,
            sqlite_where=sa.text(DEPLOYING),
            postgresql_where=sa.text(DEPLOYING),
        ),
        sa.Index("ix_stage_status_queued_at", "status", "queued_at"),
    )
    id: str = Field(primary_key=True, max_length=80)
    run_id: str = Field(foreign_key="run.id", index=True, max_length=64)
    position: int
    name: str = Field(max_length=63)
    environment: str | None = Field(default=None, max_length=63, index=True)
    status: str = Field(max_length=16)
    reason: str = _text()
    reused_from: str | None = Field(default=None, max_length=64)
    queued_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    verify_for: float | None = None
    verify_rollback: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    verify_until: datetime | None = _ts()
    #: a stage with a strategy: its rollout (``core.rollout.Rollout``), as JSON
    rollout: dict[str, Any] | None = Field(default=None, sa_column=Column(sa.JSON(), nullable=True))


class JobRow(SQLModel, table=True):
    __tablename__ = "job"
    # Only jobs waiting or running are looked up by status (claims, expired leases, what a
    # runner holds): partial indexes hold just those, so they stay as small as the work in
    # flight, and a job's last update (to succeeded, failed, …) writes none of them.
    __table_args__ = (
        sa.Index(
            "ix_job_queued", "queued_at", "id", sqlite_where=sa.text(QUEUED), postgresql_where=sa.text(QUEUED)
        ),
        sa.Index(
            "ix_job_running_lease",
            "lease_expires_at",
            sqlite_where=sa.text(RUNNING),
            postgresql_where=sa.text(RUNNING),
        ),
        sa.Index(
            "ix_job_running_runner",
            "runner",
            sqlite_where=sa.text(RUNNING),
            postgresql_where=sa.text(RUNNING),
        ),
    )
    id: str = Field(primary_key=True, max_length=90)
    run_id: str = Field(foreign_key="run.id", index=True, max_length=64)
    stage_index: int
    position: int
    name: str = Field(max_length=63)
    status: str = Field(max_length=16)
    attempt: int = 0
    failures: int = 0
    retries: int = 0
    allow_failure: bool = False
    timeout_s: float = 3600.0
    runner: str | None = Field(default=None, max_length=200)
    lease_expires_at: datetime | None = _ts()
    exit_code: int | None = None
    outputs: dict[str, str] = _json({})
    reason: str = _text()
    reused_from: str | None = Field(default=None, max_length=64)
    #: attempts declared lost, with their late results (``core.model.LostAttempt``)
    lost: list[dict[str, Any]] = _json([])
    queued_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    #: labels a runner must carry to claim it (``core.labels``), sorted
    labels: list[str] = _json([])


class GateRow(SQLModel, table=True):
    __tablename__ = "gate"
    id: str = Field(primary_key=True, max_length=80)
    run_id: str = Field(foreign_key="run.id", index=True, max_length=64)
    stage_index: int
    stage_name: str = Field(max_length=63)
    kind: str = Field(max_length=16)
    status: str = Field(index=True, max_length=16)
    approvers: list[str] = _json([])
    min_approvals: int = 1
    allow_self_approval: bool = False
    approvals: list[dict[str, str]] = _json([])
    timeout_s: float | None = None
    on_timeout: str = Field(default="reject", max_length=16)
    interval_s: float = 30.0
    deadline: datetime | None = _ts()
    next_check_at: datetime | None = _ts()
    decided_by: str | None = None
    reason: str = _text()
    opened_at: datetime | None = _ts()
    decided_at: datetime | None = _ts()


class EventRow(SQLModel, table=True):
    __tablename__ = "event"
    seq: int | None = Field(
        default=None,
        sa_column=Column(
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    name: str = Field(max_length=40)
    run_id: str = Field(index=True, max_length=64)
    subject: str = Field(max_length=8)
    subject_id: str = Field(max_length=90)
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str | None = Field(default=None, max_length=16)
    at: datetime = _ts(nullable=False)
    data: dict[str, Any] = _json({})


class AuditRow(SQLModel, table=True):
    """The audit log, a hash chain: each entry's ``hash`` covers its fields and the previous
    entry's hash, so altering or removing one breaks the chain (``shipyard audit verify``)."""

    __tablename__ = "audit"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(nullable=False, index=True)
    actor: str = Field(max_length=200)
    channel: str = Field(max_length=16)
    action: str = Field(max_length=40)
    target: str = Field(max_length=200)
    outcome: str = Field(max_length=16)
    reason: str = _text()
    detail: dict[str, Any] = _json({})
    prev_hash: str = Field(default="", max_length=64)
    hash: str = Field(default="", max_length=64)


class AuditHeadRow(SQLModel, table=True):
    """Where the audit chain ends, kept apart from it (one row, ``id`` 1, moved in the same
    transaction as every append): removing the newest entries leaves a chain that still links,
    only shorter, and this row is what still says how long it was and which hash it ended on."""

    __tablename__ = "audit_head"
    id: int = Field(default=1, primary_key=True)
    last_id: int = 0  #: the newest chained entry's id (0: none yet)
    hash: str = Field(default="", max_length=64)  #: its hash, which the next entry links to
    entries: int = 0  #: how many chained entries were written


class DeploymentRow(SQLModel, table=True):
    """One deploy stage that finished: what went where, when, by whom, and how it ended."""

    __tablename__ = "deployment"
    __table_args__ = (
        sa.Index("ix_deployment_env_seq", "environment", "id"),
        sa.Index("ix_deployment_env_finished", "environment", "finished_at"),
    )
    id: int | None = Field(
        default=None,
        sa_column=Column(
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    environment: str = Field(max_length=63)
    pipeline: str = Field(max_length=63)
    run_id: str = Field(max_length=64, index=True)
    run_number: int
    stage: str = Field(max_length=63)
    status: str = Field(max_length=16)
    revision: str | None = None
    parameters: dict[str, str] = _json({})
    triggered_by: str = Field(max_length=200)
    started_at: datetime | None = _ts()
    finished_at: datetime = _ts(nullable=False)
    artifact_id: str | None = Field(default=None, max_length=64)
    artifact: str | None = Field(default=None, max_length=200)
    kind: str = Field(default="deploy", max_length=16)
    #: ``verified`` or ``failed`` when its environment verified it; None: not verified
    verification: str | None = Field(default=None, max_length=16)
    #: when the deployed commit was made (None: unknown): DORA's lead time starts there
    revision_time: datetime | None = _ts()


class AccessTokenRow(SQLModel, table=True):
    """An API token: only the SHA-256 of the secret is kept."""

    __tablename__ = "access_token"
    name: str = Field(primary_key=True, max_length=100)
    token_hash: str = Field(max_length=64, unique=True)
    principal: str = Field(max_length=200)
    created_at: datetime = _ts(nullable=False)
    created_by: str = Field(max_length=200)
    revoked_at: datetime | None = _ts()


class GrantRow(SQLModel, table=True):
    """A role or group membership of a principal, valid from ``granted_at`` until revoked."""

    __tablename__ = "grant"
    id: int | None = Field(default=None, primary_key=True)
    principal: str = Field(max_length=200, index=True)
    kind: str = Field(max_length=8)
    value: str = Field(max_length=100)
    granted_at: datetime = _ts(nullable=False)
    revoked_at: datetime | None = _ts()


class IdempotencyRow(SQLModel, table=True):
    """A remembered response to a request carrying an ``Idempotency-Key``, per caller, or the
    claim of the request still processing it."""

    __tablename__ = "idempotency"
    caller: str = Field(primary_key=True, max_length=200)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    state: str = Field(max_length=12)  # processing | done
    status_code: int | None = None
    response: dict[str, Any] = _json({})
    created_at: datetime = _ts(nullable=False, index=True)
    #: who is processing it (host:pid:claim), and until when unless that process renews it: a
    #: claim past its lease belongs to a process that is gone, and the key is free again
    holder: str | None = Field(default=None, max_length=200)
    expires_at: datetime | None = _ts()


class SlackMessageRow(SQLModel, table=True):
    """Where a run's Slack message lives (``ts`` once posted; in ``thread`` when it was asked
    for in one). ``gave_up_at``: Slack refused it for good (``last_error``: why), so the run is
    not reported there."""

    __tablename__ = "slack_message"
    run_id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(max_length=40)
    thread: str | None = Field(default=None, max_length=40)
    ts: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts(nullable=False)
    last_error: str | None = Field(default=None, max_length=200)
    gave_up_at: datetime | None = _ts()


class SlackPostRow(SQLModel, table=True):
    """A thread message about a run (a gate opened, a job failed, the result), claimed by
    inserting its key before it is sent, so it is never sent twice. ``ts`` is the posted
    message's; the rest is where its sending is (``core.states.PostStatus``)."""

    __tablename__ = "slack_post"
    #: the notifier looks for retries that are due
    __table_args__ = (sa.Index("ix_slack_post_due", "status", "next_try_at"),)
    run_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=120)
    ts: str | None = Field(default=None, max_length=40)
    status: str = Field(default="sending", max_length=12, sa_column_kwargs={"server_default": "sending"})
    #: failed sends so far
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_try_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, max_length=200)
    #: the event that called for it, handled again to retry it (0: a reminder)
    seq: int = Field(default=0, sa_column=Column(sa.BigInteger(), nullable=False, server_default="0"))


class ScheduleRow(SQLModel, table=True):
    """A schedule; ``next_fire_at`` is moved by a conditional update, which is how exactly one
    process claims each occurrence."""

    __tablename__ = "schedule"
    id: str = Field(primary_key=True, max_length=64)
    pipeline: str = Field(max_length=63, index=True)
    cron: str = Field(max_length=120)
    timezone: str = Field(max_length=64)
    parameters: dict[str, str] = _json({})
    owner: str = Field(max_length=200)
    source: str = Field(max_length=8)
    grace_s: float = 3600.0
    next_fire_at: datetime = _ts(nullable=False, index=True)
    created_at: datetime = _ts(nullable=False)
    deleted_at: datetime | None = _ts()
    #: bumped by every change: a fire is triggered only if the schedule still has the version
    #: the clock read it with
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    #: set while paused: by its owner, or by the clock when it can no longer start a run
    paused_at: datetime | None = _ts()
    paused_reason: str | None = Field(default=None, max_length=500)


class CursorRow(SQLModel, table=True):
    """How far a follower of the event log (the Slack notifier) has got."""

    __tablename__ = "cursor"
    name: str = Field(primary_key=True, max_length=40)
    seq: int = Field(default=0, sa_column=Column(sa.BigInteger(), nullable=False))


class LogChunkRow(SQLModel, table=True):
    __tablename__ = "log_chunk"
    __table_args__ = (sa.Index("ix_log_chunk_job", "job_id", "attempt", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(max_length=90)
    attempt: int
    stream: str = Field(max_length=8)
    text: str = _text()


metadata = SQLModel.metadata
T = {
    name: SQLModel.metadata.tables[name]
    for name in (
        "pipeline",
        "pipeline_version",
        "run",
        "stage",
        "job",
        "gate",
        "event",
        "audit",
        "log_chunk",
        "deployment",
        "access_token",
        "grant",
        "idempotency",
        "slack_message",
        "slack_post",
        "schedule",
        "cursor",
    )
}


class ArtifactRow(SQLModel, table=True):
    """A registered artifact. (name, version) is unique: the constraint is what refuses a second
    digest for a version, even between two registrations at the same instant."""

    __tablename__ = "artifact"
    __table_args__ = (
        sa.UniqueConstraint("name", "version", name="uq_artifact_name_version"),
        sa.Index("ix_artifact_name_created", "name", "created_at"),
        sa.Index("ix_artifact_created", "created_at"),
    )
    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=63)
    version: str = Field(max_length=128)
    digest: str = Field(max_length=140)
    uri: str = Field(sa_column=Column(sa.Text(), nullable=False))
    meta: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", sa.JSON(), nullable=False)
    )
    run_id: str | None = Field(default=None, max_length=64, index=True)
    pipeline: str | None = Field(default=None, max_length=63)
    created_by: str = Field(max_length=200)
    created_at: datetime = _ts(nullable=False)
    bad: bool = False
    bad_reason: str | None = Field(default=None, sa_column=Column(sa.Text(), nullable=True))
    bad_by: str | None = Field(default=None, max_length=200)
    bad_at: datetime | None = _ts()


def _bigint(default: int | None = 0, primary_key: bool = False) -> Any:
    kind = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    if primary_key:
        return Field(default=None, sa_column=Column(kind, primary_key=True, autoincrement=True))
    return Field(default=default, sa_column=Column(kind, nullable=default is None))


class WebhookRow(SQLModel, table=True):
    """An outgoing webhook subscription. Its secret signs every delivery (Standard Webhooks), so it
    is kept as given, like any HMAC key; ``status`` moves by conditional updates only."""

    __tablename__ = "webhook"
    id: str = Field(primary_key=True, max_length=40)
    url: str = _text()
    events: list[str] = _json([])
    pipeline: str | None = Field(default=None, max_length=63)
    environment: str | None = Field(default=None, max_length=63)
    description: str = _text()
    secret: str = Field(max_length=100)
    status: str = Field(max_length=12, index=True)
    status_reason: str = _text()
    owner: str = Field(max_length=200)
    #: events up to this sequence number happened before the subscription existed
    from_seq: int = _bigint()
    consecutive_failures: int = 0
    failing_since: datetime | None = _ts()
    created_at: datetime = _ts(nullable=False)
    changed_at: datetime | None = _ts()


class WebhookDeliveryRow(SQLModel, table=True):
    """One message for one subscription: the outbox. ``key`` makes the outbox idempotent;
    ``position`` orders a run's messages; ``next_attempt_at`` is when it is due (while it is
    being sent, when its sender's lease runs out)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.UniqueConstraint("webhook_id", "key", name="uq_webhook_delivery_key"),
        sa.Index("ix_webhook_delivery_due", "state", "next_attempt_at"),
        sa.Index("ix_webhook_delivery_order", "webhook_id", "run_id", "position"),
    )
    id: int | None = _bigint(None, primary_key=True)
    webhook_id: str = Field(foreign_key="webhook.id", max_length=40)
    key: str = Field(max_length=160)
    msg_id: str = Field(max_length=160)
    event_type: str = Field(max_length=40)
    event_seq: int = _bigint()
    position: int = _bigint()
    run_id: str = Field(max_length=64)
    subject_id: str = Field(max_length=90)
    body: str = _text()
    state: str = Field(max_length=12)
    attempts: int = 0
    next_attempt_at: datetime = _ts(nullable=False)
    last_status: int | None = None
    last_error: str = _text()
    created_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts()
    redelivery_of: int | None = _bigint(None)


class WebhookAttemptRow(SQLModel, table=True):
    """One HTTP request of a delivery: what was sent, what came back, how long it took."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (sa.UniqueConstraint("delivery_id", "number", name="uq_webhook_attempt_number"),)
    id: int | None = _bigint(None, primary_key=True)
    delivery_id: int = Field(
        sa_column=Column(
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("webhook_delivery.id"),
            nullable=False,
        )
    )
    number: int
    at: datetime = _ts(nullable=False)
    duration_ms: float = 0.0
    status: int | None = None
    error: str = _text()
    request_headers: dict[str, str] = _json({})
    response: str = _text()


class HookTriggerRow(SQLModel, table=True):
    """An incoming trigger: ``POST /api/v1/hooks/{id}`` signed with its secret starts a run."""

    __tablename__ = "hook_trigger"
    id: str = Field(primary_key=True, max_length=40)
    pipeline: str = Field(max_length=63, index=True)
    kind: str = Field(max_length=12)
    secret: str = Field(max_length=100)
    description: str = _text()
    owner: str = Field(max_length=200)
    created_at: datetime = _ts(nullable=False)
    deleted_at: datetime | None = _ts()


class EnvironmentLockRow(SQLModel, table=True):
    """An environment's lock (``core.locks``). The environment is the primary key, so at most
    one lock exists per environment: of two people locking at once, the insert that commits
    first wins and the other meets the key. Every later change is a conditional update on the
    holder and ``since`` read, which is how an expired lock is taken over, and how the keeper
    claims each expiry, reminder and handover message once."""

    __tablename__ = "environment_lock"
    environment: str = Field(primary_key=True, max_length=63)
    holder: str = Field(max_length=200)
    reason: str = _text()
    kind: str = Field(max_length=12)
    since: datetime = _ts(nullable=False)
    expires_at: datetime | None = _ts(index=True)
    handover_requested_by: str | None = Field(default=None, max_length=200)
    #: the request the holder was told about (a new request differs, and is told again)
    handover_told: str | None = Field(default=None, max_length=200)
    reminded_at: datetime | None = _ts()
    #: when the expiry was set, if not at ``since`` (``core.locks.Lock.expiry_set_at``)
    expiry_set_at: datetime | None = _ts()


class ReviewRow(SQLModel, table=True):
    """The follow-up review a break-glass run owes: someone other than the admin who broke the
    glass acknowledges it (``core.review``). Acknowledging is a conditional update, so two
    people never both do it; reminders are claimed like every thread post (``storage.slack``)."""

    __tablename__ = "review"
    run_id: str = Field(primary_key=True, max_length=64)
    admin: str = Field(max_length=200)
    reason: str = _text()
    opened_at: datetime = _ts(nullable=False)
    due_at: datetime = _ts(nullable=False, index=True)
    acknowledged_by: str | None = Field(default=None, max_length=200)
    acknowledged_at: datetime | None = _ts()


class AnalysisRow(SQLModel, table=True):
    """An analysis (``core.analysis``): a deployment's verification, or an environment's health
    watch, whose id is ``health:<environment>`` so there is one. Ending one is a conditional
    update on ``status = 'running'``: one process ends it."""

    __tablename__ = "analysis"
    id: str = Field(primary_key=True, max_length=80)
    environment: str = Field(max_length=63, index=True)
    kind: str = Field(max_length=8)
    run_id: str | None = Field(default=None, max_length=64, index=True)
    stage_index: int | None = None
    checks: list[str] = _json([])
    #: a canary step's own limits (failure_limit, …); none: the environment's ``verify``
    limits: dict[str, int] | None = Field(default=None, sa_column=Column(sa.JSON(), nullable=True))
    started_at: datetime = _ts(nullable=False)
    deadline: datetime | None = _ts()
    status: str = Field(max_length=16)
    reason: str = _text()
    ended_at: datetime | None = _ts()
    ended_by: str | None = Field(default=None, max_length=200)
    version: int = 1


class AnalysisCheckRow(SQLModel, table=True):
    """One check of one analysis: when it is next due, who is measuring it (a lease, claimed by
    a conditional update, so two processes never both measure it) and its tally so far (a
    restart resumes it). ``next_at`` is null once the analysis ended."""

    __tablename__ = "analysis_check"
    analysis_id: str = Field(primary_key=True, foreign_key="analysis.id", max_length=80)
    check: str = Field(primary_key=True, max_length=63)
    environment: str = Field(max_length=63)
    kind: str = Field(max_length=8)
    next_at: datetime | None = _ts(index=True)
    holder: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = _ts()
    measured: int = 0
    passed: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last_result: str | None = Field(default=None, max_length=16)
    last_value: str | None = Field(default=None, sa_column=Column(sa.Text(), nullable=True))
    last_at: datetime | None = _ts()
    #: the measurements kept for reasons (``CheckTally.failures``, ``last_error``, ...)
    recent: dict[str, Any] = _json({})


class MeasurementRow(SQLModel, table=True):
    """Every measurement taken, readable by environment and check or by analysis."""

    __tablename__ = "measurement"
    __table_args__ = (sa.Index("ix_measurement_environment_check_at", "environment", "check", "at"),)
    id: int | None = _bigint(None, primary_key=True)
    analysis_id: str = Field(max_length=80, index=True)
    environment: str = Field(max_length=63)
    check: str = Field(max_length=63)
    at: datetime = _ts(nullable=False)
    result: str = Field(max_length=16)
    value: str | None = Field(default=None, sa_column=Column(sa.Text(), nullable=True))
    detail: str = _text()
    took: float = 0.0


class EnvironmentHealthRow(SQLModel, table=True):
    """An environment's health now (``core.analysis.Health``) and since when."""

    __tablename__ = "environment_health"
    environment: str = Field(primary_key=True, max_length=63)
    state: str = Field(max_length=12)
    since: datetime = _ts(nullable=False)
    reason: str = _text()
    version: int = 1


class HealthChangeRow(SQLModel, table=True):
    """Each change of an environment's health, written with the change."""

    __tablename__ = "health_change"
    id: int | None = _bigint(None, primary_key=True)
    environment: str = Field(max_length=63, index=True)
    at: datetime = _ts(nullable=False)
    from_state: str = Field(max_length=12)
    to_state: str = Field(max_length=12)
    reason: str = _text()


class RouterStateRow(SQLModel, table=True):
    """Which pool of a blue/green router serves now: written in the transaction that promotes
    the rollout, read when the next one starts (it deploys to the other)."""

    __tablename__ = "router_state"
    #: ``<environment>/<router>``
    key: str = Field(primary_key=True, max_length=130)
    live_pool: str = Field(max_length=63)
    updated_at: datetime = _ts(nullable=False)


class RouterLeaseRow(SQLModel, table=True):
    """Who drives an environment's router now (``core.runtime.rollouts``): taken by a
    conditional update when free or lapsed, so two replicas never set one router at once."""

    __tablename__ = "router_lease"
    #: ``<environment>/<router>``
    key: str = Field(primary_key=True, max_length=130)
    holder: str = Field(max_length=200)
    until: datetime = _ts(nullable=False)


class EnvironmentSecretRow(SQLModel, table=True):
    """A secret of an environment (``core.secrets``), encrypted (``storage.secrets``): the value
    is never stored in the clear, and nothing in the service ever answers with it."""

    __tablename__ = "environment_secret"
    environment: str = Field(primary_key=True, max_length=63)
    name: str = Field(primary_key=True, max_length=128)
    #: a Fernet token (AES-128-CBC with HMAC-SHA256) under ``SHIPYARD_SECRET_KEY``
    ciphertext: str = _text()
    updated_at: datetime = _ts(nullable=False)
    updated_by: str = Field(max_length=200)


class RunnerRow(SQLModel, table=True):
    """A runner as the server last saw it (``storage.runners``): written as it claims and renews,
    so ``GET /api/v1/runners`` can tell online from offline, and a drain reaches it."""

    __tablename__ = "runner"
    name: str = Field(primary_key=True, max_length=200)
    labels: list[str] = _json([])
    version: str = Field(default="", max_length=64)
    capacity: int = 0
    lease_s: float = 30.0
    first_seen: datetime = _ts(nullable=False)
    last_seen: datetime = _ts(nullable=False)
    #: told to claim nothing more: it finishes its jobs and stops
    draining: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})


class WebLoginRow(SQLModel, table=True):
    """A one-time sign-in link for the web view (``/deploy login``): only the SHA-256 of its
    secret is kept; it is used once (``used_at``) before ``expires_at`` or never."""

    __tablename__ = "web_login"
    token_hash: str = Field(primary_key=True, max_length=64)
    principal: str = Field(max_length=200)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False)
    used_at: datetime | None = _ts()


class WebSessionRow(SQLModel, table=True):
    """A signed-in browser (``storage.web``): the cookie's SHA-256, who, the session's CSRF
    token, and until when; ``ended_at`` once signed out."""

    __tablename__ = "web_session"
    token_hash: str = Field(primary_key=True, max_length=64)
    principal: str = Field(max_length=200)
    #: how the person signed in: ``slack`` (a login link) or ``token`` (an API token)
    via: str = Field(max_length=16)
    csrf: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime = _ts(nullable=False, index=True)
    ended_at: datetime | None = _ts()
