"""The clock: an APScheduler (3.x, asyncio) job ticks every second and fires the schedules that
are due. APScheduler keeps no job store of ours (its maintainer advises against sharing one
between processes): schedules live in Shipyard's tables, each occurrence is claimed by a
conditional update, and the run is triggered with the idempotency key
``schedule:<id>:<fire time>``, so two replicas never both start it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.backend import Backend, now
from core import schedule as cron
from core.access import Action
from core.commands import TriggerRun
from core.definition import parameter_text
from core.model import Actor
from core.ports import AuditEntry
from core.schedule import Schedule
from storage.schedules import ScheduleBook, file_schedule_id

log = logging.getLogger(__name__)
#: how often the declarations in pipeline files are compared with the stored schedules
SYNC_EVERY_S = 60


@dataclass(frozen=True, slots=True)
class Fired:
    schedule: Schedule
    fire_at: datetime | None
    run_ref: str | None
    missed: tuple[datetime, ...]
    refused: str = ""


class Clockwork:
    def __init__(self, backend: Backend, owner: str) -> None:
        self.backend = backend
        self.owner = owner  #: who runs the schedules declared in pipeline files
        self.book = ScheduleBook(backend.yard.store)
        self.scheduler: AsyncIOScheduler | None = None

    async def start(self) -> None:
        await self.sync_files()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.scheduler.add_job(self.tick, "interval", seconds=1, max_instances=1, coalesce=True, id="tick")
        self.scheduler.add_job(self.sync_files, "interval", seconds=SYNC_EVERY_S, max_instances=1, id="sync")
        self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)

    async def tick(self, at: datetime | None = None) -> list[Fired]:
        """Fire everything due at ``at`` (now by default): tests call this with a given time."""
        at = at or now()
        fired = []
        for due in await self.backend.read(self.book.due, at):
            try:
                result = await self.fire(due, at)
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule %s failed to fire", due.id)
                continue
            if result is not None:
                fired.append(result)
        return fired

    async def fire(self, schedule: Schedule, at: datetime) -> Fired | None:
        plan = cron.due(schedule.cron, schedule.timezone, schedule.next_fire_at, at, schedule.grace_s)
        if not await self.backend.write(self.book.claim, schedule, plan.next_fire):
            return None  # another process took this occurrence
        for missed in plan.missed:
            await self._audit(schedule, "schedule_missed", "skipped", f"missed {missed.isoformat()}", at)
        if plan.fire_at is None:
            log.warning(
                "schedule %s missed %d fire(s); next at %s", schedule.id, len(plan.missed), plan.next_fire
            )
            return Fired(schedule, None, None, plan.missed)
        if schedule.source != "file":  # a person's schedule runs with what that person may do now
            owner = await self.backend.read(self.backend.directory.principal, schedule.owner, now())
            if not owner.may(Action.TRIGGER):
                roles = ", ".join(sorted(owner.roles)) or "none"
                why = f"{schedule.owner} may no longer start runs (roles: {roles})"
                await self._audit(schedule, "trigger_run", "rejected", why, at)
                return Fired(schedule, plan.fire_at, None, plan.missed, why)
        decision = await self.backend.decide(
            TriggerRun(
                pipeline=schedule.pipeline,
                actor=Actor(schedule.owner, "schedule"),
                parameters=schedule.parameters,
                idempotency_key=schedule.idempotency_key(plan.fire_at),
            )
        )
        if not decision.accepted or decision.state is None:
            log.warning("schedule %s could not start %s: %s", schedule.id, schedule.pipeline, decision.reason)
            return Fired(schedule, plan.fire_at, None, plan.missed, decision.reason)
        return Fired(schedule, plan.fire_at, decision.state.run.ref, plan.missed)

    async def sync_files(self) -> None:
        """Store the schedules pipeline files declare (new ones start from now)."""
        reads = self.backend.reads
        at = now()
        for info in await self.backend.read(reads.pipelines, None, 10_000, False):
            wanted = []
            for trigger in info.latest.definition.triggers:
                spec = trigger.schedule
                params = parameter_text(spec.parameters)
                wanted.append(
                    Schedule(
                        id=file_schedule_id(info.name, spec.cron, spec.timezone, params),
                        pipeline=info.name,
                        cron=spec.cron,
                        timezone=spec.timezone,
                        parameters=params,
                        owner=self.owner,
                        source="file",
                        grace_s=cron.DEFAULT_GRACE_S,
                        next_fire_at=cron.next_fire(spec.cron, spec.timezone, at),
                        created_at=at,
                    )
                )
            await self.backend.write(self.book.sync_file, info.name, wanted, at)

    async def _audit(self, schedule: Schedule, action: str, outcome: str, reason: str, at: datetime) -> None:
        entry = AuditEntry(
            at=at,
            actor=schedule.owner,
            channel="schedule",
            action=action,
            target=f"schedule {schedule.id}",
            outcome=outcome,
            reason=reason,
            detail={"pipeline": schedule.pipeline, "cron": schedule.cron, "timezone": schedule.timezone},
        )
        await self.backend.write(self.backend.yard.store.append_audit, entry)
