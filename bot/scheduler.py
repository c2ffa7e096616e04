"""The clock: an APScheduler (3.x, asyncio) job ticks at every whole second and fires the
schedules that are due. APScheduler keeps no job store of ours (its maintainer advises against
sharing one between processes): schedules live in Shipyard's tables, each occurrence's run is
triggered with the idempotency key ``schedule:<id>:<fire time>`` (so two replicas, or a retry
after a crash, never start a second one) and then claimed by a conditional update of the
schedule's next fire time (so nothing claimed can have been left unstarted).

Bursts are the normal case (a thousand nightly deploys at 02:00), so the clock works in
batches: one query reads up to ``BATCH`` due schedules, their triggers go to the orchestrator
together (which commits them in groups), and one transaction then claims them all, recording
the missed and refused ones with the claim so only its winner does. A tick still busy with a
burst takes what comes due meanwhile."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot import metrics
from bot.backend import Backend, now
from core import schedule as cron
from core.access import Action
from core.commands import TriggerRun
from core.definition import parameter_text, resolve_parameters
from core.engine import Decision
from core.errors import Conflict, DatabaseUnreachable, ShipyardError
from core.model import Actor
from core.ports import AuditEntry
from core.runtime.writes import audit_entry
from core.schedule import Due, Missed, Schedule
from storage.reads import PipelineInfo
from storage.schedules import Pause, ScheduleStore, file_schedule_id

log = logging.getLogger(__name__)
#: how often the declarations in pipeline files are compared with the stored schedules
SYNC_EVERY_S = 60
#: pipelines read at a time when syncing their files' schedules
SYNC_PAGE = 500
#: due schedules read and claimed per transaction; a larger burst takes several
BATCH = 250
#: while a burst is still firing, how often the busy beat looks for what has come due since
RECHECK_S = 0.2
#: with nothing due, the beats rest until the next stored fire time, reading the table again
#: at least this often (for schedules other replicas add; this process's own say so at once)
QUIET_S = 30.0


@dataclass(frozen=True, slots=True)
class Fired:
    schedule: Schedule
    fire_at: datetime | None
    run_ref: str | None
    missed: Missed | None
    refused: str = ""


@dataclass(slots=True)
class _Claimed:
    """An occurrence this process won, with its trigger under way (or the outcome already)."""

    schedule: Schedule
    plan: Due
    command: TriggerRun | None = None
    trigger: asyncio.Task[Decision] | None = None
    #: the engine's refusal of the trigger, audited with the claim
    rejected: Decision | None = None
    #: why it can no longer start a run: paused (once) instead of fired
    unable: str = ""


class ScheduleLoop:
    def __init__(self, backend: Backend, owner: str, batch: int = BATCH) -> None:
        self.backend = backend
        self.owner = owner  #: who runs the schedules declared in pipeline files
        self.batch = batch  #: due schedules read and claimed at a time
        self.schedule_store = ScheduleStore(backend.shipyard.store)
        self.scheduler: AsyncIOScheduler | None = None
        self._busy: set[asyncio.Future[Any]] = set()  #: beats and the fires they started
        self._beating: asyncio.Future[None] | None = None
        #: nothing is due before this (the next stored fire time, or a re-read): beats until
        #: then read nothing, so an idle clock costs nothing but its ticks
        self._quiet_until: datetime | None = None
        self._syncing: asyncio.Task[None] | None = None

    def poke(self) -> None:
        """A schedule was added here: the clock beats at once and reads the table again."""
        self._quiet_until = None
        self._next_beat(None)

    def _next_beat(self, at: datetime | None) -> None:
        """Move the beat job's next run to ``at`` (None: now): a resting clock does not wake
        every second for nothing. It beats on the whole second again after."""
        job = (
            self.scheduler.get_job("tick") if self.scheduler is not None and self.scheduler.running else None
        )
        if job is not None:
            job.modify(next_run_time=at or datetime.now(UTC))

    async def start(self) -> None:
        self.backend.schedule_added = self.poke
        await self.sync_files()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        # on the whole second: cron fires fall on whole minutes, so a tick right after one
        # finds them due at once instead of up to a second later. (A second instance only sees
        # the first still busy with a burst and returns: no skipped-tick warnings.)
        first = now().replace(microsecond=0) + timedelta(seconds=1)
        self.scheduler.add_job(
            self._start_beat,
            "interval",
            seconds=1,
            start_date=first,
            max_instances=2,
            coalesce=True,
            id="tick",
        )
        self.scheduler.add_job(self._start_sync, "interval", seconds=SYNC_EVERY_S, id="sync")
        self.scheduler.start()

    # APScheduler's asyncio executor cancels the jobs still running when it shuts down: a beat
    # cut short there is logged as a failed job and loses what it claimed (no report, no metric).
    # So the jobs only start the work, as tasks of this loop's own that ``stop`` waits for.
    async def _start_beat(self) -> None:
        if self._beating is None:  # (the beat sets it at once: a second start returns)
            self._spawn(self._beat(), "shipyard-schedule-beat")

    async def _start_sync(self) -> None:
        if self._syncing is None or self._syncing.done():  # (one at a time)
            self._syncing = self._spawn(self._sync(), "shipyard-schedule-sync")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)
        return task

    async def stop(self) -> None:
        """Stop ticking; a beat under way finishes, and the runs of the occurrences it claimed
        are still created (call before the engine stops)."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        while self._busy:
            await asyncio.gather(*list(self._busy), return_exceptions=True)

    async def tick(self, at: datetime | None = None) -> list[Fired]:
        """Fire everything due at ``at`` (now by default) and wait for the runs to be created:
        tests call this with a given time."""
        return await self._finish(await self._claim_due(at))

    async def _beat(self) -> None:
        """The clock's job: claim what is due and start its triggers, without waiting for the
        last of them. A beat still busy with a burst takes what comes due meanwhile itself."""
        if self._beating is not None or (self._quiet_until is not None and now() < self._quiet_until):
            return
        beating = self._beating = asyncio.get_running_loop().create_future()
        self._busy.add(beating)  # (a stop waits for it)
        try:
            claimed = await self._claim_due(None)
            if claimed:
                self._finish_later(claimed)
            else:
                at = now()
                upcoming = await self.backend.read(self.schedule_store.next_due_at)
                rest = (at + timedelta(seconds=QUIET_S)).replace(microsecond=0)  # (a whole second)
                self._quiet_until = rest if upcoming is None else min(upcoming, rest)
                self._next_beat(self._quiet_until)
        except DatabaseUnreachable as exc:  # (said once by the engine's health): the next beat
            log.debug("schedules not read: %s", exc.__cause__ or exc)
        finally:
            beating.set_result(None)
            self._busy.discard(beating)
            self._beating = None

    def _finish_later(self, claimed: Sequence[_Claimed]) -> None:
        task = asyncio.create_task(self._finish(claimed), name="shipyard-schedule-fires")
        self._busy.add(task)
        task.add_done_callback(self._busy.discard)

    async def _claim_due(self, at: datetime | None) -> list[_Claimed]:
        """Fire and claim every occurrence due at ``at`` (live: due at each moment this asks), a
        batch at a time. Each batch is triggered first and claimed after its runs exist, so a
        crash in between loses nothing: the occurrence is still due, and triggering it again
        finds the run its idempotency key already made. The next batch is read (past the last
        one read) while the one before is still being triggered, so a burst keeps the engine's
        group commits full. A batch that fails stays due for the next tick."""
        batches: list[asyncio.Task[list[_Claimed]]] = []
        try:
            after: tuple[datetime, str] | None = None
            while True:
                moment = at or now()
                due = await self.backend.read(self.schedule_store.due, moment, self.batch, after)
                if due:
                    after = (due[-1].next_fire_at, due[-1].id)
                    batches.append(asyncio.create_task(self._claim(due, moment)))
                    if len(due) == self.batch:
                        continue  # more may be due already
                firing = [b for b in batches if not b.done()]
                if at is not None or not firing:
                    break
                # live, with a burst still firing: the beats meanwhile return at once, so what
                # comes due now is this beat's to read
                await asyncio.wait(firing, timeout=RECHECK_S)
        finally:  # (also when stopped half-way: what was triggered is still claimed)
            outcomes = await asyncio.gather(*batches, return_exceptions=True)
        claimed: list[_Claimed] = []
        for outcome in outcomes:
            if isinstance(outcome, DatabaseUnreachable):
                log.debug("a batch of due schedules waits for the database")
            elif isinstance(outcome, BaseException):
                log.warning("a batch of due schedules did not fire (%s); the next tick tries again", outcome)
            else:
                claimed += outcome
        return claimed

    async def _claim(self, due: Sequence[Schedule], at: datetime) -> list[_Claimed]:
        # (off the event loop: after a long downtime a minutely schedule has thousands of
        # missed fires to work out, most of a second of CPU, and Slack must still be answered)
        entries = [
            _Claimed(s, p) if isinstance(p, Due) else _Claimed(s, Due(None, None, s.next_fire_at), unable=p)
            for s, p in await asyncio.to_thread(_plans, due, at)
        ]
        await self.backend.read(self._judge, entries)
        for entry in entries:
            schedule, plan = entry.schedule, entry.plan
            if plan.fire_at is not None and not entry.unable:
                entry.command = TriggerRun(
                    pipeline=schedule.pipeline,
                    actor=Actor(schedule.owner, "schedule"),
                    parameters=schedule.parameters,
                    idempotency_key=schedule.idempotency_key(plan.fire_at),
                    schedule=(schedule.id, schedule.version),
                )
                entry.trigger = asyncio.create_task(self.backend.decide(entry.command))
        if triggers := [e.trigger for e in entries if e.trigger is not None]:
            await asyncio.wait(triggers)  # the runs exist before their occurrences are marked done
        broken = {
            e.schedule.id: e.trigger.exception() for e in entries if e.trigger and e.trigger.exception()
        }
        for schedule_id, error in broken.items():  # (the database went away, say): still due
            level = logging.DEBUG if isinstance(error, DatabaseUnreachable) else logging.WARNING
            log.log(level, "schedule %s did not fire (%s); the next tick tries again", schedule_id, error)
        entries = [e for e in entries if e.schedule.id not in broken]
        for entry in entries:
            if entry.trigger is not None and not (decision := entry.trigger.result()).accepted:
                entry.rejected = decision
        mine = await self.backend.write(self._take, entries, at)
        for entry in mine:
            if entry.plan.fire_at is None and entry.plan.missed is not None:
                log.warning(
                    "schedule %s %s; next at %s",
                    entry.schedule.id,
                    entry.plan.missed.describe(),
                    entry.plan.next_fire,
                )
        return mine

    def _judge(self, entries: Sequence[_Claimed]) -> None:
        """A schedule that can no longer start a run (``unable``) is paused instead of fired. A
        person's schedule runs with what that person may do now (as an incoming trigger does:
        ``Directory.standing``), read once per owner: one whose owner may no longer start runs
        is paused too (said once, instead of refused and audited at every fire)."""
        pipelines = {e.schedule.pipeline for e in entries}
        infos = {name: self.backend.reads.pipeline(name) for name in pipelines}
        for entry in entries:
            entry.unable = entry.unable or unable(entry.schedule, infos[entry.schedule.pipeline])
        owners = {
            e.schedule.owner
            for e in entries
            if e.schedule.source != "file" and e.plan.fire_at is not None and not e.unable
        }
        when = now()
        principals = {name: self.backend.directory.standing(name, when) for name in owners}
        for entry in entries:
            if entry.plan.fire_at is not None and entry.schedule.source != "file" and not entry.unable:
                owner = principals[entry.schedule.owner]
                if owner is None:
                    revoked = "every API token revoked"
                    entry.unable = f"{entry.schedule.owner} may no longer start runs ({revoked})"
                elif not owner.may(Action.TRIGGER):
                    roles = ", ".join(sorted(owner.roles)) or "none"
                    entry.unable = f"{entry.schedule.owner} may no longer start runs (roles: {roles})"

    def _take(self, entries: Sequence[_Claimed], at: datetime) -> list[_Claimed]:
        """On the database thread: claim every occurrence (their runs were triggered already),
        recording missed and refused ones with the claim, so only the process that wins a claim
        records it (the engine leaves the clock's refusals to it: every replica that read the
        occurrence due triggered it). Returns the entries this process won."""
        audits = {}
        pauses = [Pause(e.schedule, e.unable, at) for e in entries if e.unable]
        for entry in entries:
            schedule, plan = entry.schedule, entry.plan
            records = [] if plan.missed is None else [_missed(schedule, at, plan.missed)]
            if entry.command is not None and entry.rejected is not None:
                records.append(audit_entry(entry.command, entry.rejected, at))
            audits[schedule.id] = records
        claims = [(e.schedule, e.plan.next_fire) for e in entries if not e.unable]
        won = self.schedule_store.claim(claims, audits, pauses)
        return [e for e in entries if e.schedule.id in won]

    async def _finish(self, claimed: Sequence[_Claimed]) -> list[Fired]:
        fired = []
        for entry in claimed:
            schedule, plan = entry.schedule, entry.plan
            metrics.schedule_fired(None, missed=plan.missed.count if plan.missed else 0)
            if entry.trigger is None:
                why = entry.unable and f"paused: {entry.unable}"
                fired.append(Fired(schedule, plan.fire_at, None, plan.missed, why))
                continue
            try:
                decision = await entry.trigger
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule %s failed to fire", schedule.id)
                continue
            if not decision.accepted or decision.state is None:
                log.warning(
                    "schedule %s could not start %s: %s", schedule.id, schedule.pipeline, decision.reason
                )
                fired.append(Fired(schedule, plan.fire_at, None, plan.missed, decision.reason))
            else:
                fired.append(Fired(schedule, plan.fire_at, decision.state.run.ref, plan.missed))
                if plan.fire_at is not None and not decision.duplicate:  # (once, by who made it)
                    metrics.schedule_fired((decision.state.run.created_at - plan.fire_at).total_seconds())
        return fired

    async def _sync(self) -> None:
        try:
            await self.sync_files()
        except DatabaseUnreachable as exc:  # (said once by the engine's health): the next sync
            log.debug("pipeline files' schedules not synced: %s", exc.__cause__ or exc)

    async def sync_files(self) -> None:
        """Store the schedules pipeline files declare (new ones start from now; see
        ``ScheduleStore.sync_file``). Only pipelines whose declarations changed are written. An
        archived pipeline declares none (it starts no runs): its come back, from then on, when
        it is restored."""
        at = now()
        stored = await self.backend.read(self.schedule_store.file_schedule_ids)
        infos: dict[str, PipelineInfo] = {}
        async for info in self._every_pipeline():
            infos[info.name] = info
            have = stored.get(info.name, set())
            wanted = []
            for trigger in [] if info.archived else info.latest.definition.triggers:
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
                        next_fire_at=at,  # (sync_file works out the first fire of those it stores)
                        created_at=at,
                    )
                )
            if {s.id for s in wanted} != have:
                await self.backend.write(self.schedule_store.sync_file, info.name, wanted, at)
                self.poke()  # (a declaration changed: its first fire may come before the rest ends)
        await self._pause_unable(infos, at)

    async def _pause_unable(self, infos: dict[str, PipelineInfo], at: datetime) -> None:
        """Pause, once, every schedule that can no longer start a run (``unable``), so that it
        is shown with the reason before its next fire comes, and its owner told."""
        every = await self.backend.read(self.schedule_store.all)
        # (off the event loop: ten thousand schedules take a while to judge)
        pauses = await asyncio.to_thread(_unable_ones, every, infos, at)
        if pauses:  # judged again on their pipelines read now: one added or restored since the
            # pages above were read is not taken for gone or archived
            names = {p.schedule.pipeline for p in pauses}
            fresh = await self.backend.read(lambda: {n: self.backend.reads.pipeline(n) for n in names})
            pauses = _unable_ones([p.schedule for p in pauses], fresh, at)
        if pauses:
            paused = await self.backend.write(self.schedule_store.claim, [], None, pauses)
            for schedule_id in sorted(paused):
                log.warning("schedule %s paused: it can no longer start a run", schedule_id)

    async def _every_pipeline(self) -> AsyncIterator[PipelineInfo]:
        """Every pipeline, archived ones too, read a page at a time however many there are."""
        after: str | None = None
        while page := await self.backend.read(self.backend.reads.pipelines, after, SYNC_PAGE, True):
            for info in page:
                yield info
            after = page[-1].name


