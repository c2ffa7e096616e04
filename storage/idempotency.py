"""Remembered responses for requests that carry an ``Idempotency-Key``.

The first request with a key inserts a ``processing`` row (the primary key (caller, key)
makes the insert the lock: of a hundred concurrent requests exactly one wins); it stores
its response when done. A repeat gets that response back, a repeat with another body is told
so, and a repeat while the first is still working is told to wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from storage.store import SqlStore
from storage.tables import T

IDEMPOTENCY = T["idempotency"]
#: a request still "processing" after this long died with its process; its key is free again
ABANDONED_AFTER = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Literal["new", "replay", "mismatch", "in_progress"]
    status_code: int | None = None
    response: dict[str, Any] | None = None


class IdempotencyStore:
    def __init__(self, store: SqlStore, keep: timedelta) -> None:
        self.store = store
        self.keep = keep

    def claim(self, caller: str, key: str, fingerprint: str, now: datetime) -> Claim:
        where = sa.and_(IDEMPOTENCY.c.caller == caller, IDEMPOTENCY.c.key == key)
        with self.store.engine.begin() as conn:
            # a key past its retention, or left behind by a crashed request, is free again
            conn.execute(
                sa.delete(IDEMPOTENCY).where(
                    where,
                    sa.or_(
                        IDEMPOTENCY.c.created_at < now - self.keep,
                        sa.and_(
                            IDEMPOTENCY.c.state == "processing",
                            IDEMPOTENCY.c.created_at < now - ABANDONED_AFTER,
                        ),
                    ),
                )
            )
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(IDEMPOTENCY).values(
                            caller=caller,
                            key=key,
                            fingerprint=fingerprint,
                            state="processing",
                            response={},
                            created_at=now,
                        )
                    )
                return Claim("new")
            except IntegrityError:
                pass
            row = conn.execute(sa.select(IDEMPOTENCY).where(where)).mappings().first()
        if row is None:  # finished and deleted in between: extremely rare; ask the caller to retry
            return Claim("in_progress")
        if row["fingerprint"] != fingerprint:
            return Claim("mismatch")
        if row["state"] == "processing":
            return Claim("in_progress")
        return Claim("replay", row["status_code"], row["response"])

    def finish(self, caller: str, key: str, status_code: int, response: dict[str, Any]) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                sa.update(IDEMPOTENCY)
                .where(IDEMPOTENCY.c.caller == caller, IDEMPOTENCY.c.key == key)
                .values(state="done", status_code=status_code, response=response)
            )

    def release(self, caller: str, key: str) -> None:
        """Forget a key whose request failed in a way worth retrying (the server's fault)."""
        with self.store.engine.begin() as conn:
            conn.execute(
                sa.delete(IDEMPOTENCY).where(IDEMPOTENCY.c.caller == caller, IDEMPOTENCY.c.key == key)
            )

    def purge(self, now: datetime, limit: int) -> int:
        """Delete up to ``limit`` keys past their keeping time; returns how many (the hourly
        housekeeping calls it until fewer come back)."""
        expired = IDEMPOTENCY.c.created_at < now - self.keep
        with self.store.engine.begin() as conn:
            rows = conn.execute(
                sa.select(IDEMPOTENCY.c.caller, IDEMPOTENCY.c.key).where(expired).limit(limit)
            ).all()
            if not rows:
                return 0
            return int(
                conn.execute(
                    sa.delete(IDEMPOTENCY).where(
                        sa.tuple_(IDEMPOTENCY.c.caller, IDEMPOTENCY.c.key).in_([tuple(r) for r in rows]),
                        expired,
                    )
                ).rowcount
            )
