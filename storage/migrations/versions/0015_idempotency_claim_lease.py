"""idempotency claim lease: a key being processed names its holder and a renewed lease

A request that claimed an ``Idempotency-Key`` records who holds the claim and until when; the
live process renews the lease, so the claim of a process that was killed frees the key within
the lease instead of after five minutes. Rows claimed before this revision have no lease and
keep the old rule (free five minutes after their creation).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.tables

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency") as batch:
        batch.add_column(sa.Column("holder", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column("expires_at", storage.tables.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("holder")
