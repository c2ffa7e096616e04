"""typed deploy target and reuse: run.deploy_to, stage.reused_from, job.reused_from

Until now the environment a promotion or rollback deploys to was read back out of the reason
of a stage it skipped (``promotion to production``), and work a retry reused was found by its
reason (``reused from web#4``). Both move to their own columns, filled here from that text for
the rows that exist; the text stays as it was, for people to read.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

RUN = sa.table(
    "run",
    sa.column("id", sa.String),
    sa.column("pipeline", sa.String),
    sa.column("number", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("deploy_to", sa.String),
)
STAGE = sa.table(
    "stage",
    sa.column("run_id", sa.String),
    sa.column("position", sa.Integer),
    sa.column("environment", sa.String),
    sa.column("status", sa.String),
    sa.column("reason", sa.Text),
    sa.column("reused_from", sa.String),
)
JOB = sa.table(
    "job",
    sa.column("status", sa.String),
    sa.column("reason", sa.Text),
    sa.column("reused_from", sa.String),
)
REUSED = "reused from "


def upgrade() -> None:
    # plain ALTER TABLE on both databases (SQLite has added nullable columns in place forever)
    op.add_column("run", sa.Column("deploy_to", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True))
    for table in ("stage", "job"):
        op.add_column(
            table, sa.Column("reused_from", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
    conn = op.get_bind()
    _fill_deploy_to(conn)
    for table in (STAGE, JOB):
        _fill_reused_from(conn, table)


def _fill_deploy_to(conn: sa.Connection) -> None:
    """A promotion or rollback skipped every stage but its target's, saying ``<kind> to <env>``;
    when every stage deploys there, nothing was skipped and its first environment is the target."""
    runs = conn.execute(
        sa.select(RUN.c.id, RUN.c.kind).where(RUN.c.kind.in_(("promotion", "rollback")))
    ).all()
    for run_id, kind in runs:
        stages = conn.execute(
            sa.select(STAGE.c.environment, STAGE.c.status, STAGE.c.reason)
            .where(STAGE.c.run_id == run_id)
            .order_by(STAGE.c.position)
        ).all()
        prefix = f"{kind} to "
        said = [r.removeprefix(prefix) for _, s, r in stages if s == "skipped" and r.startswith(prefix)]
        target = said[0] if said else next((env for env, _, _ in stages if env), None)
        conn.execute(sa.update(RUN).where(RUN.c.id == run_id).values(deploy_to=target))


def _fill_reused_from(conn: sa.Connection, table: sa.TableClause) -> None:
    """``reused from <pipeline>#<number>`` names the run that did the work: store its id."""
    skipped_as_reused = sa.and_(
        table.c.status == "skipped", table.c.reason.startswith(REUSED, autoescape=True)
    )
    reasons = conn.execute(sa.select(table.c.reason).where(skipped_as_reused).distinct()).scalars().all()
    for reason in reasons:
        pipeline, _, number = reason.removeprefix(REUSED).rpartition("#")
        if not number.isdigit():
            continue  # not a ref: leave it unset rather than guess
        run_id = conn.execute(
            sa.select(RUN.c.id).where(RUN.c.pipeline == pipeline, RUN.c.number == int(number))
        ).scalar()
        if run_id is not None:
            conn.execute(
                sa.update(table)
                .where(table.c.status == "skipped", table.c.reason == reason)
                .values(reused_from=run_id)
            )


def downgrade() -> None:
    # the reason text was kept, so nothing needs writing back; SQLite (3.35+) drops columns too
    for table, column in (("job", "reused_from"), ("stage", "reused_from"), ("run", "deploy_to")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
