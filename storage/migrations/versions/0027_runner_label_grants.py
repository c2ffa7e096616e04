"""runner label grants: the labels a runner may carry are granted to its token's principal

Runners used to say which labels they carry, and an environment's secrets go to runners by
their labels, so any runner token could claim production's. A runner now carries only labels
granted to it (``grant`` rows of kind ``label``). So that runners at work keep their jobs, each
runner with an unrevoked token is granted the labels it last claimed with, as of this upgrade
(``shipyard access show NAME`` lists them; ``shipyard access revoke NAME label:X`` takes one
back).

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07 22:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

RUNNER = sa.table("runner", sa.column("name", sa.String), sa.column("labels", sa.JSON))
TOKEN = sa.table("access_token", sa.column("principal", sa.String), sa.column("revoked_at", sa.DateTime))
GRANT = sa.table(
    "grant",
    sa.column("principal", sa.String),
    sa.column("kind", sa.String),
    sa.column("value", sa.String),
    sa.column("granted_at", sa.DateTime),
    sa.column("revoked_at", sa.DateTime),
)


def upgrade() -> None:
    conn = op.get_bind()
    tokened = sa.select(TOKEN.c.principal).where(TOKEN.c.revoked_at.is_(None))
    runners = conn.execute(sa.select(RUNNER.c.name, RUNNER.c.labels).where(RUNNER.c.name.in_(tokened)))
    held = {
        (principal, value)
        for principal, value in conn.execute(
            sa.select(GRANT.c.principal, GRANT.c.value).where(GRANT.c.kind == "label", GRANT.c.revoked_at.is_(None))
        )
    }
    now = datetime.now(UTC).replace(tzinfo=None)  # (stored as naive UTC: ``storage.tables.UTCDateTime``)
    rows = [
        {"principal": name, "kind": "label", "value": label, "granted_at": now}
        for name, labels in runners
        for label in sorted(set(labels or ()))
        if (name, label) not in held
    ]
    if rows:
        conn.execute(sa.insert(GRANT), rows)


def downgrade() -> None:
    op.execute("DELETE FROM \"grant\" WHERE kind = 'label'")