async def pause_by_hand(backend: Backend, schedule: Schedule, by: str) -> None:
    """Pause ``schedule`` for ``by`` (whose right to, the door checked). Raises ``Conflict``
    with what the schedule is (a predicate each door words after its name) when it is paused
    already or changed since it was read."""
    if schedule.paused_reason:
        raise Conflict(f"is paused already ({schedule.paused_reason})")
    if not await backend.write(ScheduleStore(backend.shipyard.store).pause_by_hand, schedule, by, now()):
        raise Conflict("changed meanwhile: read it again")


async def resume_by_hand(backend: Backend, schedule: Schedule, by: str) -> datetime:
    """Fire a paused ``schedule`` again from its next fire after now (the fires it missed are
    not made up), which is returned. Raises ``Conflict`` (as ``pause_by_hand``) when it is not
    paused, still cannot start a run (``unable``), or changed since it was read."""
    if not schedule.paused_reason:
        raise Conflict("is not paused")
    if why := unable(schedule, await backend.read(backend.reads.pipeline, schedule.pipeline)):
        raise Conflict(f"cannot start a run: {why}")
    at = now()
    following = cron.next_fire(schedule.cron, schedule.timezone, at)
    if not await backend.write(ScheduleStore(backend.shipyard.store).resume, schedule, following, by, at):
        raise Conflict("changed meanwhile: read it again")
    backend.schedule_added()
    return following


