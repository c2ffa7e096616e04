"""job lost attempts: the attempts declared lost, and their late results

A job attempt declared lost (its server restarted, or it stopped renewing its lease) is kept
on the job with the runner and reason; if that attempt had in fact finished, its runner
reports the result late and it is kept beside the attempt. Existing rows have none.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("lost", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("lost")
