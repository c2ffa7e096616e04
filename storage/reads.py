"""What the REST API and the console read: lists with filters and keyset pagination.

Every list is ordered by a unique key and continued from the last key seen (never OFFSET),
so a page costs the same on the millionth run as on the first, and rows written meanwhile
never shift a page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from core.audit import ChainedEntry
from core.dora import DeploymentFacts
from core.model import RunState
from core.ports import AuditEntry, Deployment, PipelineVersion
from core.states import RUN_TERMINAL, RunStatus
from storage import mappers
from storage.store import SqlStore
from storage.tables import T, metadata

RUN, STAGE, PIPELINE, VERSION = T["run"], T["stage"], T["pipeline"], T["pipeline_version"]
GATE, EVENT = T["gate"], T["event"]
ARTIFACT = metadata.tables["artifact"]
DEPLOYMENT, AUDIT = T["deployment"], T["audit"]
ALL_VERSION_IDS = sa.select(VERSION.c.id)
DEPLOYMENTS = (
    sa.select(DEPLOYMENT)
    .where(DEPLOYMENT.c.environment == sa.bindparam("env"), DEPLOYMENT.c.id < sa.bindparam("before"))
    .order_by(DEPLOYMENT.c.id.desc())
    .limit(sa.bindparam("limit"))
)


@dataclass(frozen=True, slots=True)
class PipelineInfo:
    name: str
    archived: bool
    created_at: datetime
    latest: PipelineVersion


@dataclass(frozen=True, slots=True)
class RunFilter:
    pipeline: str | None = None
    status: str | None = None
    environment: str | None = None
    triggered_by: str | None = None


class Reads:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._seen: set[str] = set()
        self._environments: set[str] = set()
        self._lock = threading.Lock()

    # -- pipelines ----------------------------------------------------------------------------
    def pipelines(self, after: str | None, limit: int, archived: bool = False) -> list[PipelineInfo]:
        query = sa.select(PIPELINE).order_by(PIPELINE.c.name).limit(limit)
        if not archived:
            query = query.where(PIPELINE.c.archived.is_(False))
        if after is not None:
            query = query.where(PIPELINE.c.name > after)
        with self.store.reading() as tx:
            rows = tx.conn.execute(query).mappings().all()
            return [info for r in rows if (info := self._info(tx.conn, r)) is not None]

    def pipeline_names(self, archived: bool = False) -> list[str]:
        """Every pipeline's name, in order (``archived``: the archived ones too): what a typo is
        matched against, however many there are."""
        query = sa.select(PIPELINE.c.name).order_by(PIPELINE.c.name)
        if not archived:
            query = query.where(PIPELINE.c.archived.is_(False))
        with self.store.reading() as tx:
            return list(tx.conn.execute(query).scalars())

    def pipeline(self, name: str) -> PipelineInfo | None:
        with self.store.reading() as tx:
            row = tx.conn.execute(sa.select(PIPELINE).where(PIPELINE.c.name == name)).mappings().first()
            return self._info(tx.conn, row) if row is not None else None

    def _info(self, conn: sa.Connection, row: Any) -> PipelineInfo | None:
        latest = conn.execute(
            sa.select(VERSION.c.id)
            .where(VERSION.c.pipeline == row["name"])
            .order_by(VERSION.c.version.desc())
            .limit(1)
        ).scalar()
        version = self.store.version(latest, conn) if latest else None
        if version is None:
            return None
        return PipelineInfo(row["name"], row["archived"], row["created_at"], version)

    def versions(self, name: str, before: int | None, limit: int) -> list[PipelineVersion]:
        query = (
            sa.select(VERSION.c.id)
            .where(VERSION.c.pipeline == name)
            .order_by(VERSION.c.version.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(VERSION.c.version < before)
        with self.store.reading() as tx:
            ids = tx.conn.execute(query).scalars().all()
            return [v for i in ids if (v := self.store.version(i, tx.conn)) is not None]

    # -- runs ---------------------------------------------------------------------------------
    def run(self, ref: str) -> RunState | None:
        with self.store.reading() as tx:
            return tx.find_run(ref)

    def run_by_key(self, pipeline: str, key: str) -> RunState | None:
        """The run of ``pipeline`` that idempotency key ``key`` started, if any."""
        with self.store.reading() as tx:
            return tx.run_by_idempotency_key(pipeline, key)

    def runs(self, where: RunFilter, after: tuple[datetime, str] | None, limit: int) -> list[RunState]:
        """Newest first: ordered by (created_at, id) descending, continued after ``after``."""
        query = sa.select(RUN.c.id).order_by(RUN.c.created_at.desc(), RUN.c.id.desc()).limit(limit)
        if where.pipeline is not None:
            query = query.where(RUN.c.pipeline == where.pipeline)
        if where.status is not None:
            query = query.where(RUN.c.status == where.status)
        if where.triggered_by is not None:
            query = query.where(RUN.c.triggered_by == where.triggered_by)
        if where.environment is not None:
            query = query.where(
                RUN.c.id.in_(sa.select(STAGE.c.run_id).where(STAGE.c.environment == where.environment))
            )
        if after is not None:
            at, run_id = after
            query = query.where(
                sa.or_(RUN.c.created_at < at, sa.and_(RUN.c.created_at == at, RUN.c.id < run_id))
            )
        with self.store.reading() as tx:
            ids = tx.conn.execute(query).scalars().all()
            return [s for run_id in ids if (s := tx.load_run(run_id)) is not None]

    def unchanged_since(self, before: datetime, limit: int = 500) -> list[tuple[RunState, datetime]]:
        """Unfinished runs whose latest event is older than ``before``, with that event's time,
        oldest first: the candidates for ``core.zombies.diagnose``."""
        last = sa.func.max(EVENT.c.at)
        query = (
            sa.select(EVENT.c.run_id, last)
            .join(RUN, RUN.c.id == EVENT.c.run_id)
            .where(RUN.c.status.in_([str(s) for s in RunStatus if s not in RUN_TERMINAL]))
            .group_by(EVENT.c.run_id)
            .having(last < before)
            .order_by(last)
            .limit(limit)
        )
        with self.store.reading() as tx:
            rows = tx.conn.execute(query).all()
            found = [
                (tx.load_run(run_id), at if at.tzinfo else at.replace(tzinfo=UTC)) for run_id, at in rows
            ]
            return [(state, at) for state, at in found if state is not None]

    def waiting_for_people(self, limit: int = 500) -> list[RunState]:
        """Runs with a manual gate open (few at any time: they wait for people)."""
        query = (
            sa.select(GATE.c.run_id)
            .where(GATE.c.status == "open", GATE.c.kind == "manual")
            .order_by(GATE.c.opened_at)
            .limit(limit)
        )
        with self.store.reading() as tx:
            ids = list(dict.fromkeys(tx.conn.execute(query).scalars()))
            return [s for run_id in ids if (s := tx.load_run(run_id)) is not None]

    # -- environments -------------------------------------------------------------------------
    def environment_names(self) -> list[str]:
        """Every environment a pipeline version deploys to. Versions are few and immutable, so
        only versions not seen before are decoded."""
        with self.store.reading() as tx:
            ids = tx.conn.execute(ALL_VERSION_IDS).scalars().all()
            for version_id in ids:
                if version_id not in self._seen:
                    version = self.store.version(version_id, tx.conn)
                    if version is not None:
                        self._environments.update(
                            s.environment for s in version.definition.stages if s.environment
                        )
                    self._seen.add(version_id)
        return sorted(self._environments)

    def deployments(self, environment: str, before: int | None, limit: int) -> list[Deployment]:
        params = {"env": environment, "before": before if before is not None else 2**63 - 1, "limit": limit}
        with self.store.reading() as tx:
            return [deployment_from_row(r) for r in tx.conn.execute(DEPLOYMENTS, params).mappings()]

    def current_deployment(self, environment: str) -> Deployment | None:
        """The newest deployment to ``environment`` that succeeded: what runs there now."""
        query = (
            sa.select(DEPLOYMENT)
            .where(DEPLOYMENT.c.environment == environment, DEPLOYMENT.c.status.in_(("succeeded", "partial")))
            .order_by(DEPLOYMENT.c.id.desc())
            .limit(1)
        )
        with self.store.reading() as tx:
            row = tx.conn.execute(query).mappings().first()
        return deployment_from_row(row) if row is not None else None

    def dora_facts(self, environment: str, since: datetime, until: datetime) -> list[DeploymentFacts]:
        """What ``core.dora.four_keys`` needs: the deployments to ``environment`` that finished in
        [since, until], in the order recorded, each with whether its artifact is marked bad. Read
        by ``ix_deployment_env_seq`` (the environment's rows only) and the artifact's key."""
        query = (
            sa.select(
                DEPLOYMENT.c.finished_at,
                DEPLOYMENT.c.status,
                DEPLOYMENT.c.pipeline,
                DEPLOYMENT.c.kind,
                DEPLOYMENT.c.verification,
                DEPLOYMENT.c.revision_time,
                sa.func.coalesce(ARTIFACT.c.bad, sa.false()),
            )
            .outerjoin(ARTIFACT, ARTIFACT.c.id == DEPLOYMENT.c.artifact_id)
            .where(
                DEPLOYMENT.c.environment == environment,
                DEPLOYMENT.c.finished_at >= since,
                DEPLOYMENT.c.finished_at <= until,
            )
            .order_by(DEPLOYMENT.c.id)
        )
        with self.store.reading() as tx:
            rows = tx.conn.execute(query).all()
        return [
            DeploymentFacts(at, status, pipeline, kind, verification, bool(bad), committed)
            for at, status, pipeline, kind, verification, committed, bad in rows
        ]

    # -- audit --------------------------------------------------------------------------------
    def audit(
        self, before: int | None, limit: int, actor: str | None = None, action: str | None = None
    ) -> list[ChainedEntry]:
        query = sa.select(AUDIT).order_by(AUDIT.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AUDIT.c.id < before)
        if actor is not None:
            query = query.where(AUDIT.c.actor == actor)
        if action is not None:
            query = query.where(AUDIT.c.action == action)
        with self.store.reading() as tx:
            return [_chained(r) for r in tx.conn.execute(query).mappings()]

    def audit_chain(self, batch: int = 5000) -> Iterator[ChainedEntry]:
        """Every audit entry in the order written, read in batches."""
        last = 0
        while True:
            query = sa.select(AUDIT).where(AUDIT.c.id > last).order_by(AUDIT.c.id).limit(batch)
            with self.store.reading() as tx:
                rows: Sequence[Any] = tx.conn.execute(query).mappings().all()
            if not rows:
                return
            for r in rows:
                yield _chained(r)
            last = rows[-1]["id"]


def deployment_from_row(r: Any) -> Deployment:
    return Deployment(
        id=r["id"],
        environment=r["environment"],
        pipeline=r["pipeline"],
        run_id=r["run_id"],
        run_number=r["run_number"],
        stage=r["stage"],
        status=r["status"],
        revision=r["revision"],
        parameters=r["parameters"],
        triggered_by=r["triggered_by"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        artifact_id=r["artifact_id"],
        artifact=r["artifact"],
        kind=r["kind"],
        verification=r["verification"],
        revision_time=r["revision_time"],
    )


def _chained(r: Any) -> ChainedEntry:
    entry = AuditEntry(
        at=r["at"],
        actor=r["actor"],
        channel=r["channel"],
        action=r["action"],
        target=r["target"],
        outcome=r["outcome"],
        reason=r["reason"],
        detail=mappers.jsonable(r["detail"]),
    )
    return ChainedEntry(r["id"], entry, r["prev_hash"], r["hash"])
