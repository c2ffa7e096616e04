"""Break-glass reviews in the database (``core.review``).

Opening a review (in the transaction that creates its run) and acknowledging it each append
their event (``review.opened``, ``review.acknowledged``) to the same unit of work."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.errors import CommandRefused, NotFound
from core.events import resource_event
from core.ports import AuditEntry
from core.review import Review, check_acknowledge
from storage.store import SqlStore, SqlTx
from storage.tables import metadata

REVIEW = metadata.tables["review"]
C = REVIEW.c


def _review(r: Any) -> Review:
    return Review(
        run_id=r["run_id"],
        admin=r["admin"],
        reason=r["reason"],
        opened_at=r["opened_at"],
        due_at=r["due_at"],
        acknowledged_by=r["acknowledged_by"],
        acknowledged_at=r["acknowledged_at"],
    )


def insert(tx: SqlTx, review: Review) -> None:
    """Open ``review`` in the caller's transaction (the one that creates its run)."""
    tx.conn.execute(
        sa.insert(REVIEW).values(
            run_id=review.run_id,
            admin=review.admin,
            reason=review.reason,
            opened_at=review.opened_at,
            due_at=review.due_at,
        )
    )
    event = resource_event(
        "review", "opened", review.run_id, review.opened_at, run_id=review.run_id, admin=review.admin
    )
    tx.append_events([event])


class ReviewStore:
    """Break-glass reviews, each call in a unit of work of its own."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def get(self, run_id: str) -> Review | None:
        with self.store.reading() as tx:
            row = tx.conn.execute(sa.select(REVIEW).where(C.run_id == run_id)).mappings().first()
            return _review(row) if row else None

    def pending(self, limit: int = 200) -> list[Review]:
        """Reviews nobody acknowledged yet, oldest first (few: break glass is rare)."""
        query = sa.select(REVIEW).where(C.acknowledged_at.is_(None)).order_by(C.opened_at).limit(limit)
        with self.store.reading() as tx:
            return [_review(r) for r in tx.conn.execute(query).mappings()]

    def acknowledge(
        self, run_id: str, by: str, requested_by: tuple[str, ...], now: datetime, *, channel: str, ref: str
    ) -> Review:
        """Acknowledge the review of ``run_id`` as ``by``; refusals are audited too."""
        entry = AuditEntry(
            at=now, actor=by, channel=channel, action="acknowledge_review", target=ref, outcome="accepted"
        )
        refusal: CommandRefused | None = None
        with self.store.transaction() as tx:
            row = tx.conn.execute(sa.select(REVIEW).where(C.run_id == run_id)).mappings().first()
            try:
                if row is None:
                    raise NotFound(f"{ref} did not break the glass: there is no review to acknowledge")
                review = _review(row)
                check_acknowledge(review, by, requested_by)
                done = tx.conn.execute(
                    sa.update(REVIEW)
                    .where(C.run_id == run_id, C.acknowledged_at.is_(None))
                    .values(acknowledged_by=by, acknowledged_at=now)
                )
                if done.rowcount != 1:
                    raise CommandRefused(f"the review of {ref} was acknowledged by someone else a moment ago")
                tx.append_events(
                    [resource_event("review", "acknowledged", run_id, now, run_id=run_id, by=by)]
                )
            except CommandRefused as exc:
                refusal = exc
                entry = replace(entry, outcome="rejected", reason=exc.message)
            tx.audit(entry)
        if refusal is not None:
            raise refusal
        return replace(review, acknowledged_by=by, acknowledged_at=now)
