"""Webhooks in the database: subscriptions, the delivery outbox, attempts, incoming triggers.

The outbox is what makes delivery durable. ``move`` reads the event log from the ``webhooks``
cursor and, in the same transaction, inserts one delivery per message and subscriber and moves
the cursor: a crash before the commit leaves both as they were, a crash after loses nothing.
(On PostgreSQL the cursor row is locked ``FOR UPDATE``, so two replicas take turns; a unique
``(webhook_id, key)`` makes a repeat harmless anyway.)

A sender ``claim``s due deliveries by moving them to ``sending`` and their due time to the end
of its lease, under SQLite's write lock or PostgreSQL's ``FOR UPDATE SKIP LOCKED``: two
replicas never take the same one. A delivery is due only when no earlier message of the same
run for the same subscriber is still open, which keeps a run's messages in order. Results are
written only while the sender still holds its claim (the attempt number fences them); a sender
that died leaves its claim to run out, and the delivery is sent again (at least once).

Subscriptions and deliveries change status only along their tables in ``core.states``, each
change a conditional update on the status read (``storage.transition.move``).

Every change goes through the unit of work runs use (``SqlStore.transaction``). What people
change appends its event there too: ``webhook.subscribed``, ``webhook.disabled`` (by hand or
after failures), ``webhook.enabled``, ``webhook.unsubscribed``, ``webhook.redelivery_queued``,
``trigger.created``, ``trigger.deleted``. The outbox's own work (queueing, sending, pruning
deliveries) appends none: it follows the log, and events about it would only feed it back.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.events import Event, resource_event
from core.model import RunState
from core.ports import AuditEntry
from storage import mappers
from storage.queries import Q
from storage.store import SqlStore, SqlTx
from storage.tables import T, metadata
from storage.transition import move

WEBHOOK = metadata.tables["webhook"]
DELIVERY = metadata.tables["webhook_delivery"]
ATTEMPT = metadata.tables["webhook_attempt"]
TRIGGER = metadata.tables["hook_trigger"]
GATE, EVENT, CURSOR = T["gate"], T["event"], T["cursor"]
CURSOR_NAME = "webhooks"

OPEN = ("pending", "sending")
#: why the open deliveries of a deleted subscription were given up
DELETED = "not sent: the subscription was deleted"
#: what a subscription's event calls each status it moves to
STATUS_EVENTS = {"active": "enabled", "disabled": "disabled", "deleted": "unsubscribed"}


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    events: frozenset[str]
    pipeline: str | None
    environment: str | None
    description: str
    status: str
    status_reason: str
    owner: str
    from_seq: int
    consecutive_failures: int
    failing_since: datetime | None
    created_at: datetime
    changed_at: datetime | None
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A message for one subscriber, as the outbox queues it."""

    webhook_id: str
    key: str
    msg_id: str
    event_type: str
    event_seq: int
    position: int
    run_id: str
    subject_id: str
    body: str


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook_id: str
    msg_id: str
    event_type: str
    event_seq: int
    run_id: str
    subject_id: str
    body: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str
    created_at: datetime
    finished_at: datetime | None
    redelivery_of: int | None


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    at: datetime
    duration_ms: float
    status: int | None
    error: str
    request_headers: dict[str, str]
    response: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery a sender holds: ``attempt`` fences what it may write back."""

    delivery_id: int
    attempt: int
    webhook_id: str
    url: str
    secret: str = field(repr=False)
    msg_id: str = ""
    body: str = ""
    run_id: str = ""
    #: when the delivery entered the outbox (its lag is measured from there)
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to. ``retry_at`` None after a failure: give up."""

    delivery_id: int
    attempt: int
    webhook_id: str
    at: datetime
    duration_ms: float
    ok: bool
    status: int | None = None
    error: str = ""
    response: str = ""
    request_headers: dict[str, str] = field(default_factory=dict)
    retry_at: datetime | None = None
    #: the receiver answered 410 Gone: it wants no more
    gone: bool = False


@dataclass(frozen=True, slots=True)
class Disabled:
    webhook_id: str
    owner: str
    reason: str


