"""Rows to domain objects and back. Domain field names differ from columns only where a
column name would be an SQL keyword (``index`` is stored as ``position``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from core.definition import PipelineDef
from core.engine import Change
from core.events import Event
from core.model import Approval, Gate, Job, LostAttempt, Run, Stage
from core.ports import PipelineVersion
from core.rollout import Rollout
from core.states import GateStatus, JobStatus, RunStatus, StageStatus


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def run_from_row(r: Mapping[Any, Any]) -> Run:
    return Run(
        id=r["id"],
        number=r["number"],
        pipeline=r["pipeline"],
        pipeline_version=r["pipeline_version"],
        version_id=r["version_id"],
        status=RunStatus(r["status"]),
        parameters=r["parameters"],
        source_revision=r["source_revision"],
        triggered_by=r["triggered_by"],
        trigger_channel=r["trigger_channel"],
        idempotency_key=r["idempotency_key"],
        retry_of=r["retry_of"],
        requested_by=tuple(r["requested_by"]),
        warnings=tuple(r["warnings"]),
        reason=r["reason"],
        created_at=r["created_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        deadline=r["deadline"],
        branch=r["branch"],
        kind=r["kind"],
        artifact_id=r["artifact_id"],
        break_glass=r["break_glass"],
        deploy_to=r["deploy_to"],
        revision_time=r["revision_time"],
        version=r["version"],
    )


def stage_from_row(r: Mapping[Any, Any]) -> Stage:
    return Stage(
        id=r["id"],
        run_id=r["run_id"],
        index=r["position"],
        name=r["name"],
        environment=r["environment"],
        status=StageStatus(r["status"]),
        reason=r["reason"],
        reused_from=r["reused_from"],
        queued_at=r["queued_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        verify_for=r["verify_for"],
        verify_rollback=r["verify_rollback"],
        verify_until=r["verify_until"],
        rollout=Rollout.from_json(r["rollout"]) if r["rollout"] is not None else None,
    )


def job_from_row(r: Mapping[Any, Any]) -> Job:
    return Job(
        id=r["id"],
        run_id=r["run_id"],
        stage_index=r["stage_index"],
        index=r["position"],
        name=r["name"],
        status=JobStatus(r["status"]),
        attempt=r["attempt"],
        failures=r["failures"],
        retries=r["retries"],
        allow_failure=r["allow_failure"],
        timeout_s=r["timeout_s"],
        runner=r["runner"],
        lease_expires_at=r["lease_expires_at"],
        exit_code=r["exit_code"],
        outputs=r["outputs"],
        reason=r["reason"],
        reused_from=r["reused_from"],
        lost=tuple(LostAttempt(**a) for a in r["lost"] or ()),
        queued_at=r["queued_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        labels=tuple(r["labels"] or ()),
    )


def gate_from_row(r: Mapping[Any, Any]) -> Gate:
    return Gate(
        id=r["id"],
        run_id=r["run_id"],
        stage_index=r["stage_index"],
        stage_name=r["stage_name"],
        kind=r["kind"],
        status=GateStatus(r["status"]),
        approvers=tuple(r["approvers"]),
        min_approvals=r["min_approvals"],
        allow_self_approval=r["allow_self_approval"],
        approvals=tuple(_approval(a) for a in r["approvals"]),
        timeout_s=r["timeout_s"],
        on_timeout=r["on_timeout"],
        interval_s=r["interval_s"],
        deadline=r["deadline"],
        next_check_at=r["next_check_at"],
        decided_by=r["decided_by"],
        reason=r["reason"],
        opened_at=r["opened_at"],
        decided_at=r["decided_at"],
    )


def _approval(a: Mapping[str, str]) -> Approval:
    return Approval(
        a["actor"], _aware(datetime.fromisoformat(a["at"])) or datetime.now(UTC), a.get("comment", "")
    )


def _value(key: str, value: Any) -> tuple[str, Any]:
    """A domain field and value as a column and value."""
    if key == "index":
        return "position", value
    if key == "approvals":
        return key, [{"actor": a.actor, "at": a.at.isoformat(), "comment": a.comment} for a in value]
    if key in ("warnings", "approvers", "requested_by", "labels"):
        return key, list(value)
    if key in ("outputs", "parameters"):
        return key, dict(value)
    if key == "lost":
        return key, [asdict(a) for a in value]
    if key == "rollout":
        return key, value.to_json() if value is not None else None
    return key, value


def row_values(entity: Run | Stage | Job | Gate) -> dict[str, Any]:
    return dict(_value(name, getattr(entity, name)) for name in entity.__dataclass_fields__)


def change_values(change: Change) -> dict[str, Any]:
    return dict(_value(k, v) for k, v in change.values.items())


def event_values(e: Event) -> dict[str, Any]:
    return {
        "name": e.name,
        "run_id": e.run_id,
        "subject": e.subject,
        "subject_id": e.subject_id,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "at": e.at,
        "data": e.data,  # plain JSON values by construction (core.events); the JSON column encodes it
    }


def event_from_row(r: Mapping[Any, Any]) -> Event:
    return Event(
        seq=r["seq"],
        name=r["name"],
        run_id=r["run_id"],
        subject=r["subject"],
        subject_id=r["subject_id"],
        from_status=r["from_status"],
        to_status=r["to_status"],
        at=r["at"],
        data=r["data"],
    )


def jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def version_from_row(r: Mapping[Any, Any]) -> PipelineVersion:
    return PipelineVersion(
        id=r["id"],
        pipeline=r["pipeline"],
        version=r["version"],
        digest=r["digest"],
        definition=PipelineDef.model_validate(r["definition"]),
        source=r["source"],
        source_path=r["source_path"],
        created_at=r["created_at"],
    )
