"""The ports the engine needs from the outside world, as Protocols.

``storage.store.SqlStore`` implements ``Store`` for SQLite and PostgreSQL. The methods are
synchronous: the async shell runs them on a dedicated thread pool (one thread on SQLite,
which is its single-writer path).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from core.access import Grant
from core.analysis import Analysis, AnalysisKind, AnalysisStatus, EnvironmentHealth
from core.artifacts import Artifact, ArtifactSpec
from core.checks import VerifyPolicy
from core.commands import ReportTarget
from core.definition import PipelineDef
from core.engine import Change
from core.events import Event
from core.locks import LockAction
from core.model import Gate, Job, Run, RunState
from core.review import Review


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineVersion:
    """One immutable content of a pipeline; runs point at the version they started from."""

    id: str
    pipeline: str
    version: int
    digest: str
    definition: PipelineDef
    source: str
    source_path: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    at: datetime
    actor: str
    channel: str
    action: str
    target: str
    outcome: str
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """A deploy stage that finished: what went to which environment, and how it ended."""

    environment: str
    pipeline: str
    run_id: str
    run_number: int
    stage: str
    status: str
    revision: str | None
    parameters: dict[str, str]
    triggered_by: str
    started_at: datetime | None
    finished_at: datetime
    id: int | None = None
    #: what it deployed (``web@1.4.2``) when the run built or was given an artifact
    artifact_id: str | None = None
    artifact: str | None = None
    #: ``deploy``, ``promotion`` or ``rollback``
    kind: str = "deploy"
    #: ``verified`` or ``failed`` when its environment verified it (``verify``); None: not verified
    verification: str | None = None
    #: when the deployed commit was made (None: unknown)
    revision_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class LogChunk:
    job_id: str
    attempt: int
    seq: int
    stream: str
    text: str


class Tx(Protocol):
    """One database transaction. Raising ``Conflict`` from any write rolls it back."""

    def load_run(self, run_id: str) -> RunState | None: ...
    def find_run(self, ref: str) -> RunState | None: ...
    def read_versions(self, run_ids: Sequence[str]) -> None: ...
    def run_by_idempotency_key(self, pipeline: str, key: str) -> RunState | None: ...
    def retried_as(self, run_id: str) -> str | None:
        """The ref of the run that retried ``run_id`` (this transaction's own included), or None."""
        ...

    def next_run_number(self, pipeline: str) -> int: ...
    def schedule_changed(self, schedule_id: str, version: int) -> str | None:
        """Why a fire of the schedule read at ``version`` must not start a run (deleted,
        paused, changed since), or None; on PostgreSQL the row is held until the commit."""
        ...

    def prepare_triggers(self, triggers: Sequence[tuple[str, str | None]]) -> None:
        """Read ahead for a batch of triggers, each (pipeline, idempotency key)."""
        ...

    def insert_run(self, state: RunState, report_to: ReportTarget | None = None) -> None:
        """Insert a new run and, with ``report_to``, where it reports in Slack."""
        ...

    def apply(self, state: RunState, expect_version: int, changes: Sequence[Change]) -> None: ...
    def apply_claims(self, claims: Sequence[Change], run_versions: dict[str, int]) -> None: ...
    def flush_writes(self) -> None: ...
    def append_events(self, events: Sequence[Event]) -> None: ...
    def audit(self, entry: AuditEntry) -> None: ...
    def claimable_jobs(
        self, limit: int, runner: str = "", labels: Sequence[str] = ()
    ) -> list[tuple[str, str, int]]:
        """Queued jobs ``runner`` may take: it carries all their labels and is not draining."""
        ...

    def renew_lease(self, runner: str, job_id: str, attempt: int, until: datetime) -> bool: ...
    def expired_leases(self, now: datetime, limit: int) -> list[Job]: ...
    def jobs_held_by(self, runner: str) -> list[Job]: ...
    def held_attempts(self, runner: str, held: Sequence[tuple[str, int]]) -> set[str]: ...
    def runs_going_on(self, run_ids: Sequence[str]) -> set[str]:
        """Those of ``run_ids`` that exist and have not ended."""
        ...

    def due_gates(self, now: datetime, limit: int) -> list[Gate]: ...
    def overdue_runs(self, now: datetime, limit: int) -> list[str]: ...
    def in_flight(self) -> bool:
        """Whether anything exists that time could make due: a running job, an open gate, a
        queued stage, a live run with a deadline."""
        ...

    def environment_queue(
        self, env: str, limit: int | None = None
    ) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
        """(id, ref) of the run deploying to ``env`` now, if any, and of those queued for it,
        in queue order."""
        ...

    def queued_environments(self) -> list[str]: ...
    def queue_head_at(self, state: RunState) -> datetime | None:
        """When the first run in the queue ``state``'s queued stage waits in joined it."""
        ...

    def register_artifact(self, spec: ArtifactSpec, run: Run, now: datetime) -> Artifact:
        """Register what a job of ``run`` built (``DigestConflict`` if the version is taken)."""
        ...

    def artifact(self, ref: str) -> Artifact | None: ...
    def deployments_to(self, env: str, limit: int) -> list[Deployment]:
        """Newest first."""
        ...

    def deployed_ok(self, artifact_id: str, env: str) -> bool: ...
    def newest_artifact_of(self, pipeline: str) -> Artifact | None: ...
    def artifacts_of_run(self, run_id: str) -> list[Artifact]: ...
    def lock_after_rollback(self, env: str, reason: str, now: datetime) -> LockAction | None:
        """ACQUIRE: locked a free environment; RELOCK: a manual lock became the rollback lock."""
        ...

    def start_analysis(
        self,
        analysis_id: str,
        environment: str,
        run_id: str,
        stage_index: int,
        policy: VerifyPolicy,
        now: datetime,
        kind: AnalysisKind = AnalysisKind.VERIFY,
    ) -> Analysis:
        """Start verifying a run's deployment, or measuring a canary step (``kind``;
        ``core.analysis``): its checks due at once, its deadline ``now + policy.for``."""
        ...

    def end_analysis(
        self, analysis_id: str, status: AnalysisStatus, reason: str, by: str, now: datetime
    ) -> bool:
        """End a running analysis; False if it had ended already (someone else acts on it)."""
        ...

    def open_review(self, review: Review) -> None: ...
    def environment_lock(self, env: str, now: datetime) -> str | None:
        """Who holds ``env``'s lock, since when and why, for people; None when it is free."""
        ...

    def live_pools(self, env: str) -> dict[str, str]:
        """Router name → the pool a blue/green promotion left serving in ``env`` (routers never
        switched are not named)."""
        ...

    def set_live_pool(self, env: str, router: str, pool: str, now: datetime) -> None:
        """Record that ``pool`` of ``env``'s ``router`` serves now (a blue/green promotion)."""
        ...

    def sealed_secrets(self, env: str) -> dict[str, str]:
        """``env``'s secrets by name, encrypted as stored (``storage.secrets``)."""
        ...

    def environment_health(self, env: str) -> EnvironmentHealth | None:
        """``env``'s health now (``storage.analyses`` keeps it); None before it has any."""
        ...

    def claim_gate_check(self, gate: Gate, until: datetime) -> bool: ...
    def latest_version(self, pipeline: str) -> PipelineVersion | None: ...
    def version_by_id(self, version_id: str) -> PipelineVersion | None: ...
    def version_by_number(self, pipeline: str, number: int) -> PipelineVersion | None: ...
    def set_archived(self, pipeline: str, archived: bool) -> bool: ...
    def is_archived(self, pipeline: str) -> bool | None: ...
    def add_version(
        self, definition: PipelineDef, source: str, source_path: str | None, now: datetime
    ) -> tuple[PipelineVersion, bool]: ...
    def pipeline_names(self) -> list[str]: ...
    def grants_of(self, principal: str) -> list[Grant]: ...
    def record_deployment(self, deployment: Deployment) -> None: ...


class Store(Protocol):
    """Where the truth lives."""

    #: how many threads may use the store at once (1 on SQLite)
    max_workers: int

    def transaction(self) -> AbstractContextManager[Tx]: ...
    def reading(self) -> AbstractContextManager[Tx]:
        """A read-only transaction (it never takes SQLite's write lock)."""
        ...

    def append_log(
        self, job_id: str, attempt: int, runner: str, chunks: Sequence[tuple[str, str]]
    ) -> bool: ...
    def read_log(self, job_id: str, attempt: int | None = None) -> Iterator[LogChunk]: ...
    def log_pages(
        self, job_id: str, attempt: int | None = None, size: int = ...
    ) -> Iterator[list[LogChunk]]: ...
    def tail_log(self, job_id: str, lines: int = 20, attempt: int | None = None) -> list[str]: ...
    def events_after(self, seq: int, limit: int = 500, run_id: str | None = None) -> list[Event]: ...
    def last_event_seq(self) -> int: ...
    def audit_entries(self, limit: int = 100) -> list[AuditEntry]: ...
    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunState]: ...
    def dispose(self) -> None: ...
    def ping(self) -> None: ...
    def unreachable(self, exc: BaseException) -> str | None:
        """Why ``exc`` means the database could not be reached (its driver's words), or None
        when it means something else (a refusal, a lost race, a bug)."""
        ...
