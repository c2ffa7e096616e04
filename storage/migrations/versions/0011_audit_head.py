"""audit head: where the audit chain ends, kept beside it

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # the chain as it stands: its newest entry, and how many entries it holds (entries written
    # before the chain existed have no hash and are not part of it)
    op.execute(
        "INSERT INTO audit_head (id, last_id, hash, entries) SELECT 1, "
        "COALESCE((SELECT MAX(id) FROM audit WHERE hash <> ''), 0), "
        "COALESCE((SELECT hash FROM audit WHERE hash <> '' ORDER BY id DESC LIMIT 1), ''), "
        "(SELECT COUNT(*) FROM audit WHERE hash <> '')"
    )


def downgrade() -> None:
    op.drop_table("audit_head")
