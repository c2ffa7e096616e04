"""slack post retry state in its own columns; a run message Slack refused for good

Until now a thread post's retry state was written into its ``ts`` column (``sending:<n>``,
``retry:<n>:<due>:<seq>``, ``gave-up:<n>``). It moves to ``status``, ``attempts``,
``next_try_at``, ``last_error`` and ``seq``, and ``ts`` holds only the posted message's ts. A run
message Slack refused for good (``channel_not_found`` …) is marked by ``gave_up_at``.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27 03:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

import storage.tables

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

POST = sa.table(
    "slack_post",
    sa.column("run_id", sa.String),
    sa.column("key", sa.String),
    sa.column("ts", sa.String),
    sa.column("status", sa.String),
    sa.column("attempts", sa.Integer),
    sa.column("next_try_at", storage.tables.UTCDateTime()),
    sa.column("seq", sa.BigInteger),
)


def upgrade() -> None:
    with op.batch_alter_table("slack_message") as batch:
        batch.add_column(sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column("gave_up_at", storage.tables.UTCDateTime(), nullable=True))
    with op.batch_alter_table("slack_post") as batch:
        batch.add_column(
            sa.Column(
                "status",
                sqlmodel.sql.sqltypes.AutoString(length=12),
                nullable=False,
                server_default="sending",
            )
        )
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_try_at", storage.tables.UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_slack_post_due", "slack_post", ["status", "next_try_at"], unique=False)

    conn = op.get_bind()
    conn.execute(sa.update(POST).where(POST.c.ts.is_not(None)).values(status="sent"))
    marked = sa.or_(POST.c.ts.like("sending:%"), POST.c.ts.like("retry:%"), POST.c.ts.like("gave-up:%"))
    for run_id, key, mark in conn.execute(
        sa.select(POST.c.run_id, POST.c.key, POST.c.ts).where(marked)
    ).all():
        kind, _, rest = mark.partition(":")
        parts = rest.split(":")
        values: dict[str, object] = {"ts": None, "attempts": int(parts[0])}
        if kind == "sending":
            values["status"] = "sending"
        elif kind == "gave-up":
            values["status"] = "gave_up"
        else:
            values["status"] = "waiting"
            values["next_try_at"] = datetime.fromtimestamp(float(parts[1]), UTC)
            values["seq"] = int(parts[2])
        conn.execute(sa.update(POST).where(POST.c.run_id == run_id, POST.c.key == key).values(**values))


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            POST.c.run_id, POST.c.key, POST.c.status, POST.c.attempts, POST.c.next_try_at, POST.c.seq
        ).where(POST.c.status != "sent")
    ).all()
    for run_id, key, status, attempts, due, seq in rows:
        if status == "waiting":
            mark = f"retry:{attempts}:{due.timestamp():.3f}:{seq}"
        elif status == "gave_up":
            mark = f"gave-up:{attempts}"
        else:
            mark = f"sending:{attempts}" if attempts else None
        conn.execute(sa.update(POST).where(POST.c.run_id == run_id, POST.c.key == key).values(ts=mark))
    op.drop_index("ix_slack_post_due", table_name="slack_post")
    with op.batch_alter_table("slack_post") as batch:
        for column in ("seq", "last_error", "next_try_at", "attempts", "status"):
            batch.drop_column(column)
    with op.batch_alter_table("slack_message") as batch:
        batch.drop_column("gave_up_at")
        batch.drop_column("last_error")