def unable(schedule: Schedule, info: PipelineInfo | None) -> str:
    """Why ``schedule`` can no longer start a run ("": it can): its pipeline is gone or
    archived, its cron expression is one refused since it was stored (croniter reads it unlike
    cron), or the pipeline no longer takes its parameters. Such a schedule is paused, once."""
    if info is None:
        return f"pipeline {schedule.pipeline!r} no longer exists"
    if info.archived:
        return f"pipeline {schedule.pipeline!r} is archived (restore it, then resume the schedule)"
    if problem := _cron_problem(schedule.cron) or _zone_problem(schedule.timezone):
        return problem
    try:
        resolve_parameters(info.latest.definition, schedule.parameters)
    except ShipyardError as exc:
        return f"its parameters no longer start a run of {schedule.pipeline}: {exc.message}"
    return ""


def _unable_ones(
    every: Sequence[Schedule], infos: Mapping[str, PipelineInfo | None], at: datetime
) -> list[Pause]:
    return [
        Pause(s, why, at) for s in every if not s.paused_reason and (why := unable(s, infos.get(s.pipeline)))
    ]


@functools.lru_cache(maxsize=1024)
def _cron_problem(expression: str) -> str:
    """What the cron checks of today say of a stored expression ("": it passes)."""
    try:
        cron.check_cron(expression)
    except ShipyardError as exc:
        return f"{exc.message} (it was stored before such expressions were refused; add it again corrected)"
    return ""


