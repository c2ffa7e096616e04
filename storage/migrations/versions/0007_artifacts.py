"""artifacts

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.tables

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('artifact',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=140), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('pipeline', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', storage.tables.UTCDateTime(), nullable=False),
    sa.Column('bad', sa.Boolean(), nullable=False),
    sa.Column('bad_reason', sa.Text(), nullable=True),
    sa.Column('bad_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('bad_at', storage.tables.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_artifact_name_version')
    )
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.create_index('ix_artifact_name_created', ['name', 'created_at'], unique=False)
        batch_op.create_index('ix_artifact_created', ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_artifact_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('artifact', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifact_run_id'))
        batch_op.drop_index('ix_artifact_created')
        batch_op.drop_index('ix_artifact_name_created')

    op.drop_table('artifact')
