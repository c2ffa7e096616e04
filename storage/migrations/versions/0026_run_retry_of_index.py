"""run retry index: which run retried a run, found without reading every run

A run is retried once (a second retry of it is refused, naming the first): the retry looks
for an earlier one by ``retry_of``. Partial: only retries have one.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

RETRIES = "retry_of IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_run_retry_of", "run", ["retry_of"], sqlite_where=sa.text(RETRIES), postgresql_where=sa.text(RETRIES)
    )


def downgrade() -> None:
    op.drop_index("ix_run_retry_of", table_name="run")
