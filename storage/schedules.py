"""Schedules in the database: they survive restarts, every replica sees the same ones, and each
occurrence is claimed by a conditional update of ``next_fire_at`` (one process wins).

Creating and deleting a schedule (by hand, or by loading a pipeline file) append
``schedule.created`` and ``schedule.deleted`` to the same unit of work. Claiming an occurrence
appends nothing: it only moves the next fire time, and the run it starts has events of its own."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.events import Event, resource_event
from core.ports import AuditEntry
from core.schedule import Schedule, next_fire
from storage.store import SqlStore, SqlTx
from storage.tables import T

SCHEDULE = T["schedule"]
LIVE = SCHEDULE.c.deleted_at.is_(None)
#: live and not paused: the schedules the clock fires
ACTIVE = sa.and_(LIVE, SCHEDULE.c.paused_at.is_(None))
#: schedules claimed per statement (at most three bound values each: far below SQLite's limit)
CLAIM_CHUNK = 500


def _schedule(r: Any) -> Schedule:
    return Schedule(
        id=r["id"],
        pipeline=r["pipeline"],
        cron=r["cron"],
        timezone=r["timezone"],
        parameters=dict(r["parameters"]),
        owner=r["owner"],
        source=r["source"],
        grace_s=r["grace_s"],
        next_fire_at=r["next_fire_at"],
        created_at=r["created_at"],
        version=r["version"],
        paused_reason=r["paused_reason"] or "",
        paused_at=r["paused_at"],
    )


def file_schedule_id(pipeline: str, cron: str, tz: str, parameters: dict[str, str]) -> str:
    """Schedules declared in a pipeline file are known by their content, so reloading the file
    keeps them (and their next fire time) instead of making new ones."""
    text = json.dumps([pipeline, cron, tz, parameters], sort_keys=True)
    return "f" + hashlib.sha256(text.encode()).hexdigest()[:31]


def _created(s: Schedule, at: datetime) -> Event:
    return resource_event("schedule", "created", s.id, at, pipeline=s.pipeline, source=s.source)


def _deleted(schedule_id: str, pipeline: str, at: datetime) -> Event:
    return resource_event("schedule", "deleted", schedule_id, at, pipeline=pipeline)


def insert(tx: SqlTx, schedules: Sequence[Schedule]) -> None:
    """Store ``schedules`` in the caller's transaction (one statement), with their events."""
    if schedules:
        tx.conn.execute(sa.insert(SCHEDULE), [_values(s) for s in schedules])
        tx.append_events([_created(s, s.created_at) for s in schedules])


def delete(tx: SqlTx, schedule_id: str, now: datetime) -> bool:
    """Delete a live schedule in the caller's transaction; False if there is none."""
    done = tx.conn.execute(
        sa.update(SCHEDULE)
        .where(SCHEDULE.c.id == schedule_id, LIVE)
        .values(deleted_at=now, version=SCHEDULE.c.version + 1)
        .returning(SCHEDULE.c.pipeline)
    )
    pipeline = done.scalar()
    if pipeline is None:
        return False
    tx.append_events([_deleted(schedule_id, pipeline, now)])
    return True


@dataclass(frozen=True, slots=True)
class Pause:
    """A schedule to pause, why, and who says so (the clock: it can no longer start a run)."""

    schedule: Schedule
    reason: str
    at: datetime
    by: str = ""  #: a person pausing it by hand; "" for the clock


