"""break-glass reviews

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.tables

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'review',
        sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('admin', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('opened_at', storage.tables.UTCDateTime(), nullable=False),
        sa.Column('due_at', storage.tables.UTCDateTime(), nullable=False),
        sa.Column('acknowledged_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('acknowledged_at', storage.tables.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('run_id'),
    )
    with op.batch_alter_table('review', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_due_at'), ['due_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('review', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_review_due_at'))
    op.drop_table('review')
