"""deleted webhooks' open deliveries given up: they were never sent, and never pruned either

Deleting a subscription now gives up its open deliveries (``failed``, finished then), so the
hourly pruning deletes them after ``SHIPYARD_WEBHOOK_KEEP_DAYS``. This does the same for the
subscriptions deleted before. Downgrading leaves them given up: an older version never sends
a deleted subscription's deliveries anyway.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

DELIVERY = sa.table(
    "webhook_delivery",
    sa.column("webhook_id", sa.String),
    sa.column("state", sa.String),
    sa.column("finished_at", sa.DateTime),
    sa.column("last_error", sa.String),
)
WEBHOOK = sa.table("webhook", sa.column("id", sa.String), sa.column("status", sa.String))


def upgrade() -> None:
    deleted = sa.select(WEBHOOK.c.id).where(WEBHOOK.c.status == "deleted")
    op.get_bind().execute(
        sa.update(DELIVERY)
        .where(DELIVERY.c.state.in_(("pending", "sending")), DELIVERY.c.webhook_id.in_(deleted))
        .values(
            state="failed",
            finished_at=datetime.now(UTC).replace(tzinfo=None),  # (naive UTC: ``UTCDateTime``)
            last_error="not sent: the subscription was deleted",
        )
    )


def downgrade() -> None:
    pass
