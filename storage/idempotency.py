"""Remembered responses for requests that carry an ``Idempotency-Key``.

The first request with a key inserts a ``processing`` row (the primary key (caller, key)
makes the insert the lock: of a hundred concurrent requests exactly one wins); it stores
its response when done. A repeat gets that response back, a repeat with another body is told
so, and a repeat while the first is still working is told to wait.

A claim names its holder and holds a lease that the live process renews (``renew``): a
process that was killed stops renewing, so its claim is free again within the lease and a
retry executes afresh. A command's answer is stored in the command's own transaction
(``settle``, which also fences: the work commits only if its request still holds the claim),
so a crash after the work committed leaves the answer, never a claim without its work.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from storage.store import SqlStore
from storage.tables import T

IDEMPOTENCY = T["idempotency"]
#: a claim made before claims had leases (no ``expires_at``) is free after this long
ABANDONED_AFTER = timedelta(minutes=5)
#: the default lease of a claim (``SHIPYARD_IDEMPOTENCY_LEASE_SECONDS``)
LEASE = timedelta(seconds=10)
#: this process, as claims name their holder: host and pid, for whoever reads the table
PROCESS = f"{socket.gethostname()[:120]}:{os.getpid()}"


class ClaimLost(Exception):
    """The request's claim on its key expired and another request took the key over: its
    work must not commit (the other request executes it)."""


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Literal["new", "replay", "mismatch", "in_progress"]
    status_code: int | None = None
    response: dict[str, Any] | None = None
    #: the claim's holder, for ``renew``, ``finish``, ``settle`` and ``release`` ("new" only)
    holder: str = ""


class IdempotencyStore:
    def __init__(self, store: SqlStore, keep: timedelta, lease: timedelta = LEASE) -> None:
        self.store = store
        self.keep = keep
        self.lease = lease

    def claim(self, caller: str, key: str, fingerprint: str, now: datetime) -> Claim:
        where = _key(caller, key)
        holder = f"{PROCESS}:{uuid.uuid4().hex[:12]}"
        with self.store.engine.begin() as conn:
            # a key past its retention, or claimed by a process that is gone, is free again
            conn.execute(
                sa.delete(IDEMPOTENCY).where(
                    where,
                    sa.or_(
                        IDEMPOTENCY.c.created_at < now - self.keep,
                        sa.and_(IDEMPOTENCY.c.state == "processing", _expired(now)),
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
                            holder=holder,
                            expires_at=now + self.lease,
                        )
                    )
                return Claim("new", holder=holder)
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

    def renew(self, caller: str, key: str, holder: str, now: datetime) -> bool:
        """Extend the lease of a claim still being processed; False if it is no longer held."""
        with self.store.engine.begin() as conn:
            renewed = conn.execute(
                sa.update(IDEMPOTENCY).where(_held(caller, key, holder)).values(expires_at=now + self.lease)
            )
            return bool(renewed.rowcount == 1)

    def finish(self, caller: str, key: str, holder: str, status_code: int, response: dict[str, Any]) -> bool:
        """Store the answer of a claim (False if the claim was lost, and nothing is stored)."""
        with self.store.engine.begin() as conn:
            return settle(conn, caller, key, holder, status_code, response, fence=False)

    def release(self, caller: str, key: str, holder: str) -> None:
        """Forget a key whose request failed in a way worth retrying (the server's fault)."""
        with self.store.engine.begin() as conn:
            conn.execute(sa.delete(IDEMPOTENCY).where(_held(caller, key, holder)))

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


def settle(
    conn: Connection,
    caller: str,
    key: str,
    holder: str,
    status_code: int,
    response: dict[str, Any],
    *,
    fence: bool = True,
) -> bool:
    """Store a claim's answer on ``conn``, in the transaction of the work it answers for. With
    ``fence``, a claim lost to another request raises ``ClaimLost``, so the work rolls back with
    it (the request that took the key over does the work instead)."""
    done = conn.execute(
        sa.update(IDEMPOTENCY)
        .where(_held(caller, key, holder))
        .values(state="done", status_code=status_code, response=response, expires_at=None)
    )
    if done.rowcount == 1:
        return True
    if fence:
        raise ClaimLost(f"the claim on Idempotency-Key {key!r} expired and was taken over")
    return False


def _key(caller: str, key: str) -> sa.ColumnElement[bool]:
    return sa.and_(IDEMPOTENCY.c.caller == caller, IDEMPOTENCY.c.key == key)


def _held(caller: str, key: str, holder: str) -> sa.ColumnElement[bool]:
    return sa.and_(_key(caller, key), IDEMPOTENCY.c.holder == holder, IDEMPOTENCY.c.state == "processing")


def _expired(now: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        IDEMPOTENCY.c.expires_at < now,
        sa.and_(IDEMPOTENCY.c.expires_at.is_(None), IDEMPOTENCY.c.created_at < now - ABANDONED_AFTER),
    )
