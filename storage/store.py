"""``SqlStore``: the engine's ``Store`` port on SQLAlchemy Core, for SQLite and PostgreSQL.

Every write is conditional. Status changes carry the status the row must still have (and,
for jobs, the attempt that fences a runner's writes); the run row carries a version that
each accepted command bumps with a compare-and-set. A row that does not match raises
``Conflict`` and the service decides again on fresh state.

On PostgreSQL, work is claimed with ``FOR UPDATE SKIP LOCKED`` and events are appended under a
transaction-level advisory lock, so sequence numbers become visible in commit order and a
reader following the log by cursor never skips one. SQLite has a single writer
(``BEGIN IMMEDIATE``), which gives both for free.

Decoded runs are cached by id; a cached copy is used only after checking, inside the same
transaction, that the row's version has not moved. Anything that changes a run's parts
(commands, claims) bumps that version.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from core.access import Grant
from core.analysis import Analysis, AnalysisKind, AnalysisStatus, EnvironmentHealth
from core.artifacts import Artifact, ArtifactSpec
from core.audit import entry_hash
from core.checks import VerifyPolicy
from core.commands import ReportTarget
from core.definition import PipelineDef
from core.engine import Change
from core.errors import CommandRefused, Conflict
from core.events import Event
from core.locks import LockAction, after_rollback
from core.locks import changed as lock_changed
from core.locks import describe as describe_lock
from core.model import Gate, Job, Run, RunState, evolve
from core.ports import AuditEntry, Deployment, LogChunk, PipelineVersion
from core.review import Review
from core.states import JobStatus, LockState
from storage import db, mappers, wakeups
from storage.db import is_sqlite, make_engine, unreachable
from storage.fastpath import COPY_FROM_ROWS, DriverStatements, pipelined
from storage.queries import Q
from storage.tables import T

_SCHEDULE = T["schedule"]
log = logging.getLogger(__name__)

#: what a store tells of each commit that appended events (``SqlStore.observers``)
Observer = Callable[[Sequence[Event], Mapping[str, RunState]], None]

EVENT_KEYS = ("name", "run_id", "subject", "subject_id", "from_status", "to_status", "at", "data")
AUDIT_KEYS = (
    "at",
    "actor",
    "channel",
    "action",
    "target",
    "outcome",
    "reason",
    "detail",
    "prev_hash",
    "hash",
)
DEPLOYMENT_KEYS = (
    "environment",
    "pipeline",
    "run_id",
    "run_number",
    "stage",
    "status",
    "revision",
    "parameters",
    "triggered_by",
    "started_at",
    "finished_at",
    "artifact_id",
    "artifact",
    "kind",
    "verification",
    "revision_time",
)
#: advisory lock key that orders event appends on PostgreSQL
EVENT_LOCK = 0x5348_4950_4556
#: log chunks read at a time (``SqlStore.log_pages``): a chunk is at most a runner's request
#: (256 KiB), so a page is a few MiB at most
LOG_PAGE = 16
#: the characters of a run id (``uuid4().hex``): a reference with any other is no id prefix
_HEX = frozenset("0123456789abcdef")


class SqlStore:
    def __init__(
        self, url: str, *, engine: Engine | None = None, pool_size: int = 5, cache_size: int = 5000
    ) -> None:
        self.url = url
        self.engine = engine or make_engine(url, pool_size=pool_size)
        self.sqlite = is_sqlite(url)
        #: how long a SQLite transaction waits for another process's write lock (``storage.db``)
        self.busy_timeout_s = db.BUSY_TIMEOUT_MS / 1000 if self.sqlite else None
        self.max_workers = 1 if self.sqlite else pool_size
        self.cache_size = cache_size
        self._versions: dict[str, PipelineVersion] = {}
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.driver = DriverStatements(self.engine.dialect)
        #: this store's name in the ready-job notifications it sends (``storage.wakeups``): its
        #: own process acted on them already and skips them
        self.wakeup_id = uuid.uuid4().hex
        #: called after each commit that appended events, with those events and the runs the
        #: transaction wrote as they now stand (the one place every committed transition passes:
        #: the metrics count there). Called on the committing thread; must be quick, never raise.
        self.observers: list[Observer] = []

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        """One transaction. Events are written last, so the event-log lock is always the last
        lock taken. Deadlocks, serialization failures and a busy SQLite become ``Conflict``:
        the caller decides again on fresh state. A SQLite that stayed busy for its whole busy
        timeout is not a race but another process holding the database: that error stands
        (``unreachable`` says so)."""
        started = time.monotonic()
        try:
            with self.engine.begin() as conn:
                tx = SqlTx(self, conn)
                yield tx
                tx.flush()
        except (Conflict, CommandRefused):
            raise
        except Exception as exc:  # also raw driver errors: the fast path and BEGIN bypass SQLAlchemy
            if _retryable(exc) and not self._waited_out(started):
                self._runs.clear()
                raise Conflict(f"transaction lost a race: {getattr(exc, 'orig', exc)}") from exc
            raise
        for hook in tx.on_commit:
            hook()
        if tx.committed_events and self.observers:
            self._tell(tx.committed_events, tx._written)

    def _tell(self, events: Sequence[Event], runs: Mapping[str, RunState]) -> None:
        for observer in self.observers:
            try:
                observer(events, runs)
            except Exception:  # an observer's bug must not look like a failed commit
                log.exception("a commit observer failed")

    def _waited_out(self, started: float) -> bool:
        return self.busy_timeout_s is not None and time.monotonic() - started >= self.busy_timeout_s

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(readonly=True)
            with conn.begin():
                yield conn

    @contextmanager
    def reading(self) -> Iterator[SqlTx]:
        """A read-only transaction (on SQLite it does not take the write lock). Runs it loads
        go into the cache, so the next read of an unchanged run costs one version query."""
        with self._read() as conn:
            tx = SqlTx(self, conn)
            yield tx
        for hook in tx.on_commit:
            hook()

    def append_audit(self, entry: AuditEntry) -> None:
        """An audit entry on its own (requests refused before they became a command)."""
        with self.transaction() as tx:
            tx.audit(entry)

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise if the database does not answer."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def unreachable(self, exc: BaseException) -> str | None:
        """Why ``exc`` means the database could not be reached, or None (``storage.db.unreachable``)."""
        return unreachable(exc)

    def forget(self, run_id: str) -> None:
        """Drop a run from the cache (after a conflict its copy may be stale)."""
        with self._cache_lock:
            self._runs.pop(run_id, None)

    def remember(self, state: RunState) -> None:
        """Cache a run as read or written. Readers on other threads call this too; an older
        copy never replaces a newer one."""
        with self._cache_lock:
            cached = self._runs.get(state.run.id)
            if cached is not None and cached.run.version > state.run.version:
                return
            self._runs[state.run.id] = state
            self._runs.move_to_end(state.run.id)
            while len(self._runs) > self.cache_size:
                self._runs.popitem(last=False)

    def version(self, version_id: str, conn: Connection) -> PipelineVersion | None:
        """A pipeline version; immutable, so cached forever once read."""
        cached = self._versions.get(version_id)
        if cached is None:
            row = conn.execute(Q.version_by_id, {"id": version_id}).mappings().first()
            if row is None:
                return None
            cached = self._versions[version_id] = mappers.version_from_row(row)
        return cached

    # -- logs -------------------------------------------------------------------------------
    def append_log(self, job_id: str, attempt: int, runner: str, chunks: Sequence[tuple[str, str]]) -> bool:
        """Store output of a job attempt if ``runner`` still holds that attempt (fenced)."""
        with self.engine.begin() as conn:
            held = conn.execute(Q.held_job, {"id": job_id, "attempt": attempt, "runner": runner}).first()
            if held is None:
                return False
            if chunks:
                rows = [{"job_id": job_id, "attempt": attempt, "stream": s, "text": t} for s, t in chunks]
                conn.execute(Q.insert_log, rows)
            return True

    def read_log(self, job_id: str, attempt: int | None = None) -> Iterator[LogChunk]:
        for page in self.log_pages(job_id, attempt):
            yield from page

    def log_pages(
        self, job_id: str, attempt: int | None = None, size: int = LOG_PAGE, after: int = 0
    ) -> Iterator[list[LogChunk]]:
        """An attempt's output (the latest by default) after the chunk ``after``, ``size`` chunks
        at a time, each page read on its own: a big log is never all in memory, and the pages may
        be read on different threads one after another (the REST API streams them)."""
        if attempt is None:
            with self._read() as conn:
                attempt = conn.execute(Q.job_attempt, {"id": job_id}).scalar() or 0
        while True:
            params = {"id": job_id, "attempt": attempt, "after": after, "limit": size}
            with self._read() as conn:
                rows = conn.execute(Q.log_of, params).mappings().all()
            if rows:
                yield [LogChunk(r["job_id"], r["attempt"], r["id"], r["stream"], r["text"]) for r in rows]
            if len(rows) < size:
                return
            after = rows[-1]["id"]

    def tail_log(self, job_id: str, lines: int = 20, attempt: int | None = None) -> list[str]:
        """The last ``lines`` lines of an attempt (the latest by default), reading only the
        last chunks."""
        texts: list[str] = []
        with self._read() as conn:
            if attempt is None:
                attempt = conn.execute(Q.job_attempt, {"id": job_id}).scalar() or 0
            count = 0
            for (text,) in conn.execute(Q.log_tail, {"id": job_id, "attempt": attempt}):
                texts.append(text)
                count += text.count("\n")
                if count > lines:
                    break
        return "".join(reversed(texts)).splitlines()[-lines:]

    def log_tail_start(self, job_id: str, keep: int, attempt: int | None = None) -> tuple[int, int]:
        """Where to start reading an attempt's log (the latest by default) to get its last
        ``keep`` characters or a little more, whole chunks: the chunk to read after (0: from the
        start) and how many characters come before it."""
        with self._read() as conn:
            if attempt is None:
                attempt = conn.execute(Q.job_attempt, {"id": job_id}).scalar() or 0
            kept, start, skipped = 0, 0, 0
            for seq, size in conn.execute(Q.log_sizes, {"id": job_id, "attempt": attempt}):
                if kept >= keep:
                    start = start or seq
                    skipped += size
                else:
                    kept += size
        return start, skipped

    # -- reading ----------------------------------------------------------------------------
    def events_after(self, seq: int, limit: int = 500, run_id: str | None = None) -> list[Event]:
        with self._read() as conn:
            if run_id is None:
                rows = conn.execute(Q.events_after, {"seq": seq, "limit": limit})
            else:
                rows = conn.execute(Q.events_of_run_after, {"seq": seq, "limit": limit, "run": run_id})
            return [mappers.event_from_row(r) for r in rows.mappings()]

    def last_event_seq(self) -> int:
        with self._read() as conn:
            return int(conn.execute(Q.last_seq).scalar() or 0)

    def audit_entries(self, limit: int = 100) -> list[AuditEntry]:
        with self._read() as conn:
            rows = conn.execute(Q.audit_latest, {"limit": limit}).mappings().all()
        return [
            AuditEntry(
                at=r["at"],
                actor=r["actor"],
                channel=r["channel"],
                action=r["action"],
                target=r["target"],
                outcome=r["outcome"],
                reason=r["reason"],
                detail=r["detail"],
            )
            for r in rows
        ]

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunState]:
        with self._read() as conn:
            if pipeline is None:
                ids = conn.execute(Q.recent_runs, {"limit": limit}).scalars().all()
            else:
                ids = conn.execute(Q.recent_runs_of, {"limit": limit, "p": pipeline}).scalars().all()
            tx = SqlTx(self, conn)
            return [s for run_id in ids if (s := tx.load_run(run_id)) is not None]


def _audit_values(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "actor": entry.actor,
        "channel": entry.channel,
        "action": entry.action,
        "target": entry.target,
        "outcome": entry.outcome,
        "reason": entry.reason,
        "detail": entry.detail,
    }


@dataclass
class _Bump:
    """Pending compare-and-set of one run's version within a transaction."""

    expect: int
    count: int = 0
    values: dict[str, Any] = field(default_factory=dict)


