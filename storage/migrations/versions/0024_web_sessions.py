"""web sessions: one-time sign-in links and signed-in browsers for the web view

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import storage.tables

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_login",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("created_at", storage.tables.UTCDateTime(), nullable=False),
        sa.Column("expires_at", storage.tables.UTCDateTime(), nullable=False),
        sa.Column("used_at", storage.tables.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_table(
        "web_session",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=200), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", storage.tables.UTCDateTime(), nullable=False),
        sa.Column("expires_at", storage.tables.UTCDateTime(), nullable=False),
        sa.Column("ended_at", storage.tables.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_web_session_expires_at", "web_session", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_web_session_expires_at", table_name="web_session")
    op.drop_table("web_session")
    op.drop_table("web_login")
