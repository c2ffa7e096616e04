"""Analyses in the database (``core.analysis`` has the rules and the words): verifications of
deployments, each environment's health watch, every measurement, and each environment's health
with its history of changes.

Every check of an analysis is a row with its next due time, a lease and its tally, so a restart
resumes a verification with the same deadline and counts. Measuring is claimed, never assumed:

* ``claim_due`` takes the due checks nobody holds (or whose holder's lease ran out: a process
  that died) with one conditional UPDATE (on PostgreSQL over ``SKIP LOCKED`` rows), so of two
  processes exactly one measures each check;
* ``record`` stores a measurement only while its caller still holds the check and the tally is
  the one it read (a compare-and-set), moves the check to its next due time and lets it go
  (``record_many``: a batch of them in one transaction, with a few statements in all);
* ``end`` ends a running analysis with a conditional update on ``status = 'running'``: of two
  processes (or a verdict and a person) one ends it, and the other is told it did not.

An environment's health is recomputed in ``record``'s transaction, with the environment's health
row locked (on PostgreSQL; SQLite has one writer), from the latest measurements then committed,
so two processes recording checks of one environment at once never lose a change. A change
writes ``health_change`` and appends ``environment.health_changed`` to the event log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.analysis import (
    Analysis,
    AnalysisKind,
    AnalysisStatus,
    CheckTally,
    DueCheck,
    EnvironmentHealth,
    Health,
    HealthChange,
    Seen,
    Taken,
    health_analysis_id,
    health_of,
    spread,
    tally,
)
from core.checks import CheckResult, HealthWatch, Measurement, VerifyPolicy
from core.errors import Conflict
from core.events import NO_RUN, Event
from storage.store import SqlStore, SqlTx
from storage.tables import metadata

ANALYSIS = metadata.tables["analysis"]
CHECK = metadata.tables["analysis_check"]
MEASUREMENT = metadata.tables["measurement"]
HEALTH = metadata.tables["environment_health"]
CHANGE = metadata.tables["health_change"]
A, C, M = ANALYSIS.c, CHECK.c, MEASUREMENT.c
COUNTS = ("measured", "passed", "failed", "inconclusive", "errors", "consecutive_errors")
b = sa.bindparam

# ``record_many``'s statements, sent through the driver (``storage.fastpath``): the checks a
# holder holds that were due by then, with their analyses; each check counted and let go
# (a compare-and-set on its tally); each measurement kept
_HELD = (
    sa.select(*CHECK.c, *[c.label(f"a_{c.name}") for c in ANALYSIS.c])
    .select_from(CHECK.join(ANALYSIS, A.id == C.analysis_id))
    .where(C.holder == b("holder"), C.next_at <= b("upto"))
)
_HELD_LOCKED = _HELD.with_for_update(of=CHECK)  # (PostgreSQL: the rows stay ours until commit)
_COUNTED = (
    sa.update(CHECK)
    .where(
        C.analysis_id == b("k_analysis"),
        C.check == b("k_check"),
        C.holder == b("k_holder"),
        C.measured == b("k_measured"),
    )
    .values(
        **{k: b(f"v_{k}") for k in (*COUNTS, "recent", "next_at", "last_result", "last_value", "last_at")},
        holder=sa.null(),
        lease_until=sa.null(),
    )
)
_KEPT = sa.insert(MEASUREMENT)
_KEPT_KEYS = ("analysis_id", "environment", "check", "at", "result", "value", "detail", "took")


@dataclass(frozen=True, slots=True)
class Recorded:
    """What ``record`` stored: the analysis, every check's tally (all but health watches: a health
    watch is not judged on them), and the environment's health change the measurement made
    (health watches only)."""

    analysis: Analysis
    tallies: dict[str, CheckTally]
    health_change: HealthChange | None = None


# -- rows ---------------------------------------------------------------------------------------
def _analysis(r: Any) -> Analysis:
    return Analysis(
        id=r["id"],
        environment=r["environment"],
        kind=AnalysisKind(r["kind"]),
        checks=tuple(r["checks"]),
        started_at=r["started_at"],
        status=AnalysisStatus(r["status"]),
        reason=r["reason"],
        run_id=r["run_id"],
        stage_index=r["stage_index"],
        deadline=r["deadline"],
        ended_at=r["ended_at"],
        ended_by=r["ended_by"],
        version=r["version"],
        limits=r["limits"],
    )


def _seen_out(s: Seen | None) -> dict[str, Any] | None:
    return None if s is None else {"at": s.at.isoformat(), "value": s.value, "detail": s.detail}


def _seen_in(d: Any) -> Seen | None:
    return None if not d else Seen(datetime.fromisoformat(d["at"]), d["value"], d["detail"])


def _tally(r: Any) -> CheckTally:
    recent = r["recent"] or {}
    failures = tuple(s for d in recent.get("failures", []) if (s := _seen_in(d)) is not None)
    return CheckTally(
        **{k: r[k] for k in COUNTS},
        failures=failures,
        last_error=_seen_in(recent.get("last_error")),
        last_inconclusive=_seen_in(recent.get("last_inconclusive")),
    )


def _tally_values(t: CheckTally) -> dict[str, Any]:
    return {
        **{k: getattr(t, k) for k in COUNTS},
        "recent": {
            "failures": [_seen_out(s) for s in t.failures],
            "last_error": _seen_out(t.last_error),
            "last_inconclusive": _seen_out(t.last_inconclusive),
        },
    }


def _measurement(r: Any) -> Measurement:
    return Measurement(r["check"], r["at"], CheckResult(r["result"]), r["value"], r["detail"], r["took"])


def _health(r: Any) -> EnvironmentHealth:
    return EnvironmentHealth(r["environment"], Health(r["state"]), r["since"], r["reason"])


def _change(r: Any) -> HealthChange:
    return HealthChange(
        r["id"], r["environment"], r["at"], Health(r["from_state"]), Health(r["to_state"]), r["reason"]
    )


def _check_row(a: Analysis, check: str, next_at: datetime) -> dict[str, Any]:
    return {
        "analysis_id": a.id,
        "check": check,
        "environment": a.environment,
        "kind": a.kind.value,
        "next_at": next_at,
        **_tally_values(CheckTally()),
    }


def _analysis_row(a: Analysis) -> dict[str, Any]:
    values = {f.name: getattr(a, f.name) for f in fields(a)}
    values.update(kind=a.kind.value, status=a.status.value, checks=list(a.checks))
    values["limits"] = dict(a.limits) if a.limits is not None else None
    return values


def _prefixed(row: Any, prefix: str) -> dict[str, Any]:
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix)}


def _counted(holder: str, t: Taken, row: Any) -> dict[str, Any]:
    """``_COUNTED``'s parameters: the check's tally after ``t``, if it is still as read."""
    m = t.measurement
    values = _tally_values(tally(_tally(row), m))
    return {
        "k_analysis": t.analysis_id,
        "k_check": t.check,
        "k_holder": holder,
        "k_measured": row["measured"],
        **{f"v_{k}": v for k, v in values.items()},
        "v_next_at": t.next_at,
        "v_last_result": m.result.value,
        "v_last_value": m.value,
        "v_last_at": m.at,
    }


def _kept(t: Taken, environment: str) -> dict[str, Any]:
    m = t.measurement
    return {
        "analysis_id": t.analysis_id,
        "environment": environment,
        "check": t.check,
        "at": m.at,
        "result": m.result.value,
        "value": m.value,
        "detail": m.detail,
        "took": m.took,
    }


# -- in a caller's transaction ------------------------------------------------------------------
def start(
    tx: SqlTx,
    *,
    analysis_id: str,
    environment: str,
    run_id: str | None,
    stage_index: int | None,
    policy: VerifyPolicy,
    now: datetime,
    kind: AnalysisKind = AnalysisKind.VERIFY,
) -> Analysis:
    """Start verifying a deployment (or measuring a canary step: ``kind``, with the policy's
    limits kept) in the caller's transaction (a run's, so the run enters ``verifying`` exactly
    when its verification exists). Every check is first due after ``policy.initial_delay``; the
    deadline is that plus ``policy.for``."""
    limits = None
    if kind is AnalysisKind.ROLLOUT:
        limits = {
            "failure_limit": policy.failure_limit,
            "inconclusive_limit": policy.inconclusive_limit,
            "consecutive_error_limit": policy.consecutive_error_limit,
        }
    a = Analysis(
        id=analysis_id,
        environment=environment,
        kind=kind,
        limits=limits,
        checks=tuple(policy.checks),
        started_at=now,
        run_id=run_id,
        stage_index=stage_index,
        deadline=now + timedelta(seconds=policy.initial_delay + policy.duration),
    )
    first = now + timedelta(seconds=policy.initial_delay)
    tx.conn.execute(sa.insert(ANALYSIS).values(**_analysis_row(a)))
    tx.conn.execute(sa.insert(CHECK), [_check_row(a, check, first) for check in a.checks])
    return a


def end(
    conn: Connection, analysis_id: str, status: AnalysisStatus, reason: str, by: str, now: datetime
) -> bool:
    """End a running analysis in the caller's transaction; False if it had ended already (someone
    else ended it: this caller must not act on it). Its checks stop being due."""
    done = conn.execute(
        sa.update(ANALYSIS)
        .where(A.id == analysis_id, A.status == AnalysisStatus.RUNNING.value)
        .values(status=status.value, reason=reason, ended_at=now, ended_by=by, version=A.version + 1)
    )
    if done.rowcount != 1:
        return False
    conn.execute(
        sa.update(CHECK)
        .where(C.analysis_id == analysis_id)
        .values(next_at=None, holder=None, lease_until=None)
    )
    return True


def tallies(conn: Connection, analysis_id: str) -> dict[str, CheckTally]:
    rows = conn.execute(sa.select(CHECK).where(C.analysis_id == analysis_id)).mappings()
    return {r["check"]: _tally(r) for r in rows}


def recent(
    conn: Connection, environment: str, checks: Sequence[str], per_check: int, analysis_id: str | None = None
) -> dict[str, list[Measurement]]:
    """Each check's latest ``per_check`` measurements in ``environment``, newest first (of one
    analysis when ``analysis_id`` is given)."""
    found: dict[str, list[Measurement]] = {}
    for check in checks:
        query = (
            sa.select(MEASUREMENT)
            .where(M.environment == environment, M.check == check)
            .order_by(M.at.desc(), M.id.desc())
            .limit(per_check)
        )
        if analysis_id is not None:
            query = query.where(M.analysis_id == analysis_id)
        found[check] = [_measurement(r) for r in conn.execute(query).mappings()]
    return found


def health_now(conn: Connection, environment: str) -> EnvironmentHealth | None:
    """``environment``'s health in the caller's transaction (admission, ``/deploy why``)."""
    row = conn.execute(sa.select(HEALTH).where(HEALTH.c.environment == environment)).mappings().first()
    return None if row is None else _health(row)


def _rehealth(tx: SqlTx, environment: str, watch: HealthWatch | None, now: datetime) -> HealthChange | None:
    """Recompute ``environment``'s health with its row locked; write the change, if any."""
    conn = tx.conn
    query = sa.select(HEALTH).where(HEALTH.c.environment == environment)
    if not tx.store.sqlite:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        _insert_health(conn, environment, now)
        row = conn.execute(query).mappings().one()
    checks = watch.checks if watch is not None else []
    per_check = watch.failure_limit if watch is not None else 1
    last = recent(conn, environment, checks, per_check, health_analysis_id(environment))
    state, reason = health_of(watch, last)
    was = Health(row["state"])
    where = sa.and_(HEALTH.c.environment == environment, HEALTH.c.version == row["version"])
    if state is was:
        if reason != row["reason"]:
            conn.execute(sa.update(HEALTH).where(where).values(reason=reason, version=row["version"] + 1))
        return None
    moved = conn.execute(
        sa.update(HEALTH)
        .where(where)
        .values(state=state.value, since=now, reason=reason, version=row["version"] + 1)
    )
    if moved.rowcount != 1:  # (only without the row lock: recomputed by the next measurement)
        return None
    values = {
        "environment": environment,
        "at": now,
        "from_state": was.value,
        "to_state": state.value,
        "reason": reason,
    }
    change_id = conn.execute(sa.insert(CHANGE).values(**values).returning(CHANGE.c.id)).scalar_one()
    tx.append_events([health_changed(environment, was, state, reason, now)])
    return HealthChange(change_id, environment, now, was, state, reason)


