"""The composition root: build the store, engine, orchestrator, catalog and built-in runner
from ``Settings``. ``shipyard serve``, ``shipyard run``, tests and benchmarks all start here."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial

from bot.config import Settings
from core.runtime.attendance import Attendance
from core.runtime.catalog import Catalog
from core.runtime.executor import Executor, SubprocessExecutor
from core.runtime.orchestrator import Orchestrator
from core.runtime.runner import LocalLink, Runner
from core.runtime.service import Service
from storage.migrate import upgrade
from storage.runners import RunnerRegistry
from storage.secrets import SecretBox, mask_report, open_assignment
from storage.store import SqlStore
from storage.wakeups import Wakeups

log = logging.getLogger(__name__)


@dataclass
class Shipyard:
    settings: Settings
    store: SqlStore
    service: Service
    orchestrator: Orchestrator
    catalog: Catalog
    runner: Runner | None
    #: runs the jobs (and gate commands); closed last
    executor: Executor
    #: the runners seen (``GET /api/v1/runners``) and the record of their calls
    runners: RunnerRegistry
    attendance: Attendance
    #: seals and opens environment secrets; None without ``SHIPYARD_SECRET_KEY`` (no secrets)
    secret_box: SecretBox | None = field(default=None)
    #: hears of jobs other replicas made ready (PostgreSQL only; None on SQLite)
    wakeups: Wakeups | None = field(default=None)

    async def start(self) -> None:
        report = await self.orchestrator.db(self.catalog.refresh)
        for added in report.added:
            log.info("pipeline %s registered", added)
        # the built-in runner recovers before the first timer tick: a job whose end it recorded
        # before a restart is reported as it ended, not expired as lost and run again
        await self.orchestrator.start(timers=False)
        if self.runner is not None:
            self.orchestrator.runners.append(self.runner)
            await self.runner.start()  # (it sweeps the gate checks' workspaces with its own)
        else:
            self.orchestrator.start_sweeping()
        self.orchestrator.start_timers()
        if not self.store.sqlite:
            loop = asyncio.get_running_loop()
            orchestrator = self.orchestrator

            def jobs_ready() -> None:  # (on the listener's thread)
                loop.call_soon_threadsafe(orchestrator.jobs_ready)

            self.wakeups = Wakeups(self.store.url, jobs_ready, ignore=self.store.wakeup_id)
            self.wakeups.start()

    async def stop(self) -> None:
        """Hand running jobs back to the queue, finish pending commits, close the database."""
        if self.wakeups is not None:
            self.wakeups.stop()
            self.wakeups = None
        if self.runner is not None:
            await self.runner.shutdown()
        await self.orchestrator.stop()
        self.executor.close()
        self.store.dispose()


def build(
    settings: Settings, *, executor: Executor | None = None, with_runner: bool = True, migrate: bool = True
) -> Shipyard:
    if migrate:
        upgrade(settings.database_url)
    store = SqlStore(settings.database_url)
    service = Service(store, environments=settings.environments)
    executor = executor or SubprocessExecutor(kill_grace_s=settings.kill_grace_seconds)
    workdir = settings.work_dir.resolve() / "runs"
    orchestrator = Orchestrator(
        service, workdir=workdir, gate_executor=executor, poll_interval=settings.poll_interval
    )
    key = settings.secret_key
    box = SecretBox(key.get_secret_value()) if key is not None else None
    runners = RunnerRegistry(store)
    attendance = Attendance(runners, orchestrator, service.clock)
    runner = None
    if with_runner and settings.runner_capacity > 0:
        link = LocalLink(
            orchestrator,
            partial(open_assignment, box=box),
            labels=settings.builtin_labels,
            attendance=attendance,
            capacity=settings.runner_capacity,
            masks=partial(mask_report, store, box) if box is not None else None,
        )
        runner = Runner(
            link,
            executor,
            name=settings.runner,
            workdir=workdir,
            capacity=settings.runner_capacity,
            lease_s=settings.lease_seconds,
            poll_interval=settings.poll_interval,
            max_log_bytes=settings.max_log_bytes,
            kill_grace_s=settings.kill_grace_seconds,
        )
    catalog = Catalog(service, settings.pipelines_dir)
    return Shipyard(
        settings, store, service, orchestrator, catalog, runner, executor, runners, attendance, box
    )
