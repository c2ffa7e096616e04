"""revision time: when a run's commit was made, kept with each deployment (DORA's lead time),
and deployments read by environment and finish time

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.tables

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("revision_time", storage.tables.UTCDateTime(), nullable=True))
    with op.batch_alter_table("deployment") as batch:
        batch.add_column(sa.Column("revision_time", storage.tables.UTCDateTime(), nullable=True))
    op.create_index("ix_deployment_env_finished", "deployment", ["environment", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_deployment_env_finished", table_name="deployment")
    with op.batch_alter_table("deployment") as batch:
        batch.drop_column("revision_time")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("revision_time")
