"""schedule state: a version bumped by every change, and why a schedule is paused

A fire is triggered only if the schedule is still as the clock read it (same version, live,
not paused): one deleted, edited or paused meanwhile no longer fires with what it was. A
schedule that can no longer start a run (its pipeline archived, a cron expression stored
before the stricter checks, parameters the pipeline no longer takes) is paused once with the
reason, instead of being refused at every fire. Existing rows: version 1, not paused.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-08 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.tables

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedule") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("paused_at", storage.tables.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("paused_reason", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("schedule") as batch:
        batch.drop_column("paused_reason")
        batch.drop_column("paused_at")
        batch.drop_column("version")
