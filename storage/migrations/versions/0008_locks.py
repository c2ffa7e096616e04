"""environment locks

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.tables

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('environment_lock',
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('since', storage.tables.UTCDateTime(), nullable=False),
    sa.Column('expires_at', storage.tables.UTCDateTime(), nullable=True),
    sa.Column('handover_requested_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('handover_told', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('reminded_at', storage.tables.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('environment')
    )
    with op.batch_alter_table('environment_lock', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_environment_lock_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('environment_lock', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_environment_lock_expires_at'))

    op.drop_table('environment_lock')
