"""Environment locks in the database (``core.locks`` has the rules and the words).

The environment is the row's primary key, so two people can never both hold a lock: of two
concurrent acquires the first insert to commit wins, and the other meets the key (on PostgreSQL
it waits for the winner's commit), reads the winner's lock and is refused with it. Every other
change reads the row, lets ``core.locks`` decide, and writes with a conditional update on what
it read (holder and ``since``, plus the expiry when that matters); a write that finds the row
changed decides again on the fresh row. An expired lock nobody swept yet counts as free and is
taken over the same way.

The keeper's claims (``expire_due``, ``due_reminders``, ``due_handovers``) read the candidates
without the write lock, then take each with a conditional update (or delete) on what they read,
so of two replicas exactly one expires, reminds or tells about each lock.

Every change runs in the store's unit of work (``SqlStore.transaction``, the ``SqlTx`` that
commands use), where it is audited and appends its event (``core.locks.changed``) to the event
log, which readers follow by cursor like a run's events. A refusal is audited after it, then
raised.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.errors import CommandRefused, Conflict
from core.locks import (
    Lock,
    LockAction,
    LockKind,
    changed,
    check_hand_over,
    check_keep,
    check_reason,
    check_release,
    check_request_handover,
    check_seconds,
    extended_until,
    is_reminder_due,
    plan_acquire,
    require,
    state_of,
)
from core.ports import AuditEntry
from core.states import LockState
from storage.store import SqlStore, SqlTx
from storage.tables import metadata

LOCK = metadata.tables["environment_lock"]
C = LOCK.c
#: how often a change that lost a race is decided again before giving up with ``Conflict``
ATTEMPTS = 5
#: the principal the keeper acts as
KEEPER = "shipyard"
T = TypeVar("T")


class _Lost(Exception):
    """A conditional write found the row changed: decide again on the fresh row."""


def _lock(r: Any) -> Lock:
    return Lock(
        environment=r["environment"],
        holder=r["holder"],
        reason=r["reason"],
        since=r["since"],
        expires_at=r["expires_at"],
        kind=r["kind"],
        handover_requested_by=r["handover_requested_by"],
        reminded_at=r["reminded_at"],
        expiry_set_at=r["expiry_set_at"],
    )


def _values(lock: Lock) -> dict[str, Any]:
    return {
        "environment": lock.environment,
        "holder": lock.holder,
        "reason": lock.reason,
        "kind": lock.kind,
        "since": lock.since,
        "expires_at": lock.expires_at,
        "handover_requested_by": lock.handover_requested_by,
        "reminded_at": lock.reminded_at,
        "expiry_set_at": lock.expiry_set_at,
    }


def _get(conn: Connection, environment: str) -> Lock | None:
    row = conn.execute(sa.select(LOCK).where(C.environment == environment)).mappings().first()
    return _lock(row) if row else None


def current_lock(conn: Connection, environment: str, now: datetime) -> Lock | None:
    """``LockStore.current`` inside a transaction someone else holds (the engine's admission)."""
    found = _get(conn, environment)
    return found if found is not None and not found.is_expired(now) else None


def _same(lock: Lock) -> Any:
    """The row still holds the lock that was read."""
    return sa.and_(C.environment == lock.environment, C.holder == lock.holder, C.since == lock.since)


def _update(conn: Connection, lock: Lock, where: Any = None, **values: Any) -> None:
    condition = _same(lock) if where is None else sa.and_(_same(lock), where)
    if conn.execute(sa.update(LOCK).where(condition).values(**values)).rowcount != 1:
        raise _Lost


def _detail(lock: Lock) -> dict[str, Any]:
    return {
        "holder": lock.holder,
        "kind": lock.kind,
        "since": lock.since,
        "expires_at": lock.expires_at,
        "reason": lock.reason,
    }


def _audit(
    action: str, environment: str, actor: str, channel: str, now: datetime, lock: Lock | None, **extra: Any
) -> AuditEntry:
    outcome = extra.pop("outcome", "accepted")
    reason = extra.pop("reason", None)
    return AuditEntry(
        at=now,
        actor=actor,
        channel=channel,
        action=action,
        target=f"environment {environment}"[:200],
        outcome=outcome,
        reason=reason if reason is not None else (lock.reason if lock else ""),
        detail={**(_detail(lock) if lock else {}), **extra},
    )


def taken_over(tx: SqlTx, expired: Lock, now: datetime) -> Lock:
    """An expired lock replaced (by a person's lock or a rollback's) before the keeper swept it:
    its expiry is audited as the keeper's sweep would have, and it is returned for the new lock's
    event to name (``core.locks.changed``'s ``took_over``), which the Slack notifier tells the
    channel of, since no sweep will."""
    tx.audit(_audit("expire_lock", expired.environment, KEEPER, "system", now, expired))
    return expired


class LockStore:
    """Every environment's lock: read, changed by people (the API, chat, the CLI) and by the
    keeper, each change a transaction of the store's unit of work."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- reading -----------------------------------------------------------------------------
    def current(self, environment: str, now: datetime) -> Lock | None:
        """The lock that holds ``environment`` now; None when free (an expired lock is free)."""
        with self.store.reading() as tx:
            return current_lock(tx.conn, environment, now)

    def all(self, now: datetime) -> builtins.list[Lock]:
        """Every lock that holds now, by environment."""
        with self.store.reading() as tx:
            rows = tx.conn.execute(sa.select(LOCK).where(_live(now)).order_by(C.environment))
            return [_lock(r) for r in rows.mappings()]

    # -- changes by people -------------------------------------------------------------------
    def acquire(
        self,
        environment: str,
        holder: str,
        reason: str,
        duration_s: float | None,
        now: datetime,
        kind: LockKind = "manual",
        *,
        channel: str = "system",
    ) -> Lock:
        """Lock ``environment`` for ``duration_s`` (None: until unlocked). The holder locking again
        changes the reason and expiry; anyone else is refused with ``EnvironmentLocked``, whose
        message says who holds it, since when, why and until when."""

        def change(tx: SqlTx) -> Lock:
            conn = tx.conn
            # checked in here, so a refused reason or duration is audited like any refusal
            why = check_reason(reason)
            expires_at = (
                now + timedelta(seconds=check_seconds(duration_s)) if duration_s is not None else None
            )
            if kind == "rollback":
                expires_at = None  # a rollback holds until someone acknowledges it
            current = _get(conn, environment)
            was = state_of(current, now)
            plan = plan_acquire(current, holder, kind, now)
            took_over = None
            fresh = Lock(
                environment=environment,
                holder=holder,
                reason=why,
                since=now,
                expires_at=expires_at,
                kind=kind,
            )
            if current is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(LOCK).values(**_values(fresh)))
                except IntegrityError:  # locked at the same moment, and committed first
                    raise _Lost from None
            elif plan is LockAction.RELOCK:
                fresh = replace(
                    current, reason=why, kind=kind, expires_at=expires_at, reminded_at=None, expiry_set_at=now
                )
                _update(
                    conn,
                    current,
                    reason=why,
                    kind=kind,
                    expires_at=expires_at,
                    reminded_at=None,
                    expiry_set_at=now,
                )
            else:  # expired, not swept yet: take it over, and record that it ran out
                _update(conn, current, C.expires_at <= now, **_values(fresh), handover_told=None)
                took_over = taken_over(tx, current, now)
            action = "relock_environment" if plan is LockAction.RELOCK else "lock_environment"
            tx.audit(_audit(action, environment, holder, channel, now, fresh))
            tx.append_events([changed(plan, fresh, holder, now, was, took_over=took_over, channel=channel)])
            return fresh

        return self._change("lock_environment", environment, holder, channel, now, change)

    def release(
        self,
        environment: str,
        by: str,
        now: datetime,
        *,
        admin: bool,
        deployer: bool = True,
        channel: str = "system",
    ) -> Lock:
        """Unlock: a manual lock by its holder or an admin; a rollback lock is acknowledged by
        anyone who may deploy (``deployer``: the caller holds that role; adapters check it).
        Returns the lock as it was."""

        def change(tx: SqlTx) -> Lock:
            current = _get(tx.conn, environment)
            check_release(current, environment, by, now, admin=admin, deployer=deployer)
            assert current is not None
            if tx.conn.execute(sa.delete(LOCK).where(_same(current), _live(now))).rowcount != 1:
                raise _Lost
            action = "acknowledge_rollback" if current.kind == "rollback" else "unlock_environment"
            tx.audit(_audit(action, environment, by, channel, now, current))
            tx.append_events([changed(LockAction.RELEASE, current, by, now, LockState.HELD, channel=channel)])
            return current

        return self._change("unlock_environment", environment, by, channel, now, change)

    def extend(
        self, environment: str, by: str, duration_s: float, now: datetime, *, channel: str = "system"
    ) -> Lock:
        """The holder moves the expiry ``duration_s`` later (from now, if it is already close);
        the holder is reminded again before the new expiry."""

        def change(tx: SqlTx) -> Lock:
            current = _get(tx.conn, environment)
            new_expiry = extended_until(current, environment, by, duration_s, now)
            assert current is not None
            extended = replace(current, expires_at=new_expiry, reminded_at=None, expiry_set_at=now)
            _update(
                tx.conn,
                current,
                C.expires_at == current.expires_at,
                expires_at=new_expiry,
                reminded_at=None,
                expiry_set_at=now,
            )
            tx.audit(_audit("extend_lock", environment, by, channel, now, extended))
            tx.append_events([changed(LockAction.EXTEND, extended, by, now, LockState.HELD)])
            return extended

        return self._change("extend_lock", environment, by, channel, now, change)

    def request_handover(self, environment: str, by: str, now: datetime, *, channel: str = "system") -> Lock:
        """``by`` asks the holder to hand the lock over; the keeper tells the holder once."""

        def change(tx: SqlTx) -> Lock:
            current = _get(tx.conn, environment)
            check_request_handover(current, environment, by, now)
            assert current is not None
            if current.handover_requested_by == by:
                return current  # asked already: the holder is told once
            _update(tx.conn, current, _live(now), handover_requested_by=by)
            asked = replace(current, handover_requested_by=by)
            tx.audit(_audit("request_lock_handover", environment, by, channel, now, asked))
            tx.append_events([changed(LockAction.REQUEST_HANDOVER, asked, by, now, LockState.HELD)])
            return asked

        return self._change("request_lock_handover", environment, by, channel, now, change)

    def hand_over(
        self, environment: str, by_holder: str, to: str, now: datetime, *, channel: str = "system"
    ) -> Lock:
        """The holder gives the lock to ``to``, who holds it from now with the same reason and
        expiry (and is reminded before it)."""

        def change(tx: SqlTx) -> Lock:
            current = _get(tx.conn, environment)
            check_hand_over(current, environment, by_holder, to, now)
            assert current is not None
            set_at = current.expiry_set_at or current.since  # (by the giver: ``to`` is reminded)
            moved = replace(
                current,
                holder=to,
                since=now,
                handover_requested_by=None,
                reminded_at=None,
                expiry_set_at=set_at,
            )
            _update(tx.conn, current, _live(now), **_values(moved), handover_told=None)
            entry = _audit("hand_over_lock", environment, by_holder, channel, now, moved, previous=by_holder)
            tx.audit(entry)
            tx.append_events([changed(LockAction.HAND_OVER, moved, by_holder, now, LockState.HELD)])
            return moved

        return self._change("hand_over_lock", environment, by_holder, channel, now, change)

    def keep(self, environment: str, by: str, now: datetime, *, channel: str = "system") -> tuple[Lock, str]:
        """The holder declines a handover request; returns the lock and who had asked."""

        def change(tx: SqlTx) -> tuple[Lock, str]:
            current = _get(tx.conn, environment)
            asker = check_keep(current, environment, by, now)
            assert current is not None
            _update(
                tx.conn,
                current,
                sa.and_(_live(now), C.handover_requested_by == asker),
                handover_requested_by=None,
                handover_told=None,
            )
            kept = replace(current, handover_requested_by=None)
            tx.audit(_audit("keep_lock", environment, by, channel, now, kept, asked_by=asker))
            tx.append_events([changed(LockAction.KEEP, kept, by, now, LockState.HELD)])
            return kept, asker

        return self._change("keep_lock", environment, by, channel, now, change)

    def _change(
        self,
        action: str,
        environment: str,
        actor: str,
        channel: str,
        now: datetime,
        change: Callable[[SqlTx], T],
    ) -> T:
        """Run ``change`` in a transaction (its audit entries and events commit with it, or
        not at all), deciding again when it lost a race; a refusal is audited, then raised."""
        try:
            for _ in range(ATTEMPTS):
                try:
                    with self.store.transaction() as tx:
                        result = change(tx)
                    return result
                except _Lost:
                    continue
        except CommandRefused as exc:
            self.store.append_audit(
                _audit(action, environment, actor, channel, now, None, outcome="rejected", reason=exc.message)
            )
            raise
        raise Conflict(f"the lock on {environment} changed {ATTEMPTS} times while this was decided; retry")

    # -- the keeper's claims -----------------------------------------------------------------
    def expire_due(self, now: datetime) -> builtins.list[Lock]:
        """Remove every lock whose time ran out, each by exactly one caller (a conditional
        delete), and audit it. Returns the locks this caller expired."""
        expired: list[Lock] = []
        due = self._candidates(sa.select(LOCK).where(C.expires_at <= now))
        if not due:
            return expired
        with self.store.transaction() as tx:
            for lock in due:
                require(LockAction.EXPIRE, lock.environment, lock, now)
                gone = tx.conn.execute(sa.delete(LOCK).where(_same(lock), C.expires_at <= now))
                if gone.rowcount == 1:
                    expired.append(lock)
                    tx.audit(_audit("expire_lock", lock.environment, KEEPER, "system", now, lock))
                    tx.append_events([changed(LockAction.EXPIRE, lock, KEEPER, now, LockState.EXPIRED)])
        return expired

    def due_reminders(
        self, now: datetime, before_s: float, environments: Collection[str] | None = None
    ) -> builtins.list[Lock]:
        """Claim the reminders due: locks expiring within ``before_s`` whose holder was not
        reminded of this expiry yet (``core.locks.is_reminder_due``), among ``environments``
        (None: all). Each is claimed by exactly one caller; returns the claimed ones."""
        horizon = now + timedelta(seconds=before_s)
        query = sa.select(LOCK).where(
            C.expires_at.is_not(None), C.expires_at > now, C.expires_at <= horizon, C.reminded_at.is_(None)
        )
        if environments is not None:
            query = query.where(C.environment.in_(list(environments)))
        due = [lock for lock in self._candidates(query) if is_reminder_due(lock, before_s, now)]
        claimed: list[Lock] = []
        if not due:
            return claimed
        with self.store.transaction() as tx:
            for lock in due:
                require(LockAction.REMIND, lock.environment, lock, now)
                taken = sa.and_(_same(lock), C.expires_at == lock.expires_at, C.reminded_at.is_(None))
                if tx.conn.execute(sa.update(LOCK).where(taken).values(reminded_at=now)).rowcount == 1:
                    reminded = replace(lock, reminded_at=now)
                    claimed.append(reminded)
                    tx.audit(_audit("remind_lock_holder", lock.environment, KEEPER, "system", now, reminded))
        return claimed

    def due_handovers(self, now: datetime) -> builtins.list[Lock]:
        """Claim the handover requests the holder has not been told about yet; each is claimed
        by exactly one caller (a new request on the same lock is told again)."""
        untold = sa.or_(C.handover_told.is_(None), C.handover_told != C.handover_requested_by)
        due = self._candidates(
            sa.select(LOCK).where(C.handover_requested_by.is_not(None), untold, _live(now))
        )
        claimed: list[Lock] = []
        if not due:
            return claimed
        with self.store.transaction() as tx:
            for lock in due:
                asker = lock.handover_requested_by
                taken = sa.and_(
                    _same(lock),
                    C.handover_requested_by == asker,
                    sa.or_(C.handover_told.is_(None), C.handover_told != asker),
                )
                if tx.conn.execute(sa.update(LOCK).where(taken).values(handover_told=asker)).rowcount == 1:
                    claimed.append(lock)
                    entry = _audit(
                        "tell_lock_handover", lock.environment, KEEPER, "system", now, lock, asked_by=asker
                    )
                    tx.audit(entry)
        return claimed

    def _candidates(self, query: Any) -> builtins.list[Lock]:
        """What a claim may take, read without the write lock: the keeper asks every few
        seconds and nearly always finds nothing, which then costs no write transaction."""
        with self.store.reading() as tx:
            return [_lock(r) for r in tx.conn.execute(query.order_by(C.environment)).mappings()]


def _live(now: datetime) -> Any:
    return sa.or_(C.expires_at.is_(None), C.expires_at > now)
