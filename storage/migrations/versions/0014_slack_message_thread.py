"""slack message thread: a run started from chat in a thread reports there

Where a run started from chat reports is now written in the run's own transaction (the
trigger command carries it), with the thread it was asked from, if any. Existing rows keep
reporting in their channel (``thread`` NULL).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slack_message") as batch:
        batch.add_column(sa.Column("thread", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_message") as batch:
        batch.drop_column("thread")
