"""Schedules in the database: they survive restarts, every replica sees the same ones, and each
occurrence is claimed by a conditional update of ``next_fire_at`` (one process wins)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from core.schedule import Schedule
from storage.store import SqlStore
from storage.tables import T

SCHEDULE = T["schedule"]
LIVE = SCHEDULE.c.deleted_at.is_(None)


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
    )


def file_schedule_id(pipeline: str, cron: str, tz: str, parameters: dict[str, str]) -> str:
    """Schedules declared in a pipeline file are known by their content, so reloading the file
    keeps them (and their next fire time) instead of making new ones."""
    text = json.dumps([pipeline, cron, tz, parameters], sort_keys=True)
    return "f" + hashlib.sha256(text.encode()).hexdigest()[:31]


class ScheduleBook:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def add(self, schedule: Schedule) -> Schedule:
        with self.store.engine.begin() as conn:
            conn.execute(sa.insert(SCHEDULE).values(**_values(schedule)))
        return schedule

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
        with self.store.engine.connect() as conn:
            row = (
                conn.execute(sa.select(SCHEDULE).where(SCHEDULE.c.id == schedule_id, LIVE)).mappings().first()
            )
        return _schedule(row) if row else None

    def all(self, pipeline: str | None = None) -> list[Schedule]:
        query = sa.select(SCHEDULE).where(LIVE).order_by(SCHEDULE.c.next_fire_at, SCHEDULE.c.id)
        if pipeline is not None:
            query = query.where(SCHEDULE.c.pipeline == pipeline)
        with self.store.engine.connect() as conn:
            return [_schedule(r) for r in conn.execute(query).mappings()]

    def remove(self, schedule_id: str, now: datetime) -> bool:
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(SCHEDULE).where(SCHEDULE.c.id == schedule_id, LIVE).values(deleted_at=now)
            )
            return bool(done.rowcount == 1)

    def due(self, now: datetime, limit: int = 500) -> list[Schedule]:
        query = (
            sa.select(SCHEDULE)
            .where(LIVE, SCHEDULE.c.next_fire_at <= now)
            .order_by(SCHEDULE.c.next_fire_at)
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            return [_schedule(r) for r in conn.execute(query).mappings()]

    def next_due_at(self) -> datetime | None:
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.min(SCHEDULE.c.next_fire_at)).where(LIVE)).scalar()

    def claim(self, schedule: Schedule, next_fire_at: datetime) -> bool:
        """Move the schedule past its due occurrence; False if another process did first."""
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(SCHEDULE)
                .where(SCHEDULE.c.id == schedule.id, LIVE, SCHEDULE.c.next_fire_at == schedule.next_fire_at)
                .values(next_fire_at=next_fire_at)
            )
            return bool(done.rowcount == 1)

    def sync_file(self, pipeline: str, wanted: Sequence[Schedule], now: datetime) -> None:
        """Make the file-declared schedules of ``pipeline`` exactly ``wanted`` (by id)."""
        with self.store.engine.begin() as conn:
            have = set(
                conn.execute(
                    sa.select(SCHEDULE.c.id).where(
                        SCHEDULE.c.pipeline == pipeline, SCHEDULE.c.source == "file", LIVE
                    )
                ).scalars()
            )
            for schedule in wanted:
                if schedule.id not in have:
                    existing = conn.execute(
                        sa.select(SCHEDULE.c.id).where(SCHEDULE.c.id == schedule.id)
                    ).first()
                    if existing is None:
                        conn.execute(sa.insert(SCHEDULE).values(**_values(schedule)))
                    else:  # declared again after being removed: back, from now on
                        conn.execute(
                            sa.update(SCHEDULE)
                            .where(SCHEDULE.c.id == schedule.id)
                            .values(deleted_at=None, next_fire_at=schedule.next_fire_at)
                        )
            gone = have - {s.id for s in wanted}
            if gone:
                conn.execute(sa.update(SCHEDULE).where(SCHEDULE.c.id.in_(gone)).values(deleted_at=now))


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
    }
