"""The artifact registry in the database.

``register`` works inside a transaction someone else holds (the engine's, when a job reports
an artifact), so it never commits. The unique constraint on (name, version) is the arbiter:
the insert runs in a savepoint, and a registration that loses to a concurrent one reads the
winner and is either the same content (an idempotent repeat) or refused (``DigestConflict``).
On PostgreSQL the loser's insert waits for the winner's commit, so exactly one of any number of
concurrent registrations of one version succeeds; on SQLite the single writer orders them.

Marking bad is the artifact's one transition (``storage.transition.move``: a conditional
update on ``NOT bad``), so two people marking at once get one success and one clear "already
marked bad by …". Each change appends its event (``artifact.registered``,
``artifact.marked_bad``) to the caller's unit of work, so the change and its event commit
together or not at all. ``ArtifactStore`` runs both in a unit of work of their own for the API
and chat, and writes the audit entry in the same transaction.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.artifacts import (
    Artifact,
    ArtifactSpec,
    DigestConflict,
    artifact_id,
    check_mark_bad,
    check_reason,
    new_id,
    not_found,
)
from core.errors import CommandRefused, InvalidInput
from core.events import Event, resource_event
from core.ports import AuditEntry
from core.states import ArtifactStatus
from storage.store import SqlStore, SqlTx
from storage.tables import metadata
from storage.transition import move

ARTIFACT = metadata.tables["artifact"]
C = ARTIFACT.c
NEWEST_FIRST = (C.created_at.desc(), C.id.desc())
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _artifact(r: Any) -> Artifact:
    return Artifact(
        id=r["id"],
        name=r["name"],
        version=r["version"],
        digest=r["digest"],
        uri=r["uri"],
        metadata=dict(r["metadata"]),
        run_id=r["run_id"],
        pipeline=r["pipeline"],
        created_by=r["created_by"],
        created_at=r["created_at"],
        bad=bool(r["bad"]),
        bad_reason=r["bad_reason"],
        bad_by=r["bad_by"],
        bad_at=r["bad_at"],
    )


def _where(ref: str) -> Any:
    """The row ``ref`` names (an id or ``name@version``), or None if it can name none."""
    if (ident := artifact_id(ref)) is not None:
        return C.id == ident
    name, sep, version = ref.partition("@")
    if sep and name and version:
        return sa.and_(C.name == name, C.version == version)
    return None


def find(conn: Connection, ref: str) -> Artifact | None:
    """The artifact ``ref`` names (its id, or ``name@version``), in ``conn``'s transaction."""
    where = _where(ref)
    if where is None:
        return None
    row = conn.execute(sa.select(ARTIFACT).where(where)).mappings().first()
    return _artifact(row) if row else None


def of_run(conn: Connection, run_id: str) -> list[Artifact]:
    """The artifacts a run's jobs registered, oldest first."""
    rows = conn.execute(sa.select(ARTIFACT).where(C.run_id == run_id).order_by(C.created_at, C.id))
    return [_artifact(r) for r in rows.mappings()]


def newest_of(conn: Connection, pipeline: str) -> Artifact | None:
    """The artifact the pipeline's runs registered last."""
    query = (
        sa.select(ARTIFACT).where(C.pipeline == pipeline).order_by(C.created_at.desc(), C.id.desc()).limit(1)
    )
    row = conn.execute(query).mappings().first()
    return _artifact(row) if row else None


def register(
    tx: SqlTx,
    spec: ArtifactSpec,
    *,
    run_id: str | None,
    pipeline: str | None,
    by: str,
    now: datetime,
) -> tuple[Artifact, bool]:
    """Register ``spec`` in the caller's transaction: ``(artifact, True)`` when new,
    ``(existing, False)`` when this version is registered with the same digest already.
    Raises ``DigestConflict`` when it is registered with another digest."""
    conn = tx.conn
    ref = f"{spec.name}@{spec.version}"
    existing = find(conn, ref)
    if existing is None:
        artifact = Artifact(
            id=new_id(),
            name=spec.name,
            version=spec.version,
            digest=spec.digest,
            uri=spec.uri,
            metadata=dict(spec.metadata),
            run_id=run_id,
            pipeline=pipeline,
            created_by=by,
            created_at=now,
        )
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(ARTIFACT).values(**_values(artifact)))
            tx.append_events([_event("registered", artifact, now, ref=artifact.ref, by=by, run_id=run_id)])
            return artifact, True
        except IntegrityError:  # registered concurrently (we waited for its commit): read it
            existing = find(conn, ref)
            if existing is None:
                raise
    if existing.digest != spec.digest:
        raise DigestConflict(existing, spec.digest)
    return existing, False


def _values(a: Artifact) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "version": a.version,
        "digest": a.digest,
        "uri": a.uri,
        "metadata": dict(a.metadata),
        "run_id": a.run_id,
        "pipeline": a.pipeline,
        "created_by": a.created_by,
        "created_at": a.created_at,
        "bad": a.bad,
        "bad_reason": a.bad_reason,
        "bad_by": a.bad_by,
        "bad_at": a.bad_at,
    }


