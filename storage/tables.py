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


class RunRow(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (
        sa.UniqueConstraint("pipeline", "number"),
        sa.UniqueConstraint("pipeline", "idempotency_key"),
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
    version: int = 0


class StageRow(SQLModel, table=True):
    __tablename__ = "stage"
    id: str = Field(primary_key=True, max_length=80)
    run_id: str = Field(foreign_key="run.id", index=True, max_length=64)
    position: int
    name: str = Field(max_length=63)
    environment: str | None = Field(default=None, max_length=63, index=True)
    status: str = Field(max_length=16)
    reason: str = _text()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class JobRow(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        sa.Index("ix_job_status_queued_at", "status", "queued_at"),
        sa.Index("ix_job_status_lease", "status", "lease_expires_at"),
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
    runner: str | None = Field(default=None, index=True, max_length=200)
    lease_expires_at: datetime | None = _ts()
    exit_code: int | None = None
    outputs: dict[str, str] = _json({})
    reason: str = _text()
    queued_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


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


class DeploymentRow(SQLModel, table=True):
    """One deploy stage that finished: what went where, when, by whom, and how it ended."""

    __tablename__ = "deployment"
    __table_args__ = (sa.Index("ix_deployment_env_seq", "environment", "id"),)
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
    """A remembered response to a request carrying an ``Idempotency-Key``, per caller."""

    __tablename__ = "idempotency"
    caller: str = Field(primary_key=True, max_length=200)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    state: str = Field(max_length=12)  # processing | done
    status_code: int | None = None
    response: dict[str, Any] = _json({})
    created_at: datetime = _ts(nullable=False, index=True)


class SlackMessageRow(SQLModel, table=True):
    """Where a run's Slack message lives (``ts`` once posted) and which thread posts it got."""

    __tablename__ = "slack_message"
    run_id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(max_length=40)
    ts: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts(nullable=False)


class SlackPostRow(SQLModel, table=True):
    """A thread message about a run (a gate opened, a job failed, the result), claimed by
    inserting its key before it is sent, so it is never sent twice."""

    __tablename__ = "slack_post"
    run_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=120)
    ts: str | None = Field(default=None, max_length=40)


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