@functools.lru_cache(maxsize=256)
def _zone_problem(name: str) -> str:
    try:
        cron.zone(name)
    except ShipyardError as exc:
        return exc.message
    return ""


def _plans(due: Sequence[Schedule], at: datetime) -> list[tuple[Schedule, Due | str]]:
    """What to do with each due schedule, or why its fires cannot be worked out (it is paused,
    not read due again every second). Schedules that share a cron expression, zone and due time
    (the usual burst) share one computation."""
    memo: dict[tuple[str, str, datetime, float], Due | str] = {}
    plans: list[tuple[Schedule, Due | str]] = []
    for schedule in due:
        key = (schedule.cron, schedule.timezone, schedule.next_fire_at, schedule.grace_s)
        plan = memo.get(key)
        if plan is None:
            try:
                plan = cron.due(*key[:3], at, schedule.grace_s)
            except ShipyardError as exc:
                plan = f"its fires cannot be worked out: {exc.message}"
            except Exception as exc:  # one broken schedule must not stop the others
                log.exception("schedule %s: cannot work out its next fire", schedule.id)
                plan = f"its fires cannot be worked out ({type(exc).__name__}: {exc})"
            memo[key] = plan
        plans.append((schedule, plan))
    return plans


def _missed(schedule: Schedule, at: datetime, missed: Missed) -> AuditEntry:
    """One entry for every occurrence a catch-up skipped (not one each: thousands after a week)."""
    first, last = missed.first.isoformat(), missed.last.isoformat()
    return _audit(
        schedule,
        "schedule_missed",
        "skipped",
        missed.describe(),
        at,
        missed=missed.count,
        exact=missed.exact,
        first=first,
        last=last,
    )


def _audit(
    schedule: Schedule, action: str, outcome: str, reason: str, at: datetime, **more: Any
) -> AuditEntry:
    detail: dict[str, Any] = {
        "pipeline": schedule.pipeline,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        **more,
    }
    return AuditEntry(
        at=at,
        actor=schedule.owner,
        channel="schedule",
        action=action,
        target=f"schedule {schedule.id}",
        outcome=outcome,
        reason=reason,
        detail=detail,
    )
