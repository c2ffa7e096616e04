"""lock expiry set at: when a lock's expiry was set, if not when the lock was taken

A lock taken for no longer than its reminder's lead is not reminded of (its holder set the
time a moment ago). That was read from ``since``, which a handover moves to the handover: a lock
handed over within the lead was never reminded of, though its new holder chose no time, and
one relocked for a short time was reminded at once. Existing rows keep NULL: their expiry
counts as set when they were taken, as before.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-08 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.tables

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("environment_lock") as batch:
        batch.add_column(sa.Column("expiry_set_at", storage.tables.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("environment_lock") as batch:
        batch.drop_column("expiry_set_at")
