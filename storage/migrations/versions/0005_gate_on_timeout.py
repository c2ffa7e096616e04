"""gate on_timeout

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 00:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('gate', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'on_timeout',
                sqlmodel.sql.sqltypes.AutoString(length=16),
                nullable=False,
                server_default='reject',
            )
        )


def downgrade() -> None:
    with op.batch_alter_table('gate', schema=None) as batch_op:
        batch_op.drop_column('on_timeout')