@dataclass(frozen=True, slots=True)
class Trigger:
    id: str
    pipeline: str
    kind: str
    description: str
    owner: str
    created_at: datetime
    secret: str = field(repr=False)


def _webhook(r: Any) -> Webhook:
    return Webhook(
        id=r["id"],
        url=r["url"],
        events=frozenset(r["events"]),
        pipeline=r["pipeline"],
        environment=r["environment"],
        description=r["description"],
        status=r["status"],
        status_reason=r["status_reason"],
        owner=r["owner"],
        from_seq=r["from_seq"],
        consecutive_failures=r["consecutive_failures"],
        failing_since=r["failing_since"],
        created_at=r["created_at"],
        changed_at=r["changed_at"],
        secret=r["secret"],
    )


def _delivery(r: Any) -> Delivery:
    return Delivery(**{k: r[k] for k in Delivery.__slots__})


def _delivery_row(conn: Connection, webhook_id: str, delivery_id: int) -> Any:
    query = sa.select(DELIVERY).where(DELIVERY.c.id == delivery_id, DELIVERY.c.webhook_id == webhook_id)
    return conn.execute(query).mappings().first()


def _trigger(r: Any) -> Trigger:
    return Trigger(**{k: r[k] for k in Trigger.__slots__})


LIVE = WEBHOOK.c.status != "deleted"
EARLIER = DELIVERY.alias("earlier")
#: no earlier message of the same run for the same subscriber is still open
HEAD_OF_RUN = ~sa.exists().where(
    EARLIER.c.webhook_id == DELIVERY.c.webhook_id,
    EARLIER.c.run_id == DELIVERY.c.run_id,
    EARLIER.c.position < DELIVERY.c.position,
    EARLIER.c.state.in_(OPEN),
)
CLAIMABLE = sa.and_(DELIVERY.c.state.in_(OPEN), WEBHOOK.c.status == "active", HEAD_OF_RUN)


