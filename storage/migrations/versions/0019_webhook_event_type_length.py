"""webhook deliveries' event type up to 40 characters: ``environment.health_changed`` is 26

Existing rows are untouched. Downgrading deletes the deliveries (and their attempts) of event
types longer than 24 characters, which the narrower column cannot hold, and removes that type
from subscriptions.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

DELIVERY = sa.table(
    "webhook_delivery", sa.column("id", sa.BigInteger), sa.column("event_type", sa.String)
)
ATTEMPT = sa.table("webhook_attempt", sa.column("delivery_id", sa.BigInteger))
WEBHOOK = sa.table("webhook", sa.column("id", sa.String), sa.column("events", sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table("webhook_delivery") as batch:
        batch.alter_column(
            "event_type",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=24),
            type_=sqlmodel.sql.sqltypes.AutoString(length=40),
            existing_nullable=False,
        )


def downgrade() -> None:
    conn = op.get_bind()
    long = sa.func.length(DELIVERY.c.event_type) > 24
    conn.execute(sa.delete(ATTEMPT).where(ATTEMPT.c.delivery_id.in_(sa.select(DELIVERY.c.id).where(long))))
    conn.execute(sa.delete(DELIVERY).where(long))
    for webhook_id, events in conn.execute(sa.select(WEBHOOK.c.id, WEBHOOK.c.events)).all():
        kept = [e for e in events or [] if len(e) <= 24]
        if kept != list(events or []):
            conn.execute(sa.update(WEBHOOK).where(WEBHOOK.c.id == webhook_id).values(events=kept))
    with op.batch_alter_table("webhook_delivery") as batch:
        batch.alter_column(
            "event_type",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=40),
            type_=sqlmodel.sql.sqltypes.AutoString(length=24),
            existing_nullable=False,
        )