def pause(tx: SqlTx, paused: Pause) -> bool:
    """Pause a live schedule still at the version it was read with, in the caller's
    transaction: audited once (``schedule_paused``) and said once (the ``schedule.paused``
    event, which the Slack notifier tells the owner of when the clock paused it)."""
    s = paused.schedule
    done = tx.conn.execute(
        sa.update(SCHEDULE)
        .where(SCHEDULE.c.id == s.id, ACTIVE, SCHEDULE.c.version == s.version)
        .values(paused_at=paused.at, paused_reason=paused.reason, version=SCHEDULE.c.version + 1)
    )
    if done.rowcount != 1:
        return False
    by = paused.by or "clock"
    tx.append_events(
        [
            resource_event(
                "schedule",
                "paused",
                s.id,
                paused.at,
                pipeline=s.pipeline,
                owner=s.owner,
                source=s.source,
                reason=paused.reason,
                by=by,
            )
        ]
    )
    tx.audit(
        AuditEntry(
            at=paused.at,
            actor=paused.by or s.owner,
            channel="schedule",
            action="schedule_paused",
            target=f"schedule {s.id}",
            outcome="accepted" if paused.by else "rejected",
            reason=paused.reason,
            detail={"pipeline": s.pipeline, "cron": s.cron, "timezone": s.timezone, "by": by},
        )
    )
    return True


