"""runner labels: the labels a job needs, and the runners the server has seen

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-10 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.tables

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    op.create_table(
        "runner",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("lease_s", sa.Float(), nullable=False),
        sa.Column("first_seen", storage.tables.UTCDateTime(), nullable=False),
        sa.Column("last_seen", storage.tables.UTCDateTime(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("runner")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("labels")
