"""environment queues: queued stages, one running deployment per environment, run kinds

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 01:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.tables

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Until now two runs could deploy to one environment at once; the index below forbids it.
    # Say which runs are in the way instead of failing on a bare constraint error.
    both = op.get_bind().execute(
        sa.text(
            "SELECT s.environment, r.pipeline, r.number FROM stage s JOIN run r ON r.id = s.run_id "
            "WHERE s.status = 'running' AND s.environment IN (SELECT environment FROM stage "
            "WHERE status = 'running' AND environment IS NOT NULL GROUP BY environment HAVING COUNT(*) > 1)"
        )
    ).all()
    if both:
        busy = ", ".join(f"{p}#{n} ({e})" for e, p, n in both)
        raise RuntimeError(
            f"these runs deploy to the same environment at once: {busy}. Let them finish (or cancel "
            "them) with the previous version of Shipyard, then upgrade: from now on an environment "
            "takes one deployment at a time."
        )
    with op.batch_alter_table('stage', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queued_at', storage.tables.UTCDateTime(), nullable=True))
        batch_op.create_index('ix_stage_status_queued_at', ['status', 'queued_at'], unique=False)
    op.create_index(
        'ux_stage_environment_running',
        'stage',
        ['environment'],
        unique=True,
        sqlite_where=sa.text("status = 'running'"),
        postgresql_where=sa.text("status = 'running'"),
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('branch', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(
            sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default='deploy')
        )
        batch_op.add_column(sa.Column('artifact_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('break_glass', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.create_index(batch_op.f('ix_run_artifact_id'), ['artifact_id'], unique=False)
    with op.batch_alter_table('deployment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('artifact_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('artifact', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(
            sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False, server_default='deploy')
        )


def downgrade() -> None:
    with op.batch_alter_table('deployment', schema=None) as batch_op:
        batch_op.drop_column('kind')
        batch_op.drop_column('artifact')
        batch_op.drop_column('artifact_id')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_artifact_id'))
        batch_op.drop_column('break_glass')
        batch_op.drop_column('artifact_id')
        batch_op.drop_column('kind')
        batch_op.drop_column('branch')
    op.drop_index('ux_stage_environment_running', table_name='stage')
    with op.batch_alter_table('stage', schema=None) as batch_op:
        batch_op.drop_index('ix_stage_status_queued_at')
        batch_op.drop_column('queued_at')