def health_changed(environment: str, was: Health, now_is: Health, reason: str, at: datetime) -> Event:
    """``environment.health_changed``: a transition of the environment's health (its subject is
    ``env``, the event log's subjects being short)."""
    return Event(
        name="environment.health_changed",
        run_id=NO_RUN,
        subject="env",
        subject_id=environment,
        at=at,
        from_status=was.value,
        to_status=now_is.value,
        data={
            "environment": environment,
            "from_state": was.value,
            "to_state": now_is.value,
            "reason": reason,
        },
    )


def _insert_health(conn: Connection, environment: str, now: datetime) -> None:
    try:
        with conn.begin_nested():
            conn.execute(
                sa.insert(HEALTH).values(
                    environment=environment,
                    state=Health.UNKNOWN.value,
                    since=now,
                    reason="no measurement yet",
                )
            )
    except IntegrityError:  # another process made it first
        pass


# -- on its own ---------------------------------------------------------------------------------
class AnalysisStore:
    """Analyses, each call a transaction of the store's unit of work."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def ensure_health(
        self,
        watched: Mapping[str, HealthWatch | None],
        now: datetime,
        intervals: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        """Make the health watches those configured: for each environment in ``watched``, its
        ``health:<env>`` analysis with exactly the checks it watches (new ones first due at
        their ``spread`` within their interval, from ``intervals``: env → check → seconds, or at
        once where it gives none; dropped ones deleted) and a health row; environments whose
        watch is gone (None, or missing from ``watched`` while stored) lose their checks and go
        ``unknown``. Safe to
        run on several replicas at once (an insert another made first is skipped)."""
        with self.store.transaction() as tx:
            conn = tx.conn
            stored = {
                r["id"]: r
                for r in conn.execute(
                    sa.select(ANALYSIS).where(A.kind == AnalysisKind.HEALTH.value)
                ).mappings()
            }
            have: dict[str, set[str]] = {}
            for aid, check in conn.execute(
                sa.select(C.analysis_id, C.check).where(C.kind == AnalysisKind.HEALTH.value)
            ):
                have.setdefault(aid, set()).add(check)
            everyone = set(watched) | {r["environment"] for r in stored.values()}
            for env in sorted(everyone):
                watch = watched.get(env)
                aid = health_analysis_id(env)
                wanted = list(watch.checks) if watch is not None else []
                a = Analysis(aid, env, AnalysisKind.HEALTH, tuple(wanted), now)
                if aid not in stored:
                    if not wanted:
                        continue
                    try:
                        with conn.begin_nested():
                            conn.execute(sa.insert(ANALYSIS).values(**_analysis_row(a)))
                    except IntegrityError:
                        pass
                elif list(stored[aid]["checks"]) != wanted:
                    conn.execute(
                        sa.update(ANALYSIS).where(A.id == aid).values(checks=wanted, version=A.version + 1)
                    )
                current = have.get(aid, set())
                for check in wanted:
                    if check not in current:
                        try:
                            with conn.begin_nested():
                                offset = spread(env, check, (intervals or {}).get(env, {}).get(check, 0.0))
                                first = now + timedelta(seconds=offset)
                                conn.execute(sa.insert(CHECK).values(**_check_row(a, check, first)))
                        except IntegrityError:
                            pass
                gone = current - set(wanted)
                if gone:
                    conn.execute(sa.delete(CHECK).where(C.analysis_id == aid, C.check.in_(sorted(gone))))
                _insert_health(conn, env, now)
                if current != set(wanted) or watch is None or aid in stored:
                    # the watch may have changed (checks, failure_limit): ``record`` recomputes
                    # health only when a measurement can change it, so recompute it here
                    _rehealth(tx, env, watch, now)

    def start(
        self,
        *,
        analysis_id: str,
        environment: str,
        policy: VerifyPolicy,
        now: datetime,
        run_id: str | None = None,
        stage_index: int | None = None,
    ) -> Analysis:
        """``start`` in a transaction of its own (the engine calls ``SqlTx.start_analysis``)."""
        with self.store.transaction() as tx:
            return start(
                tx,
                analysis_id=analysis_id,
                environment=environment,
                run_id=run_id,
                stage_index=stage_index,
                policy=policy,
                now=now,
            )

    def claim_due(self, now: datetime, holder: str, lease_s: float, limit: int) -> list[DueCheck]:
        """Take up to ``limit`` checks due at ``now`` that nobody holds (or whose holder's lease
        ran out) for ``holder`` until ``now + lease_s``, soonest due first; returns those won.
        A verification's check due at or after its deadline is not taken: the deadline alone
        decides then, and a measurement taken beside that verdict would count in neither it
        nor the tally (and hand the engine a second verdict it refuses)."""
        past_deadline = sa.exists().where(
            A.id == C.analysis_id, A.deadline.is_not(None), A.deadline <= C.next_at
        )
        free = sa.and_(C.next_at <= now, sa.or_(C.holder.is_(None), C.lease_until < now), ~past_deadline)
        candidates = sa.select(C.analysis_id, C.check).where(free).order_by(C.next_at).limit(limit)
        if not self.store.sqlite:  # rows another claimer holds right now are its
            candidates = candidates.with_for_update(skip_locked=True)
        statement = (
            sa.update(CHECK)
            .where(sa.tuple_(C.analysis_id, C.check).in_(candidates), free)
            .values(holder=holder, lease_until=now + timedelta(seconds=lease_s))
            .returning(C.analysis_id, C.environment, C.kind, C.check, C.next_at)
        )
        with self.store.transaction() as tx:
            rows = tx.conn.execute(statement).all()
        won = [DueCheck(r.analysis_id, r.environment, AnalysisKind(r.kind), r.check, r.next_at) for r in rows]
        return sorted(won, key=lambda d: (d.due_at, d.analysis_id, d.check))

    def record(
        self,
        analysis_id: str,
        check: str,
        holder: str,
        measurement: Measurement,
        next_at: datetime,
        watch: HealthWatch | None = None,
    ) -> Recorded | None:
        """Store ``measurement`` of a check ``holder`` claimed, count it, make the check due at
        ``next_at`` and let it go; None (and nothing stored) if ``holder`` no longer holds it
        (its lease ran out and another took it, or the analysis ended). For a health watch the
        environment's health is recomputed (``watch``: its configuration) in the same
        transaction. ``record_many`` of one."""
        return self.record_many(holder, [Taken(analysis_id, check, measurement, next_at, watch)])[0]

    def record_many(self, holder: str, taken: Sequence[Taken]) -> list[Recorded | None]:
        """``record`` each of ``taken`` (measurements of checks ``holder`` claimed) in one
        transaction, with a few statements whatever their number: one read of the checks
        ``holder`` holds (locked on PostgreSQL), one ``executemany`` counting them, one
        inserting the measurements. What each recorded, in order; None for a check ``holder``
        no longer holds (nothing of it stored).

        A health measurement that can change its environment's health (all but a pass after a
        pass: that adds nothing to the state or its reason) recomputes it after its own
        measurement is stored and before the next one of that environment is, so every change
        is written as when each is recorded alone; environments go in name order, so two
        processes lock their health rows in one order. A verification's tallies are read once
        the whole batch is counted."""
        if not taken:
            return []
        upto = max(t.next_at for t in taken)  # (a held check was due by its claim: before this)
        with self.store.transaction() as tx:
            conn = tx.conn
            held = self.store.driver.get(_HELD if self.store.sqlite else _HELD_LOCKED)
            rows = {
                (r["analysis_id"], r["check"]): r
                for r in held.fetch_mappings(conn, {"holder": holder, "upto": upto})
            }
            mine = [(t, rows[t.analysis_id, t.check]) for t in taken if (t.analysis_id, t.check) in rows]
            counted = [_counted(holder, t, row) for t, row in mine]
            if counted and self.store.driver.get(_COUNTED).execute_many(conn, counted) != len(counted):
                # (the rows are ours until commit: locked, or SQLite's single writer)
                raise Conflict("a check held for recording changed under its holder")
            change = self._keep(tx, mine)
            analyses = {row["analysis_id"]: _analysis(_prefixed(row, "a_")) for _, row in mine}
            counts = {
                aid: tallies(conn, aid) for aid, a in analyses.items() if a.kind is not AnalysisKind.HEALTH
            }
        done: dict[tuple[str, str], Recorded] = {
            (t.analysis_id, t.check): Recorded(
                analyses[t.analysis_id], counts.get(t.analysis_id, {}), change.get((t.analysis_id, t.check))
            )
            for t, _ in mine
        }
        return [done.get((t.analysis_id, t.check)) for t in taken]

    def _keep(self, tx: SqlTx, mine: Sequence[tuple[Taken, Any]]) -> dict[tuple[str, str], HealthChange]:
        """Insert the measurements; recompute the health each may change, after its own is in."""
        kept = self.store.driver.get(_KEPT, _KEPT_KEYS)
        rehealth: list[tuple[str, int, Taken]] = []
        plain: list[dict[str, Any]] = []
        for index, (t, row) in enumerate(mine):
            # a check that passed and had passed before leaves its environment's health as it was
            # (a passing check adds nothing to the state or its reason, and the other checks are
            # as they were): most health measurements need no recomputation
            unchanged = t.measurement.result is CheckResult.PASSED and row["last_result"] == "passed"
            if row["kind"] == AnalysisKind.HEALTH.value and not unchanged:
                rehealth.append((row["environment"], index, t))
            else:
                plain.append(_kept(t, row["environment"]))
        if plain:
            kept.execute_many(tx.conn, plain)
        changes: dict[tuple[str, str], HealthChange] = {}
        for environment, _, t in sorted(rehealth, key=lambda e: (e[0], e[1])):
            kept.execute_many(tx.conn, [_kept(t, environment)])
            change = _rehealth(tx, environment, t.watch, t.measurement.at)
            if change is not None:
                changes[t.analysis_id, t.check] = change
        return changes

    def prune_health(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` health-watch measurements taken before ``before``; returns how
        many. A verification's measurements stay with their run (they are its evidence), and a
        check's latest state and reasons live on its own row, not in these."""
        with self.store.transaction() as tx:
            conn = tx.conn
            ids = list(
                conn.execute(
                    sa.select(M.id)
                    .where(M.analysis_id.like("health:%"), M.at < before)
                    .order_by(M.id)
                    .limit(limit)
                ).scalars()
            )
            if ids:
                conn.execute(sa.delete(MEASUREMENT).where(M.id.in_(ids)))
            return len(ids)

    def release(self, holder: str) -> int:
        """Let go of every check ``holder`` holds (a clean stop), so others need not wait for
        its leases to run out; returns how many."""
        with self.store.transaction() as tx:
            done = tx.conn.execute(
                sa.update(CHECK).where(C.holder == holder).values(holder=None, lease_until=None)
            )
            return int(done.rowcount)

    def end(self, analysis_id: str, status: AnalysisStatus, reason: str, by: str, now: datetime) -> bool:
        """End a running analysis; False if it had ended already (``end``)."""
        with self.store.transaction() as tx:
            return end(tx.conn, analysis_id, status, reason, by, now)

    def past_deadline(self, now: datetime, limit: int = 100) -> list[tuple[Analysis, dict[str, CheckTally]]]:
        """Running verifications (and canary steps' analyses) whose deadline has come, with their
        tallies: their verdict is due even if no measurement comes to trigger it. One with a
        check held for measuring (due before the deadline, under way past it) waits for that
        measurement, which is judged when it is recorded: the verdict counts it (or the holder's
        lease lapses)."""
        measuring = sa.exists().where(C.analysis_id == A.id, C.holder.is_not(None), C.lease_until >= now)
        query = (
            sa.select(ANALYSIS)
            .where(
                A.status == AnalysisStatus.RUNNING.value,
                A.kind != AnalysisKind.HEALTH.value,
                A.deadline <= now,
                ~measuring,
            )
            .order_by(A.deadline)
            .limit(limit)
        )
        with self.store.reading() as tx:
            return [
                (_analysis(r), tallies(tx.conn, r["id"])) for r in tx.conn.execute(query).mappings().all()
            ]

    def unfinished(self) -> bool:
        """Is a verification (or a canary step's analysis) still running? Then it must be judged
        even where no check is configured any more (a restart after removing them all)."""
        query = sa.select(A.id).where(
            A.status == AnalysisStatus.RUNNING.value, A.kind != AnalysisKind.HEALTH.value
        )
        with self.store.reading() as tx:
            return tx.conn.execute(query.limit(1)).first() is not None

    # -- reads ----------------------------------------------------------------------------------
    def analysis(self, analysis_id: str) -> tuple[Analysis, dict[str, CheckTally]] | None:
        with self.store.reading() as tx:
            row = tx.conn.execute(sa.select(ANALYSIS).where(A.id == analysis_id)).mappings().first()
            return None if row is None else (_analysis(row), tallies(tx.conn, analysis_id))

    def measurements(self, analysis_id: str, limit: int = 500) -> list[Measurement]:
        """An analysis' latest ``limit`` measurements (those that decided it), oldest first."""
        query = (
            sa.select(MEASUREMENT)
            .where(M.analysis_id == analysis_id)
            .order_by(M.at.desc(), M.id.desc())
            .limit(limit)
        )
        with self.store.reading() as tx:
            return [_measurement(r) for r in tx.conn.execute(query).mappings()][::-1]

    def of_run(self, run_id: str) -> list[Analysis]:
        """A run's verifications, oldest first."""
        query = sa.select(ANALYSIS).where(A.run_id == run_id).order_by(A.started_at, A.id)
        with self.store.reading() as tx:
            return [_analysis(r) for r in tx.conn.execute(query).mappings()]

    def health(self, environment: str) -> EnvironmentHealth | None:
        with self.store.reading() as tx:
            return health_now(tx.conn, environment)

    def healths(self) -> dict[str, EnvironmentHealth]:
        """Every environment's health (``/deploy envs``, the App Home)."""
        with self.store.reading() as tx:
            return {r["environment"]: _health(r) for r in tx.conn.execute(sa.select(HEALTH)).mappings()}

    def recent(
        self, environment: str, checks: Sequence[str], per_check: int = 5
    ) -> dict[str, list[Measurement]]:
        """Each check's latest health measurements in ``environment``, newest first."""
        with self.store.reading() as tx:
            return recent(tx.conn, environment, checks, per_check, health_analysis_id(environment))

    def health_page(
        self, environment: str, before: int | None = None, limit: int = 50
    ) -> tuple[EnvironmentHealth | None, list[HealthChange]]:
        """``environment``'s health and a page of its changes (``history``), read in one
        statement so the two agree."""
        changes = sa.select(CHANGE).where(CHANGE.c.environment == environment)
        if before is not None:
            changes = changes.where(CHANGE.c.id < before)
        page = changes.order_by(CHANGE.c.id.desc()).limit(limit).subquery()
        query = (
            sa.select(HEALTH, *[c.label(f"c_{c.name}") for c in page.c])
            .select_from(HEALTH.outerjoin(page, sa.true()))
            .where(HEALTH.c.environment == environment)
            .order_by(page.c.id.desc())
        )
        with self.store.reading() as tx:
            rows = tx.conn.execute(query).mappings().all()
        if not rows:
            return None, []
        found = [
            _change({k.removeprefix("c_"): v for k, v in r.items() if k.startswith("c_")})
            for r in rows
            if r["c_id"] is not None
        ]
        return _health(rows[0]), found

    def history(self, environment: str, before: int | None = None, limit: int = 50) -> list[HealthChange]:
        """``environment``'s health changes, newest first; ``before``: older than this change id."""
        query = (
            sa.select(CHANGE)
            .where(CHANGE.c.environment == environment)
            .order_by(CHANGE.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(CHANGE.c.id < before)
        with self.store.reading() as tx:
            return [_change(r) for r in tx.conn.execute(query).mappings()]
