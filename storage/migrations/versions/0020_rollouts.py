"""rollouts: a stage's canary, and a canary step's analysis limits

A deploy stage with a ``strategy`` keeps its rollout (``core.rollout.Rollout``: the step, the
desired and applied router weights, the pause's deadline) as JSON on the stage, and while it
rolls out it holds its environment like a running stage, so the unique index on deploying
stages covers ``rolling_out`` too. A canary step's analysis carries its own limits. Who drives
an environment's router is a lease row (``router_lease``), so two replicas never set it at once;
which colour of a blue/green router serves is ``router_state``.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.tables

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

BEFORE = "status IN ('running', 'verifying')"
DEPLOYING = "status IN ('running', 'rolling_out', 'verifying')"


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
        batch.add_column(sa.Column("rollout", sa.JSON(), nullable=True))
    op.drop_index("ux_stage_environment_running", table_name="stage")
    _index(DEPLOYING)
    with op.batch_alter_table("analysis") as batch:
        batch.add_column(sa.Column("limits", sa.JSON(), nullable=True))
    op.create_table(
        "router_state",
        sa.Column("key", sa.String(length=130), primary_key=True),
        sa.Column("live_pool", sa.String(length=63), nullable=False),
        sa.Column("updated_at", storage.tables.UTCDateTime(), nullable=False),
    )
    op.create_table(
        "router_lease",
        sa.Column("key", sa.String(length=130), primary_key=True),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("until", storage.tables.UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    conn = op.get_bind()
    rolling = conn.execute(sa.text("SELECT count(*) FROM stage WHERE status = 'rolling_out'")).scalar()
    if rolling:
        raise RuntimeError(
            f"{rolling} deploy stages are rolling out; let them finish (or abort them) before "
            "downgrading: the older version knows no rollouts"
        )
    op.drop_table("router_lease")
    op.drop_table("router_state")
    with op.batch_alter_table("analysis") as batch:
        batch.drop_column("limits")
    op.drop_index("ux_stage_environment_running", table_name="stage")
    _index(BEFORE)
    with op.batch_alter_table("stage") as batch:
        batch.drop_column("rollout")
