"""deploy verification: a stage verified after its jobs, and how a deployment's verification ended

A deploy stage whose environment declares ``verify`` stays ``verifying`` after its jobs
succeed; it keeps the rule it started under (``verify_for``, ``verify_rollback``) and when it
passes (``verify_until``). A stage being verified holds its environment like a running one, so
the unique index on deploying stages now covers both. Deployments record ``verification``
(``verified``, ``failed``, ``canceled``; none for environments that do not verify).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.tables

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

RUNNING = "status = 'running'"
DEPLOYING = "status IN ('running', 'verifying')"


def _index(where: str) -> None:
    op.create_index(
        "ux_stage_environment_running",
        "stage",
        ["environment"],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    with op.batch_alter_table("stage") as batch:
        batch.add_column(sa.Column("verify_for", sa.Float(), nullable=True))
        batch.add_column(sa.Column("verify_rollback", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("verify_until", storage.tables.UTCDateTime(), nullable=True))
    op.drop_index("ux_stage_environment_running", table_name="stage")
    _index(DEPLOYING)
    with op.batch_alter_table("deployment") as batch:
        batch.add_column(sa.Column("verification", sa.String(length=16), nullable=True))


def downgrade() -> None:
    conn = op.get_bind()
    verifying = conn.execute(sa.text("SELECT count(*) FROM stage WHERE status = 'verifying'")).scalar()
    if verifying:
        raise RuntimeError(
            f"{verifying} deploy stages are being verified; let them finish (or cancel their runs) "
            "before downgrading: the older version knows no verification"
        )
    with op.batch_alter_table("deployment") as batch:
        batch.drop_column("verification")
    op.drop_index("ux_stage_environment_running", table_name="stage")
    _index(RUNNING)
    with op.batch_alter_table("stage") as batch:
        batch.drop_column("verify_until")
        batch.drop_column("verify_rollback")
        batch.drop_column("verify_for")
