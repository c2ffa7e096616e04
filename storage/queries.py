"""Named statements, built once and reused.

Building a SQLAlchemy statement costs several times more than executing it on SQLite, so
everything on the hot path is prebuilt here with bind parameters (``Q.jobs_of``), and
statements whose shape depends on the columns being set are built once per shape
(``Q.update(kind, columns, …)``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.selectable import Select

from core.states import RUN_TERMINAL
from storage.tables import DEPLOYING_STATUSES, T, metadata

RUN, STAGE, JOB, GATE = T["run"], T["stage"], T["job"], T["gate"]
EVENT, AUDIT, LOG, PIPELINE, VERSION = (
    T["event"],
    T["audit"],
    T["log_chunk"],
    T["pipeline"],
    T["pipeline_version"],
)
DEPLOYMENT, TOKEN, GRANT, IDEMPOTENCY = T["deployment"], T["access_token"], T["grant"], T["idempotency"]
SLACK_MESSAGE = T["slack_message"]
RUNNER = metadata.tables["runner"]
LOCK = metadata.tables["environment_lock"]
TABLE_OF = {"run": RUN, "stage": STAGE, "job": JOB, "gate": GATE}
b = sa.bindparam


def status_is(column: sa.Column[Any], *statuses: str) -> sa.ColumnElement[bool]:
    """``column`` is one of ``statuses``, written into the statement as literals, not bound:
    a partial index (``storage.tables``: queued and running jobs, deploying stages) serves a
    query only when the planner can see that the query's condition implies the index's own,
    which SQLite cannot through a list of parameters and PostgreSQL cannot in a generic plan
    (the one it keeps for a prepared statement); it then reads every stage or job ever run."""
    words: list[sa.ColumnElement[Any]] = [sa.literal_column(f"'{s}'") for s in statuses]  # (our own words)
    return column == words[0] if len(words) == 1 else column.in_(words)


class Q:
    run_version = sa.select(RUN.c.version).where(RUN.c.id == b("id"))
    run_by_id = sa.select(RUN).where(RUN.c.id == b("id"))
    stages_of = sa.select(STAGE).where(STAGE.c.run_id == b("id")).order_by(STAGE.c.position)
    jobs_of = sa.select(JOB).where(JOB.c.run_id == b("id")).order_by(JOB.c.stage_index, JOB.c.position)
    gates_of = sa.select(GATE).where(GATE.c.run_id == b("id")).order_by(GATE.c.stage_index)
    run_by_number = sa.select(RUN.c.id).where(RUN.c.pipeline == b("p"), RUN.c.number == b("n"))
    run_by_key = sa.select(RUN.c.id).where(RUN.c.pipeline == b("p"), RUN.c.idempotency_key == b("k"))
    #: ids from ``low`` (a prefix) up to ``high`` (the prefix and "g", past every hex digit): a
    #: range the run-id index serves on both databases, where ``LIKE 'prefix%'`` reads all of it
    #: the run that retried ``:id`` (there is at most one)
    retry_of_run = sa.select(RUN.c.pipeline, RUN.c.number).where(RUN.c.retry_of == b("id")).limit(1)
    runs_by_prefix = sa.select(RUN.c.id).where(RUN.c.id >= b("low"), RUN.c.id < b("high")).limit(2)
    max_number = sa.select(sa.func.max(RUN.c.number)).where(RUN.c.pipeline == b("p"))
    #: for a batch of triggers (``ps``: pipeline names): each pipeline's last run number and
    #: latest version (None when archived), each by its index
    pipelines_ahead = sa.select(
        PIPELINE.c.name,
        sa.select(sa.func.max(RUN.c.number)).where(RUN.c.pipeline == PIPELINE.c.name).scalar_subquery(),
        sa.select(VERSION.c.id)
        .where(VERSION.c.pipeline == PIPELINE.c.name, PIPELINE.c.archived.is_(False))
        .order_by(VERSION.c.version.desc())
        .limit(1)
        .scalar_subquery(),
    ).where(PIPELINE.c.name.in_(sa.bindparam("ps", expanding=True)))
    #: the runs that idempotency keys made (``pk``: (pipeline, key) pairs)
    runs_by_keys = sa.select(RUN.c.pipeline, RUN.c.idempotency_key, RUN.c.id).where(
        sa.tuple_(RUN.c.pipeline, RUN.c.idempotency_key).in_(sa.bindparam("pk", expanding=True))
    )

    insert_run = sa.insert(RUN)
    insert_stage = sa.insert(STAGE)
    insert_job = sa.insert(JOB)
    insert_gate = sa.insert(GATE)
    insert_slack_message = sa.insert(SLACK_MESSAGE)
    insert_event = sa.insert(EVENT)
    insert_audit = sa.insert(AUDIT)
    insert_log = sa.insert(LOG)

    #: queued jobs whose labels the runner (``runner``, with ``labels``: a JSON array) carries
    #: all of, unless it is draining (``core.labels``)
    claimable = (
        sa.select(JOB.c.id, JOB.c.run_id, RUN.c.version)
        .join(RUN, RUN.c.id == JOB.c.run_id)
        .where(
            status_is(JOB.c.status, "queued"),
            ~sa.exists().where(RUNNER.c.name == b("runner"), RUNNER.c.draining.is_(True)),
            sa.text(
                "NOT EXISTS (SELECT 1 FROM json_each(job.labels) AS need "
                "WHERE need.value NOT IN (SELECT value FROM json_each(:labels)))"
            ),
        )
        .order_by(JOB.c.queued_at, JOB.c.id)
        .limit(b("limit"))
    )
    #: locks the job and its run without ever waiting: a run another transaction is changing is
    #: skipped for now, so a claim never holds a lock while waiting for one (no deadlocks)
    claimable_pg = (
        sa.select(JOB.c.id, JOB.c.run_id, RUN.c.version)
        .join(RUN, RUN.c.id == JOB.c.run_id)
        .where(
            status_is(JOB.c.status, "queued"),
            ~sa.exists().where(RUNNER.c.name == b("runner"), RUNNER.c.draining.is_(True)),
            sa.text("CAST(job.labels AS jsonb) <@ CAST(:labels AS jsonb)"),
        )
        .order_by(JOB.c.queued_at, JOB.c.id)
        .limit(b("limit"))
        .with_for_update(skip_locked=True, of=[JOB, RUN])
    )
    renew = (
        sa.update(JOB)
        .where(
            JOB.c.id == b("_id"),
            JOB.c.attempt == b("_attempt"),
            JOB.c.runner == b("_runner"),
            JOB.c.status == "running",
        )
        .values(lease_expires_at=b("until"))
    )
    held_job = sa.select(JOB.c.id).where(
        JOB.c.id == b("id"),
        JOB.c.attempt == b("attempt"),
        JOB.c.runner == b("runner"),
        JOB.c.status == "running",
    )
    expired = (
        sa.select(JOB)
        .where(status_is(JOB.c.status, "running"), JOB.c.lease_expires_at <= b("now"))
        .order_by(JOB.c.lease_expires_at)
        .limit(b("limit"))
    )
    attempts_of = sa.select(JOB.c.id, JOB.c.attempt).where(
        JOB.c.id.in_(b("ids", expanding=True)), JOB.c.runner == b("runner"), JOB.c.status == "running"
    )
    held_by = sa.select(JOB).where(status_is(JOB.c.status, "running"), JOB.c.runner == b("runner"))
    #: those of the runs ``ids`` that have not ended
    going_on = sa.select(RUN.c.id).where(
        RUN.c.id.in_(b("ids", expanding=True)), RUN.c.status.not_in([str(s) for s in RUN_TERMINAL])
    )
    #: manual and external gates past their deadline; automated gates whose next check is due
    #: (a check that fails after the deadline times the gate out, so the deadline alone is not a
    #: reason to look)
    due_gates = (
        sa.select(GATE)
        .where(
            GATE.c.status == "open",
            sa.or_(
                sa.and_(GATE.c.kind.in_(("manual", "external")), GATE.c.deadline <= b("now")),
                sa.and_(GATE.c.kind == "automated", GATE.c.next_check_at <= b("now")),
            ),
        )
        .limit(b("limit"))
    )
    due_gates_pg = due_gates.with_for_update(skip_locked=True)
    claim_gate_check = (
        sa.update(GATE)
        .where(GATE.c.id == b("_id"), GATE.c.status == "open", GATE.c.next_check_at == b("_expect"))
        .values(next_check_at=b("_until"))
    )
    job_attempt = sa.select(JOB.c.attempt).where(JOB.c.id == b("id"))
    log_of = (
        sa.select(LOG)
        .where(LOG.c.job_id == b("id"), LOG.c.attempt == b("attempt"), LOG.c.id > b("after"))
        .order_by(LOG.c.id)
        .limit(b("limit"))
    )
    log_tail = (
        sa.select(LOG.c.text)
        .where(LOG.c.job_id == b("id"), LOG.c.attempt == b("attempt"))
        .order_by(LOG.c.id.desc())
    )
    log_sizes = (
        sa.select(LOG.c.id, sa.func.length(LOG.c.text))
        .where(LOG.c.job_id == b("id"), LOG.c.attempt == b("attempt"))
        .order_by(LOG.c.id.desc())
    )
    events_after = sa.select(EVENT).where(EVENT.c.seq > b("seq")).order_by(EVENT.c.seq).limit(b("limit"))
    events_of_run_after = (
        sa.select(EVENT)
        .where(EVENT.c.seq > b("seq"), EVENT.c.run_id == b("run"))
        .order_by(EVENT.c.seq)
        .limit(b("limit"))
    )
    last_seq = sa.select(sa.func.max(EVENT.c.seq))
    audit_latest = sa.select(AUDIT).order_by(AUDIT.c.id.desc()).limit(b("limit"))
    audit_last_hash = sa.select(AUDIT.c.hash).order_by(AUDIT.c.id.desc()).limit(1)
    recent_runs = sa.select(RUN.c.id).order_by(RUN.c.created_at.desc(), RUN.c.number.desc()).limit(b("limit"))
    recent_runs_of = recent_runs.where(RUN.c.pipeline == b("p"))

    version_by_id = sa.select(VERSION).where(VERSION.c.id == b("id"))
    latest_version = (
        sa.select(VERSION.c.id)
        .join(PIPELINE, PIPELINE.c.name == VERSION.c.pipeline)
        .where(VERSION.c.pipeline == b("p"), PIPELINE.c.archived.is_(False))
        .order_by(VERSION.c.version.desc())
        .limit(1)
    )
    latest_version_row = (
        sa.select(VERSION).where(VERSION.c.pipeline == b("p")).order_by(VERSION.c.version.desc()).limit(1)
    )
    pipeline_exists = sa.select(PIPELINE.c.name).where(PIPELINE.c.name == b("p"))
    pipeline_archived = sa.select(PIPELINE.c.archived).where(PIPELINE.c.name == b("p"))
    insert_pipeline = sa.insert(PIPELINE)
    archive = sa.update(PIPELINE).where(PIPELINE.c.name == b("p")).values(archived=True)
    version_by_number = sa.select(VERSION.c.id).where(
        VERSION.c.pipeline == b("p"), VERSION.c.version == b("n")
    )
    unarchive = sa.update(PIPELINE).where(PIPELINE.c.name == b("p")).values(archived=False)
    insert_version = sa.insert(VERSION)
    pipeline_names = (
        sa.select(PIPELINE.c.name).where(PIPELINE.c.archived.is_(False)).order_by(PIPELINE.c.name)
    )

    #: an expired lock only: one taken since it was read (a committed row PostgreSQL's delete
    #: would see) stays, and the insert after this meets the key instead
    delete_expired_lock = sa.delete(LOCK).where(LOCK.c.environment == b("env"), LOCK.c.expires_at <= b("now"))
    insert_lock = sa.insert(LOCK)
    #: a manual lock becomes the rollback lock, if it is still the one read
    relock_after_rollback = (
        sa.update(LOCK)
        .where(
            LOCK.c.environment == b("env"),
            LOCK.c.holder == b("held_by"),
            LOCK.c.since == b("held_since"),
            LOCK.c.kind == "manual",
        )
        .values(kind="rollback", reason=b("why"), expires_at=None, reminded_at=None)
    )
    deployments_to = (
        sa.select(DEPLOYMENT)
        .where(DEPLOYMENT.c.environment == b("env"))
        .order_by(DEPLOYMENT.c.id.desc())
        .limit(b("limit"))
    )
    deployed_ok = (
        sa.select(DEPLOYMENT.c.id)
        .where(
            DEPLOYMENT.c.artifact_id == b("a"),
            DEPLOYMENT.c.environment == b("env"),
            DEPLOYMENT.c.status == "succeeded",
        )
        .limit(1)
    )
    #: the deploy stage running in an environment (the unique index allows one) and the queue
    environment_running = (
        sa.select(STAGE.c.run_id, RUN.c.pipeline, RUN.c.number)
        .join(RUN, RUN.c.id == STAGE.c.run_id)
        .where(STAGE.c.environment == b("env"), status_is(STAGE.c.status, *DEPLOYING_STATUSES))
        .limit(1)
    )
    environment_queued = (
        sa.select(STAGE.c.run_id, RUN.c.pipeline, RUN.c.number)
        .join(RUN, RUN.c.id == STAGE.c.run_id)
        .where(STAGE.c.environment == b("env"), STAGE.c.status == "queued")
        .order_by(STAGE.c.queued_at, STAGE.c.run_id)
    )
    queue_head_at = sa.select(sa.func.min(STAGE.c.queued_at)).where(
        STAGE.c.environment == b("env"), STAGE.c.status == "queued"
    )
    queued_environments = (
        sa.select(STAGE.c.environment)
        .where(STAGE.c.status == "queued")
        .distinct()
        .order_by(STAGE.c.environment)
    )
    #: whether any row exists that the clock could make due (the conditions of ``expired``,
    #: ``due_gates``, ``queued_environments`` and ``overdue_runs`` without their times): an idle
    #: database answers the timer with one indexed probe instead of four queries
    in_flight = sa.select(
        sa.or_(
            sa.exists().where(status_is(JOB.c.status, "running")),
            sa.exists().where(GATE.c.status == "open"),
            sa.exists().where(STAGE.c.status == "queued"),
            sa.exists().where(
                RUN.c.deadline.is_not(None), RUN.c.status.in_(("running", "waiting", "paused", "queued"))
            ),
        )
    )
    overdue_runs = (
        sa.select(RUN.c.id)
        .where(RUN.c.deadline <= b("now"), RUN.c.status.in_(("running", "waiting", "paused", "queued")))
        .order_by(RUN.c.deadline)
        .limit(b("limit"))
    )
    grants_of = sa.select(GRANT).where(GRANT.c.principal == b("p")).order_by(GRANT.c.id)
    grants_of_all = (
        sa.select(GRANT).where(GRANT.c.principal.in_(b("ps", expanding=True))).order_by(GRANT.c.id)
    )
    insert_deployment = sa.insert(DEPLOYMENT)

    event_lock = sa.text("SELECT pg_advisory_xact_lock(:k)")
    #: a ready-job hint to the other replicas, sent when the transaction commits
    notify_jobs = sa.text("SELECT pg_notify(:channel, :sender)")
    named_lock = sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))")
    #: several named locks, in the order given (unnest keeps the array's order)
    named_locks = sa.text("SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest(CAST(:ks AS text[])) AS k")

    @staticmethod
    @cache
    def update(kind: str, columns: tuple[str, ...], fenced: bool, guards: tuple[str, ...]) -> Update:
        """``UPDATE <kind> SET <columns> WHERE id AND status [AND attempt] [AND guards]``."""
        table = TABLE_OF[kind]
        query = sa.update(table).where(table.c.id == b("_id"), table.c.status == b("_status"))
        if fenced:
            query = query.where(table.c.attempt == b("_attempt"))
        for column in guards:
            query = query.where(table.c[column] == b(f"_guard_{column}"))
        return query.values({c: b(c) for c in columns})

    @staticmethod
    @cache
    def run_versions(count: int) -> Select[Any]:
        """The versions of ``count`` runs (``id0`` … ``idN``): one statement per count, reused."""
        return sa.select(RUN.c.id, RUN.c.version).where(RUN.c.id.in_([b(f"id{i}") for i in range(count)]))

    @staticmethod
    @cache
    def bump_run(columns: tuple[str, ...]) -> Update:
        """Compare-and-set on the run's version, moving it to ``_new_version`` and setting ``columns``."""
        return (
            sa.update(RUN)
            .where(RUN.c.id == b("_id"), RUN.c.version == b("_version"))
            .values({"version": b("_new_version"), **{c: b(c) for c in columns}})
        )
