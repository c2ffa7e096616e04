"""partial job indexes: the status indexes of ``job`` hold only the jobs waiting or running

Claims read queued jobs by ``queued_at``; the lease sweep and a runner's held jobs read running
ones. Indexed on every status, each of those indexes grew with every job ever run and took an
entry at each of a job's updates; now they hold the work in flight only. Built in the
migration's transaction (not ``CONCURRENTLY``): writes to ``job`` wait while each is built, one
scan of the table apiece.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 04:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

QUEUED, RUNNING = "status = 'queued'", "status = 'running'"
#: (name, columns, where) now, and what they replace
PARTIAL = [
    ("ix_job_queued", ["queued_at", "id"], QUEUED),
    ("ix_job_running_lease", ["lease_expires_at"], RUNNING),
    ("ix_job_running_runner", ["runner"], RUNNING),
]
WHOLE = [
    ("ix_job_status_queued_at", ["status", "queued_at"]),
    ("ix_job_status_lease", ["status", "lease_expires_at"]),
    ("ix_job_runner", ["runner"]),
]


def upgrade() -> None:
    for name, _ in WHOLE:
        op.drop_index(name, table_name="job")
    for name, columns, where in PARTIAL:
        op.create_index(name, "job", columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def downgrade() -> None:
    for name, _, _ in PARTIAL:
        op.drop_index(name, table_name="job")
    for name, columns in WHOLE:
        op.create_index(name, "job", columns)