class WebhookStore:
    """Subscriptions, the outbox and incoming triggers, each call in a unit of work of its own."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._pg = not store.sqlite

    # -- subscriptions ------------------------------------------------------------------------
    def create(
        self,
        *,
        url: str,
        events: Sequence[str],
        pipeline: str | None,
        environment: str | None,
        description: str,
        secret: str,
        owner: str,
        now: datetime,
    ) -> Webhook:
        """A new active subscription; it hears about events from now on."""
        webhook_id = "wh_" + uuid.uuid4().hex[:24]
        with self.store.transaction() as tx:
            conn = tx.conn
            from_seq = int(conn.execute(Q.last_seq).scalar() or 0)
            conn.execute(
                sa.insert(WEBHOOK).values(
                    id=webhook_id,
                    url=url,
                    events=sorted(set(events)),
                    pipeline=pipeline,
                    environment=environment,
                    description=description,
                    secret=secret,
                    status="active",
                    status_reason="",
                    owner=owner,
                    from_seq=from_seq,
                    consecutive_failures=0,
                    created_at=now,
                    changed_at=now,
                )
            )
            tx.append_events([resource_event("webhook", "subscribed", webhook_id, now, owner=owner)])
        found = self.get(webhook_id)
        assert found is not None
        return found

    def get(self, webhook_id: str) -> Webhook | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(WEBHOOK).where(WEBHOOK.c.id == webhook_id, LIVE)).mappings().first()
        return _webhook(row) if row else None

    def all(self) -> list[Webhook]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(WEBHOOK).where(LIVE).order_by(WEBHOOK.c.created_at, WEBHOOK.c.id))
            return [_webhook(r) for r in rows.mappings()]

    def change_status(self, webhook_id: str, to: str, reason: str, now: datetime) -> Webhook | None:
        """Move a subscription to ``to`` (checked against the table, applied on the status read);
        None if there is no such subscription. ``IllegalTransition`` if the table forbids it.
        Enabling starts afresh: failures are forgotten and waiting deliveries are due now."""
        with self.store.transaction() as tx:
            row = tx.conn.execute(sa.select(WEBHOOK.c.status).where(WEBHOOK.c.id == webhook_id, LIVE)).first()
            if row is None:
                return None
            values: dict[str, Any] = {"status_reason": reason, "changed_at": now}
            if to == "active":
                values.update(consecutive_failures=0, failing_since=None)
            if not move(tx.conn, "webhook", webhook_id, WEBHOOK.c.id == webhook_id, row.status, to, values):
                # changed meanwhile: report it as it now is
                return self._any(tx.conn, webhook_id)
            happened = STATUS_EVENTS[to]
            tx.append_events([resource_event("webhook", happened, webhook_id, now, reason=reason)])
            if to == "active":
                tx.conn.execute(
                    sa.update(DELIVERY)
                    .where(DELIVERY.c.webhook_id == webhook_id, DELIVERY.c.state == "pending")
                    .values(next_attempt_at=now)
                )
            elif to == "deleted":  # given up, so they finish and are pruned (one in flight: ``record``)
                mine = DELIVERY.c.webhook_id == webhook_id
                values = {"finished_at": now, "last_error": DELETED}
                move(tx.conn, "delivery", f"{webhook_id}'s pending", mine, "pending", "failed", values)
            return self._any(tx.conn, webhook_id)

    def _any(self, conn: Connection, webhook_id: str) -> Webhook | None:
        row = conn.execute(sa.select(WEBHOOK).where(WEBHOOK.c.id == webhook_id)).mappings().first()
        return _webhook(row) if row else None

    # -- the outbox ---------------------------------------------------------------------------
    def listening(self) -> bool:
        """Whether any subscription is active (else the outbox has nothing to do)."""
        with self.store.engine.connect() as conn:
            found = conn.execute(sa.select(WEBHOOK.c.id).where(WEBHOOK.c.status == "active").limit(1))
            return found.first() is not None

    def move(
        self,
        wanted: Callable[[Event], bool],
        plan: Callable[[list[Event], dict[str, RunState], list[Webhook]], list[NewDelivery]],
        now: datetime,
        limit: int = 500,
    ) -> tuple[int, int, int]:
        """Turn the next ``limit`` events into deliveries and move the cursor past them, in one
        transaction. ``wanted`` says which events may make messages (their runs are loaded for
        ``plan``). Returns (events read, deliveries queued, the cursor now).

        The cursor first skips to where the oldest active subscription starts listening: events
        before it concern no one, so a cursor left behind while nobody listened costs nothing."""
        with self.store.transaction() as tx:
            conn = tx.conn
            start = seq = self._cursor(conn)
            webhooks = [
                _webhook(r)
                for r in conn.execute(sa.select(WEBHOOK).where(WEBHOOK.c.status == "active")).mappings()
            ]
            if webhooks:
                seq = max(seq, min(w.from_seq for w in webhooks))
            rows = conn.execute(Q.events_after, {"seq": seq, "limit": limit}).mappings().all()
            if not rows:
                if seq != start:
                    conn.execute(sa.update(CURSOR).where(CURSOR.c.name == CURSOR_NAME).values(seq=seq))
                return 0, 0, seq
            events = [mappers.event_from_row(r) for r in rows]
            queued = 0
            if webhooks:
                useful = [e for e in events if wanted(e)]
                runs: dict[str, RunState] = {}
                for run_id in dict.fromkeys(e.run_id for e in useful):
                    state = tx.load_run(run_id)
                    if state is not None:
                        runs[run_id] = state
                messages = plan(useful, runs, webhooks)
                if messages:
                    values = [
                        {
                            "webhook_id": d.webhook_id,
                            "key": d.key,
                            "msg_id": d.msg_id,
                            "event_type": d.event_type,
                            "event_seq": d.event_seq,
                            "position": d.position,
                            "run_id": d.run_id,
                            "subject_id": d.subject_id,
                            "body": d.body,
                            "state": "pending",
                            "attempts": 0,
                            "next_attempt_at": now,
                            "last_error": "",
                            "created_at": now,
                        }
                        for d in messages
                    ]
                    insert = (postgresql.insert if self._pg else sqlite.insert)(DELIVERY)
                    conn.execute(insert.on_conflict_do_nothing(index_elements=["webhook_id", "key"]), values)
                    queued = len(values)
            last = events[-1].seq
            done = conn.execute(
                sa.update(CURSOR).where(CURSOR.c.name == CURSOR_NAME, CURSOR.c.seq == start).values(seq=last)
            )
            if done.rowcount != 1:  # cannot happen under the lock; never move it backwards
                raise RuntimeError("the webhooks cursor moved under its lock")
            return len(events), queued, last

    def _cursor(self, conn: Connection) -> int:
        """The cursor, locked for this transaction. A new cursor starts where the oldest
        subscription starts listening (or at the end of the log): history is not replayed."""
        query = sa.select(CURSOR.c.seq).where(CURSOR.c.name == CURSOR_NAME)
        seq = conn.execute(query.with_for_update() if self._pg else query).scalar()
        if seq is not None:
            return int(seq)
        start = conn.execute(sa.select(sa.func.min(WEBHOOK.c.from_seq)).where(LIVE)).scalar()
        if start is None:
            start = conn.execute(Q.last_seq).scalar() or 0
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(CURSOR).values(name=CURSOR_NAME, seq=int(start)))
        except IntegrityError:
            pass
        return int(conn.execute(query.with_for_update() if self._pg else query).scalar_one())

    def cursor(self) -> int:
        with self.store.engine.connect() as conn:
            return int(
                conn.execute(sa.select(CURSOR.c.seq).where(CURSOR.c.name == CURSOR_NAME)).scalar() or 0
            )

    # -- sending ------------------------------------------------------------------------------
    def claim(
        self,
        now: datetime,
        limit: int,
        lease: timedelta,
        busy: Sequence[str] = (),
        clock: Callable[[], datetime] | None = None,
        room: Callable[[str], int] | None = None,
    ) -> list[Claimed]:
        """Take up to ``limit`` deliveries due at ``now`` (none of subscriptions in ``busy``, at
        most ``room(webhook_id)`` of each) for ``lease``, counted from when the claim is written
        (``clock``, if later than ``now``): a claim that waited for the database must not start
        with its lease half gone."""
        if limit <= 0:
            return []
        query = (
            sa.select(DELIVERY.c.id, DELIVERY.c.webhook_id)
            .join(WEBHOOK, WEBHOOK.c.id == DELIVERY.c.webhook_id)
            .where(CLAIMABLE, DELIVERY.c.next_attempt_at <= now)
            .order_by(DELIVERY.c.next_attempt_at, DELIVERY.c.id)
            .limit(limit)
        )
        if busy:
            query = query.where(DELIVERY.c.webhook_id.not_in(list(busy)))
        if self._pg:
            query = query.with_for_update(of=DELIVERY, skip_locked=True)
        with self.store.transaction() as tx:
            ids = _within(tx.conn.execute(query).all(), room)
            if not ids:
                return []
            lease_until = max(now, clock() if clock is not None else now) + lease
            taken = {"attempts": DELIVERY.c.attempts + 1, "next_attempt_at": lease_until}
            # sending → sending (the first sender's lease ran out) before pending → sending, so
            # no row is taken twice
            for old in ("sending", "pending"):
                move(
                    tx.conn, "delivery", f"{len(ids)} claimed", DELIVERY.c.id.in_(ids), old, "sending", taken
                )
            rows = tx.conn.execute(
                sa.select(
                    DELIVERY.c.id,
                    DELIVERY.c.attempts,
                    DELIVERY.c.webhook_id,
                    DELIVERY.c.msg_id,
                    DELIVERY.c.body,
                    DELIVERY.c.run_id,
                    DELIVERY.c.created_at,
                    WEBHOOK.c.url,
                    WEBHOOK.c.secret,
                )
                .join(WEBHOOK, WEBHOOK.c.id == DELIVERY.c.webhook_id)
                .where(DELIVERY.c.id.in_(ids))
                .order_by(DELIVERY.c.id)
            ).mappings()
            return [
                Claimed(
                    delivery_id=r["id"],
                    attempt=r["attempts"],
                    webhook_id=r["webhook_id"],
                    url=r["url"],
                    secret=r["secret"],
                    msg_id=r["msg_id"],
                    body=r["body"],
                    run_id=r["run_id"],
                    created_at=r["created_at"],
                )
                for r in rows
            ]

    def next_due(self, busy: Sequence[str] = ()) -> datetime | None:
        """When the next delivery that could be claimed is due, leaving out the subscriptions in
        ``busy`` (their share of the slots is taken: one that lands wakes the sender)."""
        query = (
            sa.select(sa.func.min(DELIVERY.c.next_attempt_at))
            .join(WEBHOOK, WEBHOOK.c.id == DELIVERY.c.webhook_id)
            .where(CLAIMABLE)
        )
        if busy:
            query = query.where(DELIVERY.c.webhook_id.not_in(list(busy)))
        with self.store.engine.connect() as conn:
            return conn.execute(query).scalar()

    def record(
        self,
        outcomes: Sequence[Outcome],
        now: datetime,
        *,
        max_failures: int,
        failing_for: timedelta,
    ) -> list[Disabled]:
        """Write what attempts came to (only those whose sender still held the claim) and
        disable subscriptions that failed ``max_failures`` times in a row, for ``failing_for``,
        or answered 410 Gone. Each disabling is audited; returns them."""
        if not outcomes:
            return []
        disabled: list[Disabled] = []
        with self.store.transaction() as tx:
            conn = tx.conn
            kept: list[Outcome] = []
            ids = {o.webhook_id for o in outcomes}
            deleted = set(conn.execute(sa.select(WEBHOOK.c.id).where(WEBHOOK.c.id.in_(ids), ~LIVE)).scalars())
            for o in sorted(outcomes, key=lambda o: o.delivery_id):
                state = "delivered" if o.ok else "pending" if o.retry_at is not None else "failed"
                error = _text(o.error, 1000)
                if state == "pending" and o.webhook_id in deleted:  # deleted while it was being sent
                    state, error = "failed", _text(f"{error}; {DELETED}", 1000)
                values: dict[str, Any] = {"last_status": o.status, "last_error": error}
                if state == "pending":
                    values["next_attempt_at"] = o.retry_at
                else:
                    values["finished_at"] = now
                fenced = sa.and_(DELIVERY.c.id == o.delivery_id, DELIVERY.c.attempts == o.attempt)
                if not move(conn, "delivery", str(o.delivery_id), fenced, "sending", state, values):
                    continue  # the claim ran out and another sender took over: its result counts
                kept.append(o)
            if not kept:
                return []
            conn.execute(
                sa.insert(ATTEMPT),
                [
                    {
                        "delivery_id": o.delivery_id,
                        "number": o.attempt,
                        "at": o.at,
                        "duration_ms": round(o.duration_ms, 3),
                        "status": o.status,
                        "error": _text(o.error, 1000),
                        "request_headers": o.request_headers,
                        "response": _text(o.response, 1024),
                    }
                    for o in kept
                ],
            )
            by_webhook: dict[str, list[Outcome]] = {}
            for o in sorted(kept, key=lambda o: o.at):
                by_webhook.setdefault(o.webhook_id, []).append(o)
            for webhook_id in sorted(by_webhook):
                found = self._tally(tx, webhook_id, by_webhook[webhook_id], now, max_failures, failing_for)
                if found is not None:
                    disabled.append(found)
        return disabled

    def _tally(
        self,
        tx: SqlTx,
        webhook_id: str,
        outcomes: list[Outcome],
        now: datetime,
        max_failures: int,
        failing_for: timedelta,
    ) -> Disabled | None:
        conn = tx.conn
        last_ok = max((i for i, o in enumerate(outcomes) if o.ok), default=None)
        failures = outcomes if last_ok is None else outcomes[last_ok + 1 :]
        w = WEBHOOK.c
        if last_ok is None:
            values: dict[str, Any] = {
                "consecutive_failures": w.consecutive_failures + len(failures),
                "failing_since": sa.func.coalesce(w.failing_since, failures[0].at),
            }
        else:
            values = {
                "consecutive_failures": len(failures),
                "failing_since": failures[0].at if failures else None,
            }
        conn.execute(sa.update(WEBHOOK).where(w.id == webhook_id).values(**values))
        if not failures:
            return None
        gone = any(o.gone for o in failures)
        row = conn.execute(
            sa.select(w.status, w.owner, w.consecutive_failures, w.failing_since).where(w.id == webhook_id)
        ).first()
        if row is None or row.status != "active":
            return None
        if gone:
            reason = "the receiver answered 410 Gone"
        elif row.consecutive_failures >= max_failures:
            reason = f"{row.consecutive_failures} deliveries in a row failed (last: {_last_error(failures)})"
        elif row.failing_since is not None and row.failing_since <= now - failing_for:
            hours = (now - row.failing_since) / timedelta(hours=1)
            reason = f"every delivery failed for {hours:.0f} h (last: {_last_error(failures)})"
        else:
            return None
        values = {"status_reason": reason, "changed_at": now}
        if not move(conn, "webhook", webhook_id, w.id == webhook_id, "active", "disabled", values):
            return None
        tx.append_events([resource_event("webhook", "disabled", webhook_id, now, reason=reason)])
        tx.audit(
            AuditEntry(
                at=now,
                actor="shipyard",
                channel="system",
                action="disable_webhook",
                target=f"webhook {webhook_id}",
                outcome="accepted",
                reason=reason,
                detail={"owner": row.owner},
            )
        )
        return Disabled(webhook_id, row.owner, reason)

    # -- reading and redelivering ------------------------------------------------------------
    def deliveries(
        self, webhook_id: str, before: int | None, limit: int, state: str | None = None
    ) -> list[Delivery]:
        """Newest first, continuing below delivery id ``before``."""
        query = (
            sa.select(DELIVERY)
            .where(DELIVERY.c.webhook_id == webhook_id)
            .order_by(DELIVERY.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(DELIVERY.c.id < before)
        if state is not None:
            query = query.where(DELIVERY.c.state == state)
        with self.store.engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(query).mappings()]

    def delivery(self, webhook_id: str, delivery_id: int) -> tuple[Delivery, list[Attempt]] | None:
        with self.store.engine.connect() as conn:
            row = _delivery_row(conn, webhook_id, delivery_id)
            if row is None:
                return None
            attempts = conn.execute(
                sa.select(ATTEMPT).where(ATTEMPT.c.delivery_id == delivery_id).order_by(ATTEMPT.c.number)
            ).mappings()
            return _delivery(row), [
                Attempt(
                    number=a["number"],
                    at=a["at"],
                    duration_ms=a["duration_ms"],
                    status=a["status"],
                    error=a["error"],
                    request_headers=dict(a["request_headers"]),
                    response=a["response"],
                )
                for a in attempts
            ]

    def redeliver(self, webhook_id: str, delivery_id: int, now: datetime) -> Delivery | str:
        """Queue a finished delivery again (same message id and body); a reason if it cannot be."""
        with self.store.transaction() as tx:
            conn = tx.conn
            row = _delivery_row(conn, webhook_id, delivery_id)
            if row is None:
                return "no such delivery"
            if row["state"] in OPEN:
                return f"delivery {delivery_id} is still {row['state']}; it will be sent without asking"
            again = conn.execute(
                sa.select(DELIVERY.c.id).where(
                    DELIVERY.c.webhook_id == webhook_id,
                    DELIVERY.c.msg_id == row["msg_id"],
                    DELIVERY.c.state.in_(OPEN),
                )
            ).scalar()
            if again is not None:
                return f"message {row['msg_id']} is already queued again as delivery {again}"
            copied = {
                k: row[k]
                for k in ("msg_id", "event_type", "event_seq", "position", "run_id", "subject_id", "body")
            }
            new_id = conn.execute(
                sa.insert(DELIVERY)
                .values(
                    webhook_id=webhook_id,
                    key=f"redeliver:{uuid.uuid4().hex}",
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    last_error="",
                    created_at=now,
                    redelivery_of=delivery_id,
                    **copied,
                )
                .returning(DELIVERY.c.id)
            ).scalar_one()
            new = conn.execute(sa.select(DELIVERY).where(DELIVERY.c.id == new_id)).mappings().one()
            queued = resource_event(
                "webhook", "redelivery_queued", webhook_id, now, delivery_id=new_id, redelivery_of=delivery_id
            )
            tx.append_events([queued])
            return _delivery(new)

    def was_told(self, webhook_id: str, run_id: str, gate_id: str) -> bool:
        """Whether the subscription was sent (or queued) the ``gate.waiting`` of this gate."""
        with self.store.engine.connect() as conn:
            found = conn.execute(
                sa.select(DELIVERY.c.id)
                .where(
                    DELIVERY.c.webhook_id == webhook_id,
                    DELIVERY.c.run_id == run_id,
                    DELIVERY.c.subject_id == gate_id,
                    DELIVERY.c.event_type == "gate.waiting",
                )
                .limit(1)
            ).first()
            return found is not None

    # -- incoming triggers --------------------------------------------------------------------
    def prune(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` deliveries that finished (delivered or given up) before
        ``before``, with their attempts; returns how many. Open ones are never touched."""
        with self.store.transaction() as tx:
            conn = tx.conn
            ids = list(
                conn.execute(
                    sa.select(DELIVERY.c.id)
                    .where(DELIVERY.c.state.in_(("delivered", "failed")), DELIVERY.c.finished_at < before)
                    .order_by(DELIVERY.c.id)
                    .limit(limit)
                ).scalars()
            )
            if ids:
                conn.execute(sa.delete(ATTEMPT).where(ATTEMPT.c.delivery_id.in_(ids)))
                conn.execute(sa.delete(DELIVERY).where(DELIVERY.c.id.in_(ids)))
            return len(ids)

    def create_trigger(
        self, *, pipeline: str, kind: str, description: str, secret: str, owner: str, now: datetime
    ) -> Trigger:
        trigger = Trigger(
            id="tr_" + uuid.uuid4().hex[:24],
            pipeline=pipeline,
            kind=kind,
            description=description,
            owner=owner,
            created_at=now,
            secret=secret,
        )
        with self.store.transaction() as tx:
            tx.conn.execute(sa.insert(TRIGGER).values(**{k: getattr(trigger, k) for k in Trigger.__slots__}))
            event = resource_event("trigger", "created", trigger.id, now, pipeline=pipeline, owner=owner)
            tx.append_events([event])
        return trigger

    def trigger(self, trigger_id: str) -> Trigger | None:
        with self.store.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(TRIGGER).where(TRIGGER.c.id == trigger_id, TRIGGER.c.deleted_at.is_(None))
                )
                .mappings()
                .first()
            )
        return _trigger(row) if row else None

    def triggers(self) -> list[Trigger]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(TRIGGER)
                .where(TRIGGER.c.deleted_at.is_(None))
                .order_by(TRIGGER.c.created_at, TRIGGER.c.id)
            ).mappings()
            return [_trigger(r) for r in rows]

    def delete_trigger(self, trigger_id: str, now: datetime) -> bool:
        with self.store.transaction() as tx:
            done = tx.conn.execute(
                sa.update(TRIGGER)
                .where(TRIGGER.c.id == trigger_id, TRIGGER.c.deleted_at.is_(None))
                .values(deleted_at=now)
            )
            if done.rowcount != 1:
                return False
            tx.append_events([resource_event("trigger", "deleted", trigger_id, now)])
            return True


def _within(rows: Sequence[Any], room: Callable[[str], int] | None) -> list[int]:
    """The ids of ``rows`` (due order), at most ``room(webhook_id)`` of each subscription: the
    rest stay due for the next claim, so one subscription's backlog cannot fill every slot."""
    if room is None:
        return [r.id for r in rows]
    taken: Counter[str] = Counter()
    ids = []
    for r in rows:
        if taken[r.webhook_id] < room(r.webhook_id):
            taken[r.webhook_id] += 1
            ids.append(r.id)
    return ids


def _text(said: str, limit: int) -> str:
    """What a receiver said, as text columns store it: PostgreSQL refuses NUL, and one answer it
    refuses would keep every outcome recorded with it from being written."""
    return said[:limit].replace("\x00", "\ufffd")


def _last_error(failures: list[Outcome]) -> str:
    last = failures[-1]
    return last.error or (f"HTTP {last.status}" if last.status is not None else "no answer")
