"""analyses and health: verifications and health watches, their checks' tallies and leases,
every measurement, each environment's health and its changes

New tables only; existing rows are untouched.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.tables

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('analysis',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('run_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('stage_index', sa.Integer(), nullable=True),
    sa.Column('checks', sa.JSON(), nullable=False),
    sa.Column('started_at', storage.tables.UTCDateTime(), nullable=False),
    sa.Column('deadline', storage.tables.UTCDateTime(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('ended_at', storage.tables.UTCDateTime(), nullable=True),
    sa.Column('ended_by', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_analysis_environment'), ['environment'], unique=False)
        batch_op.create_index(batch_op.f('ix_analysis_run_id'), ['run_id'], unique=False)

    op.create_table('environment_health',
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('since', storage.tables.UTCDateTime(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('environment')
    )
    op.create_table('health_change',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('at', storage.tables.UTCDateTime(), nullable=False),
    sa.Column('from_state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('to_state', sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('health_change', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_health_change_environment'), ['environment'], unique=False)

    op.create_table('measurement',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('analysis_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('check', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('at', storage.tables.UTCDateTime(), nullable=False),
    sa.Column('result', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('took', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('measurement', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_measurement_analysis_id'), ['analysis_id'], unique=False)
        batch_op.create_index('ix_measurement_environment_check_at', ['environment', 'check', 'at'], unique=False)

    op.create_table('analysis_check',
    sa.Column('analysis_id', sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
    sa.Column('check', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('next_at', storage.tables.UTCDateTime(), nullable=True),
    sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('lease_until', storage.tables.UTCDateTime(), nullable=True),
    sa.Column('measured', sa.Integer(), nullable=False),
    sa.Column('passed', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('inconclusive', sa.Integer(), nullable=False),
    sa.Column('errors', sa.Integer(), nullable=False),
    sa.Column('consecutive_errors', sa.Integer(), nullable=False),
    sa.Column('last_result', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('last_value', sa.Text(), nullable=True),
    sa.Column('last_at', storage.tables.UTCDateTime(), nullable=True),
    sa.Column('recent', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['analysis_id'], ['analysis.id'], ),
    sa.PrimaryKeyConstraint('analysis_id', 'check')
    )
    with op.batch_alter_table('analysis_check', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_analysis_check_next_at'), ['next_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('analysis_check', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_analysis_check_next_at'))

    op.drop_table('analysis_check')
    with op.batch_alter_table('measurement', schema=None) as batch_op:
        batch_op.drop_index('ix_measurement_environment_check_at')
        batch_op.drop_index(batch_op.f('ix_measurement_analysis_id'))

    op.drop_table('measurement')
    with op.batch_alter_table('health_change', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_health_change_environment'))

    op.drop_table('health_change')
    op.drop_table('environment_health')
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_analysis_run_id'))
        batch_op.drop_index(batch_op.f('ix_analysis_environment'))

    op.drop_table('analysis')
