"""The runners the server has seen (``core.labels.RunnerSeen``), in the ``runner`` table.

A runner's row is written as it claims (its labels, version, capacity and lease) and touched as
it renews, so ``GET /api/v1/runners`` can tell online from offline. Draining is a flag on the
row: the claim query hands a draining runner nothing (``storage.queries.Q.claimable``) and the
claim endpoint tells it to finish its jobs and stop. Drains and deletions are audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core.errors import CommandRefused, Conflict, NotFound
from core.labels import RunnerSeen, queued_too_long, runner_waits, satisfies
from core.model import Job
from core.ports import AuditEntry
from core.states import JobStatus
from storage.queries import status_is
from storage.store import SqlStore
from storage.tables import metadata

RUNNER = metadata.tables["runner"]
JOB = metadata.tables["job"]
C = RUNNER.c
#: the jobs waiting for a runner, and each runner's running jobs (through the partial indexes)
QUEUED_JOBS = sa.select(JOB.c.id, JOB.c.labels, JOB.c.queued_at).where(
    status_is(JOB.c.status, JobStatus.QUEUED.value)
)
RUNNING_BY_RUNNER = (
    sa.select(JOB.c.runner, sa.func.count())
    .where(status_is(JOB.c.status, JobStatus.RUNNING.value))
    .group_by(JOB.c.runner)
)


class RunnerRegistry:
    """Record, list, drain and forget runners; each call in a transaction of its own."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def seen(
        self,
        name: str,
        *,
        labels: Sequence[str],
        version: str,
        capacity: int,
        lease_s: float,
        now: datetime,
    ) -> bool:
        """Record that ``name`` called, as it describes itself; True if it is draining."""
        values = {
            "labels": sorted(set(labels)),
            "version": version[:64],
            "capacity": capacity,
            "lease_s": lease_s,
            "last_seen": now,
        }
        for _ in range(2):  # (two replicas may insert the same new runner at once: one wins)
            try:
                with self.store.transaction() as tx:
                    c = tx.conn
                    if c.execute(sa.update(RUNNER).where(C.name == name).values(values)).rowcount == 0:
                        c.execute(sa.insert(RUNNER).values(name=name, first_seen=now, **values))
                        return False
                    return bool(c.execute(sa.select(C.draining).where(C.name == name)).scalar())
            except Conflict:
                continue
        return False

    def touch(self, name: str, now: datetime) -> bool:
        """Record that ``name`` called (a lease renewal); True if it is draining."""
        with self.store.transaction() as tx:
            c = tx.conn
            c.execute(sa.update(RUNNER).where(C.name == name).values(last_seen=now))
            return bool(c.execute(sa.select(C.draining).where(C.name == name)).scalar())

    def draining(self, name: str) -> bool:
        with self.store.transaction() as tx:
            return bool(tx.conn.execute(sa.select(C.draining).where(C.name == name)).scalar())

    def all(self) -> list[RunnerSeen]:
        """Every runner seen, by name, with the jobs each holds now."""
        with self.store.transaction() as tx:
            return _runners(tx.conn)

    def waits(self, jobs: Iterable[Job], at: datetime) -> dict[str, str]:
        """What each queued job of ``jobs`` that has waited a while waits for, when no online
        runner carries its labels (``core.labels.runner_waits``: the one wording for REST, the
        CLI and Slack). The runners are read only when some job has waited that long."""
        queued = [(j.id, j.labels, j.queued_at) for j in jobs if j.status is JobStatus.QUEUED]
        if not any(queued_too_long(q, at) for _, _, q in queued):
            return {}
        return runner_waits(queued, self.all(), at)

    def stranded(self, at: datetime) -> list[tuple[RunnerSeen, int]]:
        """Runners that are offline or draining while jobs they could take wait for a runner
        (``waits``), each with how many; App Home lists them."""
        with self.store.transaction() as tx:
            c = tx.conn
            rows = c.execute(QUEUED_JOBS).all()
            queued = [(r.id, tuple(r.labels or ()), r.queued_at) for r in rows]
            if not any(queued_too_long(q, at) for _, _, q in queued):
                return []
            runners = _runners(c)
        waiting = runner_waits(queued, runners, at)
        needs = [labels for job_id, labels, _ in queued if job_id in waiting]
        return [
            (r, n)
            for r in runners
            if (r.draining or not r.online(at)) and (n := sum(satisfies(r.labels, ls) for ls in needs))
        ]

    def resume(self, name: str, actor: str, now: datetime, channel: str) -> RunnerSeen:
        """Undo a drain: ``name`` may claim again (a drained runner that was stopped, started
        again, claims only once resumed)."""
        with self.store.transaction() as tx:
            c = tx.conn
            if c.execute(sa.update(RUNNER).where(C.name == name).values(draining=False)).rowcount == 0:
                raise NotFound(_unknown(c, name))
            tx.audit(_entry(now, actor, channel, "resume_runner", name))
            return _one(c, name)

    def get(self, name: str) -> RunnerSeen:
        with self.store.transaction() as tx:
            return _one(tx.conn, name)

    def drain(self, name: str, actor: str, now: datetime, channel: str) -> RunnerSeen:
        """Tell ``name`` to claim nothing more; it finishes its jobs and stops."""
        with self.store.transaction() as tx:
            c = tx.conn
            if c.execute(sa.update(RUNNER).where(C.name == name).values(draining=True)).rowcount == 0:
                raise NotFound(_unknown(c, name))
            tx.audit(_entry(now, actor, channel, "drain_runner", name))
            return _one(c, name)

    def delete(self, name: str, actor: str, now: datetime, channel: str) -> RunnerSeen:
        """Forget an offline runner that holds no jobs (refused otherwise)."""
        with self.store.transaction() as tx:
            c = tx.conn
            runner = _one(c, name)
            if runner.running:
                raise CommandRefused(
                    f"runner {name} holds {runner.running} job(s): drain it and wait for them to finish"
                )
            if runner.online(now) and not runner.draining:
                raise CommandRefused(f"runner {name} is online: drain it (or stop it) first")
            c.execute(sa.delete(RUNNER).where(C.name == name))
            tx.audit(_entry(now, actor, channel, "delete_runner", name))
            return runner


def _runners(c: Connection, name: str | None = None) -> list[RunnerSeen]:
    running = RUNNING_BY_RUNNER
    query = sa.select(RUNNER).order_by(C.name)
    if name is not None:
        running = running.where(JOB.c.runner == name)
        query = query.where(C.name == name)
    held = {r: n for r, n in c.execute(running)}
    return [
        RunnerSeen(
            name=r["name"],
            labels=tuple(r["labels"] or ()),
            version=r["version"],
            capacity=r["capacity"],
            lease_s=r["lease_s"],
            first_seen=r["first_seen"],
            last_seen=r["last_seen"],
            draining=r["draining"],
            running=int(held.get(r["name"], 0)),
        )
        for r in c.execute(query).mappings()
    ]


def _one(c: Connection, name: str) -> RunnerSeen:
    found = _runners(c, name)
    if not found:
        raise NotFound(_unknown(c, name))
    return found[0]


def _unknown(c: Connection, name: str) -> str:
    known = ", ".join(c.execute(sa.select(C.name).order_by(C.name).limit(20)).scalars()) or "none yet"
    return f"no runner {name!r} has connected (runners: {known})"


def _entry(at: datetime, actor: str, channel: str, action: str, name: str) -> AuditEntry:
    return AuditEntry(
        at=at,
        actor=actor,
        channel=channel,
        action=action,
        target=f"/runners/{name}",
        outcome="accepted",
        detail={"runner": name},
    )
