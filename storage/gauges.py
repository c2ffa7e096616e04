"""What is going on right now, for the metrics' gauges: each environment's queue and running
deployments, each runner's running jobs. Two grouped counts that go through the status indexes
(``ix_stage_status_queued_at``; ``ix_job_running_runner``, partial: running jobs only) and touch
only the rows of live stages and jobs, so a scrape costs the same with a million finished runs
as with none."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from core.states import JobStatus, StageStatus
from storage.queries import JOB, STAGE, status_is
from storage.store import SqlStore

#: stage statuses that hold their environment (a deployment under way there)
DEPLOYING = (StageStatus.RUNNING, StageStatus.ROLLING_OUT, StageStatus.VERIFYING)

_stages = (
    sa.select(STAGE.c.environment, STAGE.c.status, sa.func.count())
    .where(STAGE.c.status.in_([StageStatus.QUEUED, *DEPLOYING]), STAGE.c.environment.is_not(None))
    .group_by(STAGE.c.environment, STAGE.c.status)
)
_jobs = (
    sa.select(JOB.c.runner, sa.func.count())
    .where(status_is(JOB.c.status, JobStatus.RUNNING.value), JOB.c.runner.is_not(None))
    .group_by(JOB.c.runner)
)


@dataclass(frozen=True)
class Live:
    queued: dict[str, int] = field(default_factory=dict)  #: environment -> stages waiting for it
    deploying: dict[str, int] = field(default_factory=dict)  #: environment -> stages deploying there
    running: dict[str, int] = field(default_factory=dict)  #: runner -> jobs it runs


def live(store: SqlStore) -> Live:
    """The live counts, read in one short read-only transaction."""
    queued: dict[str, int] = {}
    deploying: dict[str, int] = {}
    with store.reading() as tx:
        for environment, status, n in tx.conn.execute(_stages):
            into = queued if status == StageStatus.QUEUED else deploying
            into[environment] = into.get(environment, 0) + int(n)
        running = {str(runner): int(n) for runner, n in tx.conn.execute(_jobs)}
    return Live(queued, deploying, running)