def _update_statement(change: Change) -> Any:
    columns = tuple(sorted(change.values))
    return Q.update(change.kind, columns, change.expect_attempt is not None, tuple(sorted(change.guard)))


def _update_params(change: Change) -> dict[str, Any]:
    params = {"_id": change.id, "_status": change.expect, "_attempt": change.expect_attempt}
    params.update(mappers.change_values(change))
    params.update({f"_guard_{k}": v for k, v in change.guard.items()})
    return params


#: deadlock, serialization failure, lock not available, unique violation (a concurrent insert)
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03", "23505"})


def _readies_job(event: Event) -> bool:
    return event.subject == "job" and event.to_status == JobStatus.QUEUED


def _retryable(exc: Exception) -> bool:
    """Whether deciding the command again on fresh state may well succeed."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if isinstance(exc.orig, Exception) else exc
    if getattr(exc, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)


def _patch_jobs(state: RunState, changes: list[Change], version: int) -> RunState:
    by_id = {c.id: c.values for c in changes}
    jobs = tuple(evolve(j, **by_id[j.id]) if j.id in by_id else j for j in state.jobs)
    return evolve(state, jobs=jobs, run=evolve(state.run, version=version))


class SqlTx:
    """One transaction; writes that find a row changed raise ``Conflict``."""

    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self.store = store
        self._conn = conn
        self._pg = not store.sqlite
        self.on_commit: list[Callable[[], None]] = []
        #: runs written in this transaction, as they now stand
        self._written: dict[str, RunState] = {}
        self._events: list[Event] = []
        #: the events written so far (handed to the store's observers once committed)
        self.committed_events: list[Event] = []
        self._audit: list[AuditEntry] = []
        self._bumps: dict[str, _Bump] = {}
        #: current versions read ahead for a batch of commands (one query instead of one each)
        self._versions: dict[str, int] = {}
        self._rows: dict[tuple[str, str], Change] = {}
        #: claimed jobs and their runs' version bumps, sent with the next writes
        self._claimed: list[tuple[Any, dict[str, Any]]] = []
        #: new runs' rows, per statement shape, sent before anything else touches the database
        self._inserts: dict[tuple[Any, tuple[str, ...]], list[dict[str, Any]]] = {}
        #: read ahead for a batch of triggers (``prepare_triggers``): the last run number of each
        #: pipeline, the runs of idempotency keys (None: no run yet), latest versions
        self._numbers: dict[str, int] = {}
        self._keys: dict[tuple[str, str], str | None] = {}
        self._latest: dict[str, PipelineVersion | None] = {}

    @property
    def conn(self) -> Connection:
        """The transaction's connection, with new runs' rows and claims sent first: whatever
        reads or writes next sees them (and their foreign keys hold)."""
        if self._inserts:
            self._send_inserts()
        if self._claimed:
            claimed, self._claimed = self._claimed, []
            self._execute_many(claimed, what="claimed jobs")
        return self._conn

    def _send_inserts(self) -> None:
        inserts, self._inserts = self._inserts, {}
        for (statement, keys), rows in inserts.items():
            self.store.driver.get(statement, keys).execute_many(self._conn, rows)

    def prepare_triggers(self, triggers: Sequence[tuple[str, str | None]]) -> None:
        """Read ahead what a batch of triggers ((pipeline, idempotency key) each) needs, in a few
        statements instead of a few per trigger: on PostgreSQL the pipelines' run-number locks
        (in name order), then their last run numbers, latest versions and the runs the keys
        already made."""
        names = sorted({p for p, _ in triggers} - self._numbers.keys())
        if not names:
            return
        self.flush_writes()  # runs' locks come before pipelines' in the global order
        c = self.conn
        if self._pg:
            c.execute(Q.named_locks, {"ks": ["run-number:" + n for n in names]})
        for name, number, version_id in c.execute(Q.pipelines_ahead, {"ps": names}):
            self._numbers[name] = int(number or 0)
            self._latest[name] = self.store.version(version_id, c) if version_id else None
        for name in names:
            self._numbers.setdefault(name, 0)
            self._latest.setdefault(name, None)
        keys = sorted({(p, k) for p, k in triggers if k is not None and p in names})
        if keys:
            self._keys.update(dict.fromkeys(keys))
            for name, key, run_id in c.execute(Q.runs_by_keys, {"pk": keys}):
                self._keys[(name, key)] = run_id

    # -- runs -------------------------------------------------------------------------------
    def load_run(self, run_id: str) -> RunState | None:
        if run_id in self._written:
            return self._written[run_id]
        c = self.conn
        cached = self.store._runs.get(run_id)
        if cached is not None:
            current = self._versions.pop(run_id, None)
            if current is None:
                found = self.store.driver.get(Q.run_version).fetch_all(c, {"id": run_id})
                current = found[0][0] if found else None
            if current == cached.run.version:
                return cached
        fetch = self.store.driver.get
        rows = fetch(Q.run_by_id).fetch_mappings(c, {"id": run_id})
        if not rows:
            return None
        row = rows[0]
        run = mappers.run_from_row(row)
        version = self.store.version(run.version_id, c)
        assert version is not None, f"run {run_id} points at a missing pipeline version"
        stages = tuple(
            mappers.stage_from_row(r) for r in fetch(Q.stages_of).fetch_mappings(c, {"id": run_id})
        )
        jobs = tuple(mappers.job_from_row(r) for r in fetch(Q.jobs_of).fetch_mappings(c, {"id": run_id}))
        gates: tuple[Gate, ...] = ()
        # (environments' rules add gates to deploy stages, so those may have one too)
        if any(s.gate is not None or s.environment is not None for s in version.definition.stages):
            gates = tuple(
                mappers.gate_from_row(r) for r in fetch(Q.gates_of).fetch_mappings(c, {"id": run_id})
            )
        state = RunState(run, stages, jobs, gates, version.definition)
        self.on_commit.append(lambda: self.store.remember(state))
        return state

    def read_versions(self, run_ids: Sequence[str]) -> None:
        """Read the current versions of several runs at once, for the loads that follow."""
        wanted = [r for r in run_ids if r in self.store._runs and r not in self._written]
        if wanted:
            params = {f"id{i}": run_id for i, run_id in enumerate(wanted)}
            rows = self.store.driver.get(Q.run_versions(len(wanted))).fetch_all(self.conn, params)
            self._versions.update((run_id, version) for run_id, version in rows)

    def find_run(self, ref: str) -> RunState | None:
        """A run by id, by ``pipeline#number``, or by a unique id prefix of 6+ characters."""
        ref = ref.strip()
        if "#" in ref:
            pipeline, _, number = ref.partition("#")
            if not (number.isascii() and number.isdigit()) or len(number) > 9:
                return None
            run_id = self.conn.execute(Q.run_by_number, {"p": pipeline, "n": int(number)}).scalar()
            return self.load_run(run_id) if run_id else None
        state = self.load_run(ref)
        prefix = ref.lower()
        if state is None and len(prefix) >= 6 and set(prefix) <= _HEX:  # run ids are hex
            ids = self.conn.execute(Q.runs_by_prefix, {"low": prefix, "high": prefix + "g"}).scalars().all()
            if len(ids) == 1:
                return self.load_run(ids[0])
        return state

    def retried_as(self, run_id: str) -> str | None:
        found = self.conn.execute(Q.retry_of_run, {"id": run_id}).first()  # (``conn``: ours too)
        return f"{found[0]}#{found[1]}" if found is not None else None

    def run_by_idempotency_key(self, pipeline: str, key: str) -> RunState | None:
        if (pipeline, key) in self._keys:
            run_id = self._keys[(pipeline, key)]
        else:
            run_id = self.conn.execute(Q.run_by_key, {"p": pipeline, "k": key}).scalar()
        return self.load_run(run_id) if run_id else None

    def schedule_changed(self, schedule_id: str, version: int) -> str | None:
        self.flush_writes()
        schedule = _SCHEDULE
        query = sa.select(schedule.c.version, schedule.c.deleted_at, schedule.c.paused_reason).where(
            schedule.c.id == schedule_id
        )
        if self._pg:  # (a delete or pause waits for this commit: it comes after the fire)
            query = query.with_for_update(read=True)
        row = self.conn.execute(query).first()
        if row is None or row.deleted_at is not None:
            return f"schedule {schedule_id} was removed"
        if row.paused_reason is not None:
            return f"schedule {schedule_id} is paused: {row.paused_reason}"
        if row.version != version:
            return f"schedule {schedule_id} was changed since this fire was read"
        return None

    def next_run_number(self, pipeline: str) -> int:
        if pipeline in self._numbers:  # its lock is held since ``prepare_triggers``
            return self._numbers[pipeline] + 1
        self.flush_writes()
        if self._pg:
            self.conn.execute(Q.named_lock, {"k": "run-number:" + pipeline})
        ((current,),) = self.store.driver.get(Q.max_number).fetch_all(self.conn, {"p": pipeline})
        return int(current or 0) + 1

    def insert_run(self, state: RunState, report_to: ReportTarget | None = None) -> None:
        """Insert a new run; ``report_to``: where it reports in Slack, written with it so that
        the notifier never finds the run without knowing where it goes."""
        routed: list[dict[str, Any]] = []
        if report_to is not None:
            routed.append(
                {
                    "run_id": state.run.id,
                    "channel": report_to.channel,
                    "thread": report_to.thread,
                    "created_at": state.run.created_at,
                }
            )
        for statement, rows in (
            (Q.insert_run, [mappers.row_values(state.run)]),
            (Q.insert_stage, [mappers.row_values(s) for s in state.stages]),
            (Q.insert_job, [mappers.row_values(j) for j in state.jobs]),
            (Q.insert_gate, [mappers.row_values(g) for g in state.gates]),
            (Q.insert_slack_message, routed),
        ):
            if rows:
                self._inserts.setdefault((statement, tuple(rows[0])), []).extend(rows)
        run = state.run
        if run.pipeline in self._numbers:
            self._numbers[run.pipeline] = run.number
        if run.idempotency_key is not None:
            self._keys[(run.pipeline, run.idempotency_key)] = run.id
        self._written[state.run.id] = state
        self.on_commit.append(lambda: self.store.remember(state))

    def apply(self, state: RunState, expect_version: int, changes: Sequence[Change]) -> None:
        """Record ``changes`` to be written at commit, conditional on the run still being at
        ``expect_version`` and each row still having the status it was read with; ``state`` is
        the result. Writes are deferred so that a group commit sends one statement per shape
        (``executemany``); a row that no longer matches raises ``Conflict`` at commit."""
        run_id = state.run.id
        bump = self._bumps.get(run_id)
        if bump is None:
            bump = self._bumps[run_id] = _Bump(expect_version)
        elif bump.expect + bump.count != expect_version:
            raise Conflict(f"run {run_id} was decided on twice from version {expect_version}")
        bump.count += 1
        for change in changes:
            if change.kind == "run":
                bump.values.update(mappers.change_values(change))
                continue
            pending = self._rows.get((change.kind, change.id))
            if pending is None:
                self._rows[(change.kind, change.id)] = Change(
                    change.kind,
                    change.id,
                    change.expect,
                    dict(change.values),
                    change.expect_attempt,
                    change.guard,
                )
            else:
                pending.values.update(change.values)  # keeps the first expectation: the row as read
        saved = evolve(state, run=evolve(state.run, version=bump.expect + bump.count))
        self._written[run_id] = saved
        self.on_commit.append(lambda: self.store.remember(saved))

    def apply_claims(self, claims: Sequence[Change], run_versions: dict[str, int]) -> None:
        """Apply claims on rows this transaction holds (SKIP LOCKED on PostgreSQL, the write lock
        on SQLite) and bump each run's version, so cached copies and concurrent deciders see the
        jobs move. The writes go with the transaction's next ones (the next claim's read, or
        the last flush): they cannot fail on rows held."""
        if not claims:
            return
        self._claimed.extend((_update_statement(c), _update_params(c)) for c in claims)
        runs = sorted({c.id.split(".", 1)[0] for c in claims})
        for run_id in runs:  # read before the bump: must not vouch for a cached copy any more
            self._versions.pop(run_id, None)
        bumps = [{"_id": r, "_version": run_versions[r], "_new_version": run_versions[r] + 1} for r in runs]
        self._claimed.extend((Q.bump_run(()), b) for b in bumps)
        for run_id in runs:
            cached = self._written.get(run_id) or self.store._runs.get(run_id)
            if cached is not None and cached.run.version == run_versions[run_id]:
                mine = [c for c in claims if c.id.startswith(run_id + ".")]
                patched = _patch_jobs(cached, mine, run_versions[run_id] + 1)
                self._written[run_id] = patched
                self.on_commit.append(lambda p=patched: self.store.remember(p))  # type: ignore[misc]
            else:
                self._written.pop(run_id, None)
                self.store.forget(run_id)

    def flush_writes(self) -> None:
        """Send the deferred writes: run versions first (in id order, the global lock order),
        then the rows, one ``executemany`` per statement shape (new runs' rows before all)."""
        self._send_inserts()
        self._execute_many(self._take_decided(), what="decided changes")

    def _take_decided(self) -> list[tuple[Any, dict[str, Any]]]:
        work: list[tuple[Any, dict[str, Any]]] = []
        for run_id in sorted(self._bumps):
            bump = self._bumps[run_id]
            params = {"_id": run_id, "_version": bump.expect, "_new_version": bump.expect + bump.count}
            work.append((Q.bump_run(tuple(sorted(bump.values))), {**params, **bump.values}))
        for key in sorted(self._rows):
            change = self._rows[key]
            work.append((_update_statement(change), _update_params(change)))
        work.extend(self._claimed)  # (rows this transaction holds already)
        self._bumps, self._rows, self._claimed = {}, {}, []
        return work

    def _execute_many(self, work: list[tuple[Any, dict[str, Any]]], what: str) -> None:
        """Conditional writes, one ``executemany`` per statement shape, all in one round trip
        on PostgreSQL; a row that no longer matched raises ``Conflict``."""
        with pipelined(self.conn):
            sent = self._send_many(work)
        self._check(sent, what)

    def _send_many(
        self, work: list[tuple[Any, dict[str, Any]]]
    ) -> list[tuple[Callable[[], int], list[dict[str, Any]]]]:
        groups: dict[Any, list[dict[str, Any]]] = {}
        for stmt, params in work:
            groups.setdefault(stmt, []).append(params)
        driver = self.store.driver
        return [
            (driver.get(stmt).send_many(self._conn, rows, copy=False), rows) for stmt, rows in groups.items()
        ]

    def _check(self, sent: list[tuple[Callable[[], int], list[dict[str, Any]]]], what: str) -> None:
        counted = [(rows, matched()) for matched, rows in sent]  # (each closes its cursor)
        missed = [(rows, len(rows) - matched) for rows, matched in counted if matched != len(rows)]
        if missed:
            for params in (p for rows, _ in missed for p in rows):
                self.store.forget(str(params["_id"]).split(".", 1)[0])
            raise Conflict(f"{what}: {sum(n for _, n in missed)} row(s) changed since they were read")

    def append_events(self, events: Sequence[Event]) -> None:
        """Queue events; they are written when the transaction is about to commit."""
        self._events.extend(events)

    def flush(self) -> None:
        """The transaction's last writes: the decided changes, then the audit entries and
        events (so the event-log lock is the last lock taken). On PostgreSQL two round trips:
        the changes with the lock and the audit chain's head, then the appends."""
        self._send_inserts()
        work = self._take_decided()
        if not self._events and not self._audit:
            if work:
                self._execute_many(work, what="decided changes")
            return
        from storage import audit_head as head

        driver, conn = self.store.driver, self._conn
        with pipelined(conn):
            sent = self._send_many(work)
            # orders event sequence numbers and the audit chain alike
            locked = driver.get(Q.event_lock).send(conn, {"k": EVENT_LOCK}) if self._pg else None
            heads = driver.get(head.read).send(conn, {}) if self._audit else None
        self._check(sent, "decided changes")
        if locked is not None:
            locked()
        appended: list[Callable[[], object]] = []
        with pipelined(conn):
            if heads is not None:
                appended.extend(self._send_audit(heads()))
            rows = [mappers.event_values(e) for e in self._events]
            many = len(rows) >= COPY_FROM_ROWS  # (by COPY after the pipeline: it cannot be in one)
            if rows and not many:
                appended.append(driver.get(Q.insert_event, EVENT_KEYS).send_many(conn, rows, copy=False))
            if self._pg and any(_readies_job(e) for e in self._events):
                # delivered to the other replicas if and when this transaction commits (``storage.wakeups``)
                params = {"channel": wakeups.CHANNEL, "sender": self.store.wakeup_id}
                appended.append(driver.get(Q.notify_jobs).send(conn, params))
        for result in appended:
            result()
        if many:
            driver.get(Q.insert_event, EVENT_KEYS).execute_many(conn, rows)
        self.committed_events.extend(self._events)
        self._events = []

    def _send_audit(self, heads: list[tuple[Any, ...]]) -> list[Callable[[], object]]:
        """Link the queued audit entries to the chain's head (``storage.audit_head``) and send
        them with the head's move; a missing head row starts again from the last entry."""
        from storage import audit_head as head

        driver, conn = self.store.driver, self._conn
        if heads:
            prev = heads[0][0]
        else:
            prev = driver.get(Q.audit_last_hash).send(conn, {})()
            prev = prev[0][0] if prev else ""
        rows = []
        for entry in self._audit:
            digest = entry_hash(prev, entry)
            rows.append({**_audit_values(entry), "prev_hash": prev, "hash": digest})
            prev = digest
        self._audit = []
        moved = {"h": prev, "n": len(rows)}
        inserted = driver.get(Q.insert_audit, AUDIT_KEYS).send_many(conn, rows, copy=False)
        # (after the entries: the head reads the newest id)
        moving = driver.get(head.move if heads else head.start).send_many(conn, [moved], copy=False)

        def moved_or_started() -> None:
            if not moving() and heads:  # (the row was deleted since it was read)
                driver.get(head.start).execute_many(conn, [moved])

        return [inserted, moved_or_started]

    def audit(self, entry: AuditEntry) -> None:
        """Queue an audit entry; written with the events when the transaction commits."""
        self._audit.append(replace(entry, detail=mappers.jsonable(entry.detail)))

    # -- work -------------------------------------------------------------------------------
    def claimable_jobs(
        self, limit: int, runner: str = "", labels: Sequence[str] = ()
    ) -> list[tuple[str, str, int]]:
        """Queued jobs ``runner`` may take (it carries all their labels and is not draining),
        oldest first, as (job id, run id, run version). The versions also serve the loads that
        follow, so a cached run costs no further query."""
        query = Q.claimable_pg if self._pg else Q.claimable
        params = {"limit": limit, "runner": runner, "labels": json.dumps(sorted(set(labels)))}
        self._send_inserts()
        conn, work = self._conn, self._take_decided()
        with pipelined(conn):  # what this transaction decided and claimed so far, then the read
            sent = self._send_many(work)
            found = self.store.driver.get(query).send(conn, params)
        self._check(sent, "decided changes")
        rows = found()
        self._versions.update((run_id, version) for _, run_id, version in rows)
        return [(job_id, run_id, version) for job_id, run_id, version in rows]

    def renew_lease(self, runner: str, job_id: str, attempt: int, until: datetime) -> bool:
        params = {"_id": job_id, "_attempt": attempt, "_runner": runner, "until": until}
        return bool(self.conn.execute(Q.renew, params).rowcount == 1)

    def expired_leases(self, now: datetime, limit: int) -> list[Job]:
        return [
            mappers.job_from_row(r)
            for r in self.conn.execute(Q.expired, {"now": now, "limit": limit}).mappings()
        ]

    def held_attempts(self, runner: str, held: Sequence[tuple[str, int]]) -> set[str]:
        attempts = dict(held)
        rows = self.conn.execute(Q.attempts_of, {"ids": list(attempts), "runner": runner}).all()
        return {job_id for job_id, attempt in rows if attempts.get(job_id) == attempt}

    def runs_going_on(self, run_ids: Sequence[str]) -> set[str]:
        return set(self.conn.execute(Q.going_on, {"ids": list(run_ids)}).scalars())

    def jobs_held_by(self, runner: str) -> list[Job]:
        return [mappers.job_from_row(r) for r in self.conn.execute(Q.held_by, {"runner": runner}).mappings()]

    def in_flight(self) -> bool:
        return bool(self.conn.execute(Q.in_flight).scalar())

    def overdue_runs(self, now: datetime, limit: int) -> list[str]:
        return list(self.conn.execute(Q.overdue_runs, {"now": now, "limit": limit}).scalars())

    def environment_queue(
        self, env: str, limit: int | None = None
    ) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
        running = self.conn.execute(Q.environment_running, {"env": env}).first()
        busy = (running[0], f"{running[1]}#{running[2]}") if running is not None else None
        query = Q.environment_queued if limit is None else Q.environment_queued.limit(limit)
        queued = [(r, f"{p}#{n}") for r, p, n in self.conn.execute(query, {"env": env})]
        return busy, queued

    def queue_head_at(self, state: RunState) -> datetime | None:
        env = next((s.environment for s in state.stages if s.status == "queued"), None)
        if env is None:
            return None
        found: datetime | None = self.conn.execute(Q.queue_head_at, {"env": env}).scalar()
        return found

    def queued_environments(self) -> list[str]:
        return list(self.conn.execute(Q.queued_environments).scalars())

    def environment_lock(self, env: str, now: datetime) -> str | None:
        from storage.locks import current_lock

        lock = current_lock(self.conn, env, now)
        return describe_lock(lock, now) if lock is not None else None

    def live_pools(self, env: str) -> dict[str, str]:
        from storage.rollouts import live_pools

        return live_pools(self.conn, env)

    def set_live_pool(self, env: str, router: str, pool: str, now: datetime) -> None:
        from storage.rollouts import set_live_pool

        set_live_pool(self.conn, env, router, pool, now)

    def sealed_secrets(self, env: str) -> dict[str, str]:
        from storage.secrets import sealed_secrets

        return sealed_secrets(self.conn, env)

    def environment_health(self, env: str) -> EnvironmentHealth | None:
        from storage import analyses

        return analyses.health_now(self.conn, env)

    def open_review(self, review: Review) -> None:
        from storage import reviews

        reviews.insert(self, review)

    def start_analysis(
        self,
        analysis_id: str,
        environment: str,
        run_id: str,
        stage_index: int,
        policy: VerifyPolicy,
        now: datetime,
        kind: AnalysisKind = AnalysisKind.VERIFY,
    ) -> Analysis:
        """Start verifying a run's deployment (or measuring a canary step) in this transaction
        (``storage.analyses.start``)."""
        from storage import analyses

        return analyses.start(
            self,
            analysis_id=analysis_id,
            environment=environment,
            run_id=run_id,
            stage_index=stage_index,
            policy=policy,
            now=now,
            kind=kind,
        )

    def end_analysis(
        self, analysis_id: str, status: AnalysisStatus, reason: str, by: str, now: datetime
    ) -> bool:
        """End a running analysis in this transaction; False if it had ended already."""
        from storage import analyses

        return analyses.end(self.conn, analysis_id, status, reason, by, now)

    def lock_after_rollback(self, env: str, reason: str, now: datetime) -> LockAction | None:
        """Hold ``env`` after a rollback until someone acknowledges it (``core.locks.after_rollback``):
        ``ACQUIRE`` when it was free, ``RELOCK`` when a manual lock became the rollback lock,
        None when a rollback lock holds already (that lock stays)."""
        from storage.locks import _get as lock_row
        from storage.locks import _values as lock_values
        from storage.locks import current_lock, taken_over

        current = current_lock(self.conn, env, now)
        lock = after_rollback(current, env, reason, now)
        if lock is None:
            return None
        if current is not None:  # conditional on the lock read, so one taken since decides again
            read = {"env": env, "held_by": current.holder, "held_since": current.since, "why": lock.reason}
            if self.conn.execute(Q.relock_after_rollback, read).rowcount != 1:
                raise Conflict(f"the lock on {env} changed while a rollback locked it")
            self.append_events([lock_changed(LockAction.RELOCK, lock, "shipyard", now, LockState.HELD)])
            return LockAction.RELOCK
        expired = lock_row(self.conn, env)  # (one ran out that the keeper has not swept yet)
        swept = self.conn.execute(Q.delete_expired_lock, {"env": env, "now": now}).rowcount
        self.conn.execute(Q.insert_lock, [lock_values(lock)])
        was = LockState.EXPIRED if swept else LockState.FREE
        replaced = taken_over(self, expired, now) if swept and expired is not None else None
        self.append_events([lock_changed(LockAction.ACQUIRE, lock, "shipyard", now, was, took_over=replaced)])
        return LockAction.ACQUIRE

    def register_artifact(self, spec: ArtifactSpec, run: Run, now: datetime) -> Artifact:
        from storage import artifacts  # (it builds on this module)

        artifact, _ = artifacts.register(
            self, spec, run_id=run.id, pipeline=run.pipeline, by=run.triggered_by, now=now
        )
        return artifact

    def artifact(self, ref: str) -> Artifact | None:
        from storage import artifacts

        return artifacts.find(self.conn, ref)

    def deployments_to(self, env: str, limit: int) -> list[Deployment]:
        from storage.reads import deployment_from_row

        rows = self.conn.execute(Q.deployments_to, {"env": env, "limit": limit}).mappings()
        return [deployment_from_row(r) for r in rows]

    def deployed_ok(self, artifact_id: str, env: str) -> bool:
        return self.conn.execute(Q.deployed_ok, {"a": artifact_id, "env": env}).first() is not None

    def newest_artifact_of(self, pipeline: str) -> Artifact | None:
        from storage import artifacts

        return artifacts.newest_of(self.conn, pipeline)

    def artifacts_of_run(self, run_id: str) -> list[Artifact]:
        from storage import artifacts

        return artifacts.of_run(self.conn, run_id)

    def due_gates(self, now: datetime, limit: int) -> list[Gate]:
        query = Q.due_gates_pg if self._pg else Q.due_gates
        return [
            mappers.gate_from_row(r)
            for r in self.conn.execute(query, {"now": now, "limit": limit}).mappings()
        ]

    def claim_gate_check(self, gate: Gate, until: datetime) -> bool:
        """Take the next poll of an automated gate by moving its next check time (a CAS)."""
        params = {"_id": gate.id, "_expect": gate.next_check_at, "_until": until}
        return bool(self.conn.execute(Q.claim_gate_check, params).rowcount == 1)

    # -- pipelines --------------------------------------------------------------------------
    def latest_version(self, pipeline: str) -> PipelineVersion | None:
        if pipeline in self._latest:
            return self._latest[pipeline]
        found = self.store.driver.get(Q.latest_version).fetch_all(self.conn, {"p": pipeline})
        version_id = found[0][0] if found else None
        return self.store.version(version_id, self.conn) if version_id else None

    def version_by_id(self, version_id: str) -> PipelineVersion | None:
        return self.store.version(version_id, self.conn)

    def version_by_number(self, pipeline: str, number: int) -> PipelineVersion | None:
        found = self.conn.execute(Q.version_by_number, {"p": pipeline, "n": number}).scalar()
        return self.store.version(found, self.conn) if found else None

    def set_archived(self, pipeline: str, archived: bool) -> bool:
        self._latest.pop(pipeline, None)
        return bool(self.conn.execute(Q.archive if archived else Q.unarchive, {"p": pipeline}).rowcount == 1)

    def is_archived(self, pipeline: str) -> bool | None:
        return self.conn.execute(Q.pipeline_archived, {"p": pipeline}).scalar()

    def add_version(
        self, definition: PipelineDef, source: str, source_path: str | None, now: datetime
    ) -> tuple[PipelineVersion, bool]:
        """Record ``definition`` as the pipeline's next version unless it equals the latest."""
        c, name = self.conn, definition.name
        self._latest.pop(name, None)
        if self._pg:
            c.execute(Q.named_lock, {"k": "pipeline:" + name})
        if c.execute(Q.pipeline_exists, {"p": name}).first() is None:
            c.execute(Q.insert_pipeline, [{"name": name, "archived": False, "created_at": now}])
        latest = c.execute(Q.latest_version_row, {"p": name}).mappings().first()
        digest = definition.digest()
        if latest is not None and latest["digest"] == digest:
            found = self.store.version(latest["id"], c)
            assert found is not None
            return found, False
        c.execute(Q.unarchive, {"p": name})  # new content brings an archived pipeline back
        version = PipelineVersion(
            id=uuid.uuid4().hex,
            pipeline=name,
            version=(latest["version"] + 1) if latest else 1,
            digest=digest,
            definition=definition,
            source=source,
            source_path=source_path,
            created_at=now,
        )
        c.execute(
            Q.insert_version,
            [
                {
                    "id": version.id,
                    "pipeline": name,
                    "version": version.version,
                    "digest": digest,
                    "definition": definition.model_dump(mode="json"),
                    "source": source,
                    "source_path": source_path,
                    "created_at": now,
                }
            ],
        )
        return version, True

    def pipeline_names(self) -> list[str]:
        return list(self.conn.execute(Q.pipeline_names).scalars())

    # -- access and deployments -------------------------------------------------------------
    def grants_of(self, principal: str) -> list[Grant]:
        """The principal's grants, those of every group it was ever in and of the groups those
        were in (a Slack user group put in an access group: ``Principal.from_grants``)."""
        rows = list(self.conn.execute(Q.grants_of, {"p": principal}).mappings())
        seen = {principal}
        for _ in range(2):
            groups = sorted({r["value"] for r in rows if r["kind"] == "group"} - seen)
            if not groups:
                break
            seen.update(groups)
            rows += self.conn.execute(Q.grants_of_all, {"ps": groups}).mappings()
        return [Grant(r["principal"], r["kind"], r["value"], r["granted_at"], r["revoked_at"]) for r in rows]

    def record_deployment(self, deployment: Deployment) -> None:
        values = {k: getattr(deployment, k) for k in DEPLOYMENT_KEYS}
        self.conn.execute(Q.insert_deployment, [values])