def mark_bad(tx: SqlTx, ref: str, reason: str, *, by: str, now: datetime) -> Artifact:
    """Mark the artifact bad in the caller's transaction; ``NotFound``, ``AlreadyBad``."""
    conn = tx.conn
    reason = check_reason(reason)
    found = find(conn, ref)
    if found is None:
        raise not_found(ref)
    check_mark_bad(found)
    values = {"bad_reason": reason, "bad_by": by, "bad_at": now}
    if not move(conn, "artifact", found.ref, C.id == found.id, found.status, ArtifactStatus.BAD, values):
        # someone marked it between our read and our update
        now_found = find(conn, ref)
        assert now_found is not None  # artifacts are never deleted
        check_mark_bad(now_found)
    tx.append_events([_event("marked_bad", found, now, ref=found.ref, by=by, reason=reason)])
    return replace(found, bad=True, bad_reason=reason, bad_by=by, bad_at=now)


def _event(happened: str, artifact: Artifact, at: datetime, **data: object) -> Event:
    return resource_event("artifact", happened, artifact.id, at, **data)


# -- pages ------------------------------------------------------------------------------------
def cursor_of(a: Artifact) -> str:
    """Lists are ordered by (created_at, id), newest first: the cursor is both."""
    return f"{(a.created_at - EPOCH) // timedelta(microseconds=1)}.{a.id}"


def _position(cursor: str) -> tuple[datetime, str]:
    micros, sep, ident = cursor.partition(".")
    try:
        at = EPOCH + timedelta(microseconds=int(micros))
    except OverflowError:
        at = datetime.max.replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"cursor {cursor[:80]!r} is not one this list gave out") from None
    if not sep:
        raise InvalidInput(f"cursor {cursor[:80]!r} is not one this list gave out")
    return at, ident


@dataclass(frozen=True, slots=True)
class ArtifactPage:
    items: list[Artifact]
    #: pass back to continue; None at the end
    next_cursor: str | None


class ArtifactStore:
    """The registry, each call in a unit of work of its own, for the REST API and chat."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def register(
        self,
        spec: ArtifactSpec,
        *,
        by: str,
        now: datetime,
        run_id: str | None = None,
        pipeline: str | None = None,
    ) -> tuple[Artifact, bool]:
        with self.store.transaction() as tx:
            return register(tx, spec, run_id=run_id, pipeline=pipeline, by=by, now=now)

    def get(self, ref: str) -> Artifact | None:
        with self.store.reading() as tx:
            return find(tx.conn, ref)

    def list(self, name: str | None = None, cursor: str | None = None, limit: int = 50) -> ArtifactPage:
        """Newest first; ``cursor`` continues after the last item of the previous page."""
        query = sa.select(ARTIFACT).order_by(*NEWEST_FIRST).limit(limit + 1)
        if name is not None:
            query = query.where(C.name == name)
        if cursor:
            at, ident = _position(cursor)
            query = query.where(sa.or_(C.created_at < at, sa.and_(C.created_at == at, C.id < ident)))
        with self.store.reading() as tx:
            items = [_artifact(r) for r in tx.conn.execute(query).mappings()]
        more = len(items) > limit
        items = items[:limit]
        return ArtifactPage(items, cursor_of(items[-1]) if more and items else None)

    def versions_of(self, name: str) -> builtins.list[Artifact]:
        """Every version of ``name``, newest first."""
        with self.store.reading() as tx:
            rows = tx.conn.execute(sa.select(ARTIFACT).where(C.name == name).order_by(*NEWEST_FIRST))
            return [_artifact(r) for r in rows.mappings()]

    def names(self) -> builtins.list[str]:
        with self.store.reading() as tx:
            return list(tx.conn.execute(sa.select(C.name).distinct().order_by(C.name)).scalars())

    def mark_bad(self, ref: str, reason: str, *, by: str, now: datetime, channel: str) -> Artifact:
        """Mark bad and audit it in one transaction; a refusal is audited too, then raised."""
        try:
            with self.store.transaction() as tx:
                artifact = mark_bad(tx, ref, reason, by=by, now=now)
                tx.audit(_audit(by, channel, ref, "accepted", artifact.bad_reason or "", now, artifact))
            return artifact
        except CommandRefused as exc:
            self.store.append_audit(_audit(by, channel, ref, "rejected", exc.message, now, None))
            raise


def _audit(
    by: str, channel: str, ref: str, outcome: str, reason: str, at: datetime, artifact: Artifact | None
) -> AuditEntry:
    detail = {"artifact_id": artifact.id, "digest": artifact.digest} if artifact else {}
    target = f"artifact {artifact.ref}" if artifact else f"artifact {ref[:180]}"
    return AuditEntry(
        at=at,
        actor=by,
        channel=channel,
        action="mark_artifact_bad",
        target=target,
        outcome=outcome,
        reason=reason,
        detail=detail,
    )