class ScheduleStore:
    """Schedules, each call in a unit of work of its own."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def add(self, schedule: Schedule) -> Schedule:
        self.add_many([schedule])
        return schedule

    def add_many(self, schedules: Sequence[Schedule]) -> None:
        """Store several schedules in one transaction (one statement)."""
        if schedules:
            with self.store.transaction() as tx:
                insert(tx, schedules)

    def new(
        self,
        *,
        pipeline: str,
        cron: str,
        timezone: str,
        parameters: dict[str, str],
        owner: str,
        source: str,
        grace_s: float,
        next_fire_at: datetime,
        now: datetime,
    ) -> Schedule:
        return self.add(
            Schedule(
                id=uuid.uuid4().hex,
                pipeline=pipeline,
                cron=cron,
                timezone=timezone,
                parameters=parameters,
                owner=owner,
                source=source,
                grace_s=grace_s,
                next_fire_at=next_fire_at,
                created_at=now,
            )
        )

    def get(self, schedule_id: str) -> Schedule | None:
        with self.store.reading() as tx:
            row = (
                tx.conn.execute(sa.select(SCHEDULE).where(SCHEDULE.c.id == schedule_id, LIVE))
                .mappings()
                .first()
            )
        return _schedule(row) if row else None

    def all(self, pipeline: str | None = None) -> list[Schedule]:
        query = sa.select(SCHEDULE).where(LIVE).order_by(SCHEDULE.c.next_fire_at, SCHEDULE.c.id)
        if pipeline is not None:
            query = query.where(SCHEDULE.c.pipeline == pipeline)
        with self.store.reading() as tx:
            return [_schedule(r) for r in tx.conn.execute(query).mappings()]

    def paused_of(self, owner: str, limit: int = 10) -> list[Schedule]:
        """The live schedules ``owner`` owns that are paused, most recently paused first."""
        query = (
            sa.select(SCHEDULE)
            .where(LIVE, SCHEDULE.c.owner == owner, SCHEDULE.c.paused_at.is_not(None))
            .order_by(SCHEDULE.c.paused_at.desc(), SCHEDULE.c.id)
            .limit(limit)
        )
        with self.store.reading() as tx:
            return [_schedule(r) for r in tx.conn.execute(query).mappings()]

    def remove(self, schedule_id: str, now: datetime) -> bool:
        with self.store.transaction() as tx:
            return delete(tx, schedule_id, now)

    def due(
        self, now: datetime, limit: int = 500, after: tuple[datetime, str] | None = None
    ) -> list[Schedule]:
        """Live schedules due at ``now``, soonest first; ``after``: past this (fire time, id)."""
        query = (
            sa.select(SCHEDULE)
            .where(ACTIVE, SCHEDULE.c.next_fire_at <= now)
            .order_by(SCHEDULE.c.next_fire_at, SCHEDULE.c.id)
            .limit(limit)
        )
        if after is not None:
            fire, last = after
            query = query.where(
                sa.or_(
                    SCHEDULE.c.next_fire_at > fire,
                    sa.and_(SCHEDULE.c.next_fire_at == fire, SCHEDULE.c.id > last),
                )
            )
        with self.store.reading() as tx:
            return [_schedule(r) for r in tx.conn.execute(query).mappings()]

    def next_due_at(self) -> datetime | None:
        with self.store.reading() as tx:
            return tx.conn.execute(sa.select(sa.func.min(SCHEDULE.c.next_fire_at)).where(ACTIVE)).scalar()

    def claim(
        self,
        claims: Sequence[tuple[Schedule, datetime]],
        audits: Mapping[str, Sequence[AuditEntry]] | None = None,
        pauses: Sequence[Pause] = (),
    ) -> set[str]:
        """Move each schedule past its due occurrence (to the paired next fire time), in one
        transaction; returns the ids this process won. A schedule is won only if it is still as
        it was read (the same next fire time and version, live and not paused: the
        occurrence's compare-and-set); another process that got there first, or on PostgreSQL
        holds the row right now (``SKIP LOCKED``), keeps it. The audit entries of the schedules
        won (missed and refused fires) are written in the same transaction: recorded exactly
        when the occurrence is taken. ``pauses``: schedules that can no longer start a run,
        paused in the same transaction (``pause``); the ones this process paused are won too."""
        won: set[str] = set()
        if not claims and not pauses:
            return won
        by_due: dict[tuple[datetime, int], list[tuple[str, datetime]]] = defaultdict(list)
        for schedule, next_fire_at in claims:
            by_due[(schedule.next_fire_at, schedule.version)].append((schedule.id, next_fire_at))
        with self.store.transaction() as tx:
            for (due_at, version), moves in by_due.items():
                for i in range(0, len(moves), CLAIM_CHUNK):
                    won |= self._claim_chunk(tx, due_at, version, dict(moves[i : i + CLAIM_CHUNK]))
            for schedule_id in sorted(won):
                for entry in (audits or {}).get(schedule_id, ()):
                    tx.audit(entry)
            for paused in pauses:
                if pause(tx, paused):
                    won.add(paused.schedule.id)
        return won

    def _claim_chunk(self, tx: SqlTx, due_at: datetime, version: int, chunk: dict[str, datetime]) -> set[str]:
        kind = SCHEDULE.c.next_fire_at.type
        taken = sa.and_(
            SCHEDULE.c.id.in_(list(chunk)),
            ACTIVE,
            SCHEDULE.c.next_fire_at == due_at,
            SCHEDULE.c.version == version,
        )
        if not self.store.sqlite:  # rows another claimer holds are its: skip them
            locked = sa.select(SCHEDULE.c.id).where(taken).with_for_update(skip_locked=True)
            taken = SCHEDULE.c.id.in_(locked.scalar_subquery())
        distinct = set(chunk.values())
        value: Any = (  # (a burst of one cron moves every schedule to the same time)
            sa.literal(distinct.pop(), kind)
            if len(distinct) == 1
            else sa.case({sid: sa.literal(n, kind) for sid, n in chunk.items()}, value=SCHEDULE.c.id)
        )
        statement = sa.update(SCHEDULE).where(taken).values(next_fire_at=value).returning(SCHEDULE.c.id)
        return set(tx.conn.execute(statement).scalars())

    def pause_by_hand(self, schedule: Schedule, by: str, now: datetime) -> bool:
        """Its owner (or an admin) pauses it: False if it changed since it was read."""
        with self.store.transaction() as tx:
            return pause(tx, Pause(schedule, f"paused by {by}", now, by=by))

    def resume(self, schedule: Schedule, next_fire_at: datetime, by: str, now: datetime) -> bool:
        """Fire it again from ``next_fire_at`` (the fires it missed while paused are not made
        up); False if it changed since it was read."""
        with self.store.transaction() as tx:
            done = tx.conn.execute(
                sa.update(SCHEDULE)
                .where(SCHEDULE.c.id == schedule.id, LIVE, SCHEDULE.c.version == schedule.version)
                .values(
                    paused_at=None,
                    paused_reason=None,
                    next_fire_at=next_fire_at,
                    version=SCHEDULE.c.version + 1,
                )
            )
            if done.rowcount != 1:
                return False
            tx.append_events(
                [resource_event("schedule", "resumed", schedule.id, now, pipeline=schedule.pipeline, by=by)]
            )
            tx.audit(
                AuditEntry(
                    at=now,
                    actor=by,
                    channel="schedule",
                    action="schedule_resumed",
                    target=f"schedule {schedule.id}",
                    outcome="accepted",
                    reason=f"next fire {next_fire_at.isoformat()}",
                    detail={"pipeline": schedule.pipeline, "cron": schedule.cron},
                )
            )
            return True

    def file_schedule_ids(self) -> dict[str, set[str]]:
        """The live schedules declared in pipeline files, by pipeline."""
        query = sa.select(SCHEDULE.c.pipeline, SCHEDULE.c.id).where(SCHEDULE.c.source == "file", LIVE)
        found: dict[str, set[str]] = defaultdict(set)
        with self.store.reading() as tx:
            for pipeline, schedule_id in tx.conn.execute(query):
                found[pipeline].add(schedule_id)
        return dict(found)

    def sync_file(self, pipeline: str, wanted: Sequence[Schedule], now: datetime) -> None:
        """Make the file-declared schedules of ``pipeline`` exactly ``wanted`` (by id). The ones
        it stores (new, or declared again after being removed) start from ``now``: their next
        fire times are worked out here, inside the transaction that decides they are stored
        (``wanted``'s own are ignored), so one already stored never has its next fire moved."""
        firsts: dict[tuple[str, str], datetime] = {}

        def first(s: Schedule) -> datetime:
            key = (s.cron, s.timezone)
            if key not in firsts:
                firsts[key] = next_fire(s.cron, s.timezone, now)
            return firsts[key]

        with self.store.transaction() as tx:
            conn = tx.conn
            have = set(
                conn.execute(
                    sa.select(SCHEDULE.c.id).where(
                        SCHEDULE.c.pipeline == pipeline, SCHEDULE.c.source == "file", LIVE
                    )
                ).scalars()
            )
            missing = [s for s in wanted if s.id not in have]
            if missing:
                removed = set(
                    conn.execute(
                        sa.select(SCHEDULE.c.id).where(SCHEDULE.c.id.in_([s.id for s in missing]))
                    ).scalars()
                )
                new = [{**_values(s), "next_fire_at": first(s)} for s in missing if s.id not in removed]
                if new:
                    conn.execute(sa.insert(SCHEDULE), new)
                for schedule in missing:
                    if schedule.id in removed:  # declared again after being removed: back, from now on
                        conn.execute(
                            sa.update(SCHEDULE)
                            .where(SCHEDULE.c.id == schedule.id)
                            .values(
                                deleted_at=None,
                                next_fire_at=first(schedule),
                                paused_at=None,
                                paused_reason=None,
                                version=SCHEDULE.c.version + 1,
                            )
                        )
                tx.append_events([_created(s, now) for s in missing])
            gone = have - {s.id for s in wanted}
            if gone:
                conn.execute(
                    sa.update(SCHEDULE)
                    .where(SCHEDULE.c.id.in_(gone))
                    .values(deleted_at=now, version=SCHEDULE.c.version + 1)
                )
                tx.append_events([_deleted(schedule_id, pipeline, now) for schedule_id in sorted(gone)])


def _values(s: Schedule) -> dict[str, Any]:
    return {
        "id": s.id,
        "pipeline": s.pipeline,
        "cron": s.cron,
        "timezone": s.timezone,
        "parameters": s.parameters,
        "owner": s.owner,
        "source": s.source,
        "grace_s": s.grace_s,
        "next_fire_at": s.next_fire_at,
        "created_at": s.created_at,
        "version": s.version,
        "paused_reason": s.paused_reason or None,
        "paused_at": s.paused_at,
    }
