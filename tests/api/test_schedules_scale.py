"""Schedules in bulk: a burst bigger than one batch fires every occurrence exactly once in one
tick, claims made at the same moment split the occurrences between the claimers (and record a
missed fire once), the clock ticks on the whole second, and declarations in pipeline files keep
their next fire time when they are synced again. Fire times are given (no real minutes pass)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.backend import Backend
from bot.bootstrap import Shipyard
from bot.scheduler import QUIET_S, ScheduleLoop
from core.access import Role
from core.commands import Command, TriggerRun
from core.engine import Decision
from core.model import Actor
from core.ports import AuditEntry
from core.schedule import Schedule, next_fire
from storage.directory import Directory
from storage.schedules import ScheduleStore
from storage.tables import T
from tests.factory import make_shipyard, write_pipelines
from tests.pipelines import one_job

DUE = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # a Monday, 02:00 UTC
NIGHTLY = "0 2 * * *"


@dataclass
class Clock:
    shipyard: Shipyard
    backend: Backend
    schedule_store: ScheduleStore

    def schedule_loop(self, batch: int = 1000) -> ScheduleLoop:
        return ScheduleLoop(self.backend, "scheduler", batch=batch)

    def add(
        self, count: int, owner: str = "alice", due: datetime = DUE, cron: str = NIGHTLY
    ) -> list[Schedule]:
        made = [
            Schedule(
                id=f"{owner}-{due:%H%M%S}-{i:04}",
                pipeline="tick",
                cron=cron,
                timezone="UTC",
                parameters={},
                owner=owner,
                source="api",
                grace_s=600,
                next_fire_at=due,
                created_at=due - timedelta(days=1),
            )
            for i in range(count)
        ]
        self.schedule_store.add_many(made)
        return made

    def scheduled_runs(self) -> list[tuple[str, datetime]]:
        run = T["run"]
        query = sa.select(run.c.idempotency_key, run.c.created_at).where(
            run.c.idempotency_key.like("schedule:%")
        )
        with self.shipyard.store.engine.connect() as conn:
            return [(key, created) for key, created in conn.execute(query)]

    def audited(self, action: str) -> list[str]:
        audit = T["audit"]
        query = sa.select(audit.c.target).where(audit.c.action == action)
        with self.shipyard.store.engine.connect() as conn:
            return list(conn.execute(query).scalars())


@pytest.fixture
async def clock(db_url: str, tmp_path: Path) -> AsyncIterator[Clock]:
    async with open_clock(db_url, tmp_path) as made:
        yield made


@asynccontextmanager
async def open_clock(db_url: str, tmp_path: Path) -> AsyncIterator[Clock]:
    """A service with pipeline ``tick`` and no runner, Alice a deployer (``clock`` and others)."""
    shipyard = make_shipyard(
        db_url,
        tmp_path,
        {"tick": one_job("tick")},
        with_runner=False,
        work_dir=tmp_path / "w",
        runner_capacity=0,
    )
    await shipyard.start()
    backend = Backend()
    backend.bind(shipyard)
    Directory(shipyard.store).grant("alice", "role", str(Role.DEPLOYER), datetime.now(UTC))
    try:
        yield Clock(shipyard, backend, ScheduleStore(shipyard.store))
    finally:
        await backend.close()
        await shipyard.stop()


@pytest.fixture
async def replicas(pg_url: str, tmp_path: Path) -> AsyncIterator[list[Clock]]:
    """Two services on one PostgreSQL database, as two replicas are."""
    made: list[Clock] = []
    try:
        for i in range(2):
            shipyard = make_shipyard(
                pg_url,
                tmp_path,
                {"tick": one_job("tick")},
                with_runner=False,
                work_dir=tmp_path / f"w{i}",
                runner_capacity=0,
            )
            await shipyard.start()
            backend = Backend()
            backend.bind(shipyard)
            made.append(Clock(shipyard, backend, ScheduleStore(shipyard.store)))
        Directory(made[0].shipyard.store).grant("alice", "role", str(Role.DEPLOYER), datetime.now(UTC))
        yield made
    finally:
        for replica in made:
            await replica.backend.close()
            await replica.shipyard.stop()


@pytest.mark.postgres
async def test_a_schedule_of_an_archived_pipeline_is_paused_once_however_many_replicas_read_it(
    replicas: list[Clock],
) -> None:
    """Both replicas read the fire due; only one pauses the schedule and records it, and no run
    is triggered or refused (no ``trigger_run`` entry at this fire, nor at any later one)."""
    first, second = replicas
    (schedule,) = first.add(1)
    await first.shipyard.orchestrator.db(first.shipyard.service.set_archived, "tick", True)
    loops = [first.schedule_loop(), second.schedule_loop()]

    fired = await asyncio.gather(*(loop.tick(DUE + timedelta(seconds=1)) for loop in loops))

    (paused,) = [f for f in fired[0] + fired[1]]  # the pause's winner reports it
    assert paused.run_ref is None and "paused: pipeline 'tick' is archived" in paused.refused
    assert first.audited("schedule_paused") == [f"schedule {schedule.id}"]  # once, not per replica
    assert first.audited("trigger_run") == []
    stored = first.schedule_store.get(schedule.id)
    assert stored is not None and "archived" in stored.paused_reason
    later = await asyncio.gather(*(loop.tick(DUE + timedelta(days=1, seconds=1)) for loop in loops))
    assert later == [[], []]  # the next night: nothing read due, nothing audited again
    assert first.audited("schedule_paused") == [f"schedule {schedule.id}"]


async def test_a_burst_bigger_than_a_batch_fires_each_occurrence_once_in_one_tick(clock: Clock) -> None:
    burst = clock.add(130)
    gone = clock.add(1, owner="alice", due=DUE - timedelta(minutes=1))[0]
    clock.schedule_store.remove(gone.id, DUE)
    refused = clock.add(2, owner="mallory")  # holds no role: paused, and the pause audited
    ticking = clock.schedule_loop(batch=50)

    fired = await ticking.tick(DUE + timedelta(milliseconds=5))

    started = [f for f in fired if f.run_ref]
    assert len(started) == 130 and len({f.run_ref for f in started}) == 130
    assert {f.schedule.id for f in started} == {s.id for s in burst}
    assert sorted(f.refused for f in fired if not f.run_ref) == 2 * [
        "paused: mallory may no longer start runs (roles: none)"
    ]
    assert await ticking.tick(DUE + timedelta(seconds=1)) == []  # every occurrence was claimed
    runs = clock.scheduled_runs()
    assert sorted(key for key, _ in runs) == sorted(s.idempotency_key(DUE) for s in burst)
    assert all(created >= DUE for _, created in runs)  # never before the occurrence was due
    assert sorted(clock.audited("schedule_paused")) == sorted(f"schedule {s.id}" for s in refused)
    assert [t for t in clock.audited("trigger_run") if t.startswith("schedule ")] == []
    following = {s.next_fire_at for s in clock.schedule_store.all() if s.id.startswith("alice")}
    assert following == {DUE + timedelta(days=1)}


async def test_claims_made_at_once_split_the_occurrences_and_record_a_missed_fire_once(clock: Clock) -> None:
    late = DUE + timedelta(minutes=30)  # beyond the 10-minute grace: missed, recorded, not run
    clock.add(60)
    due = clock.schedule_store.due(late, 1000)
    claims = [(s, next_fire(s.cron, s.timezone, late)) for s in due]
    audits = {s.id: [_missed(s.id, late)] for s in due}

    won = await asyncio.gather(
        *(asyncio.to_thread(clock.schedule_store.claim, claims, audits) for _ in range(3))
    )

    assert sum(len(w) for w in won) == 60 and set().union(*won) == {s.id for s in due}
    assert sorted(clock.audited("schedule_missed")) == sorted(f"schedule {s.id}" for s in due)
    assert clock.schedule_store.claim(claims, audits) == set()  # the occurrences moved on: nothing left


async def test_the_clock_ticks_on_the_whole_second_and_its_fires_outlive_a_stop(clock: Clock) -> None:
    now = datetime.now(UTC)
    if now.second >= 55:  # the occurrence must stay this minute's while the test runs
        await asyncio.sleep(60.5 - now.second - now.microsecond / 1e6)
    due = datetime.now(UTC).replace(second=0, microsecond=0)  # a time "* * * * *" fires at
    clock.add(40, due=due, cron="* * * * *")
    ticking = clock.schedule_loop(batch=25)
    await ticking.start()
    job = ticking.scheduler.get_job("tick") if ticking.scheduler else None
    assert job is not None and job.next_run_time.microsecond == 0

    await ticking._beat()  # the clock's own job: claims and starts the triggers, does not wait
    await ticking.stop()  # ... but a stop waits for the runs it claimed

    keys = sorted(key for key, _ in clock.scheduled_runs())
    assert len(keys) == 40 and all(key.endswith(due.isoformat()) for key in keys)


async def test_declarations_in_files_keep_their_next_fire_when_synced_again(
    clock: Clock, tmp_path: Path
) -> None:
    nightly = f"triggers:\n  - schedule: {{cron: '{NIGHTLY}', timezone: UTC}}"
    write_pipelines(tmp_path, {"tick": one_job("tick", head=nightly)})
    await clock.backend.write(clock.shipyard.catalog.refresh)
    ticking = clock.schedule_loop()
    await ticking.sync_files()
    (first,) = clock.schedule_store.all("tick")
    assert first.source == "file" and first.next_fire_at == next_fire(NIGHTLY, "UTC", first.created_at)

    await ticking.sync_files()  # nothing changed: the stored schedule, its next fire untouched
    assert clock.schedule_store.all("tick") == [first]


def _missed(schedule_id: str, at: datetime) -> AuditEntry:
    return AuditEntry(
        at=at,
        actor="alice",
        channel="schedule",
        action="schedule_missed",
        target=f"schedule {schedule_id}",
        outcome="skipped",
        reason=f"missed {DUE.isoformat()}",
        detail={},
    )


async def test_a_process_that_died_after_triggering_loses_nothing_and_doubles_nothing(clock: Clock) -> None:
    """Runs are triggered before their occurrences are claimed: if the process that triggered
    them died before claiming, the occurrences are still due, and the next tick finds the runs
    their idempotency keys already made instead of starting second ones."""
    made = clock.add(5)
    died = made[:3]  # the dead process had triggered these three, and claimed nothing
    for schedule in died:
        decision = await clock.shipyard.orchestrator.handle(
            TriggerRun(
                pipeline="tick",
                actor=Actor(schedule.owner, "schedule"),
                idempotency_key=schedule.idempotency_key(DUE),
            )
        )
        assert decision.accepted and decision.state is not None
    assert {s.next_fire_at for s in clock.schedule_store.all()} == {DUE}  # still due

    fired = await clock.schedule_loop().tick(DUE + timedelta(seconds=1))

    assert len([f for f in fired if f.run_ref]) == 5
    runs = clock.scheduled_runs()
    assert sorted(key for key, _ in runs) == sorted(s.idempotency_key(DUE) for s in made)  # one each
    assert {s.next_fire_at for s in clock.schedule_store.all()} == {DUE + timedelta(days=1)}


async def test_an_occurrence_whose_trigger_failed_stays_due_and_fires_on_the_next_tick(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trigger that raises (the database went away mid-burst) leaves its occurrence unclaimed:
    it is not lost, the next tick fires it, and once."""
    made = clock.add(4)
    flaky = made[0].idempotency_key(DUE)
    real = clock.backend.decide
    failures: list[TriggerRun] = []

    async def outage_once(command: Command) -> Decision:
        if isinstance(command, TriggerRun) and command.idempotency_key == flaky and not failures:
            failures.append(command)
            raise ConnectionError("database went away")
        return await real(command)

    monkeypatch.setattr(clock.backend, "decide", outage_once, raising=True)
    ticking = clock.schedule_loop()
    first = await ticking.tick(DUE + timedelta(seconds=1))
    assert [c.idempotency_key for c in failures] == [flaky]  # the outage happened
    assert sorted(f.schedule.id for f in first if f.run_ref) == sorted(s.id for s in made[1:])
    assert clock.schedule_store.get(made[0].id).next_fire_at == DUE  # type: ignore[union-attr]  # still due

    second = await ticking.tick(DUE + timedelta(seconds=2))
    assert [f.schedule.id for f in second if f.run_ref] == [made[0].id]
    assert sorted(key for key, _ in clock.scheduled_runs()) == sorted(s.idempotency_key(DUE) for s in made)


async def test_a_beat_busy_with_a_burst_fires_what_comes_due_meanwhile(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a burst is still firing, the next beats return at once; the busy beat itself looks
    again for what has come due since, instead of leaving it to the beat after the burst."""
    # (the owner's roles are read at the fake moments too: they must come after the grant)
    due = (datetime.now(UTC) + timedelta(minutes=1)).replace(second=0, microsecond=0)
    every_minute = "* * * * *"
    first = clock.add(3, due=due, cron=every_minute)
    later = clock.add(2, due=due + timedelta(minutes=1), cron=every_minute)
    moment = [due + timedelta(milliseconds=100)]
    monkeypatch.setattr("bot.scheduler.now", lambda: moment[0], raising=True)
    real = clock.backend.decide
    slowed: list[Command] = []

    async def slow_burst(command: Command) -> Decision:
        if isinstance(command, TriggerRun) and moment[0] < due + timedelta(minutes=1):
            slowed.append(command)
            moment[0] = due + timedelta(minutes=1, milliseconds=100)  # the next one comes due
            await asyncio.sleep(0.5)
        return await real(command)

    monkeypatch.setattr(clock.backend, "decide", slow_burst, raising=True)
    claimed = await clock.schedule_loop()._claim_due(None)

    assert len(slowed) == 1  # the burst was slow, and the next occurrence came due during it

    assert sorted(c.schedule.id for c in claimed) == sorted(s.id for s in first + later)
    assert sorted(key for key, _ in clock.scheduled_runs()) == sorted(
        [s.idempotency_key(due) for s in first]
        + [s.idempotency_key(due + timedelta(minutes=1)) for s in later]
    )


async def test_an_idle_clock_reads_nothing_until_its_next_fire_or_a_while_has_passed(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The beats of a clock with nothing due read no table: it rests until the next stored fire
    time, or ``QUIET_S`` for schedules another replica adds, whichever comes first."""
    # (owners' roles are read at the moments given: they must come after the grant)
    due = (datetime.now(UTC) + timedelta(minutes=15)).replace(second=0, microsecond=0)
    (nightly,) = clock.add(1, due=due, cron="0 * * * *")
    moment = [due - timedelta(minutes=10)]
    monkeypatch.setattr("bot.scheduler.now", lambda: moment[0], raising=True)
    ticking = clock.schedule_loop()
    reads: list[datetime] = []
    read = ticking.schedule_store.due

    def counted(at: datetime, *args: object) -> list[Schedule]:
        reads.append(at)
        return read(at, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ticking.schedule_store, "due", counted, raising=True)

    async def beats(seconds: int) -> None:
        for _ in range(seconds):
            moment[0] += timedelta(seconds=1)
            await ticking._beat()

    await ticking._beat()
    assert len(reads) == 1
    await beats(int(QUIET_S) - 1)
    assert len(reads) == 1  # at rest: nothing is due for ten minutes
    await beats(1)
    assert len(reads) == 2  # looked again for schedules added elsewhere

    moment[0] = due - timedelta(seconds=2)
    await ticking._beat()  # the rest now ends at the nightly fire time, not later
    assert len(reads) == 3 and clock.scheduled_runs() == []
    await beats(1)
    assert len(reads) == 3
    await beats(1)
    await ticking.stop()  # (waits for the runs it claimed)
    assert [key for key, _ in clock.scheduled_runs()] == [nightly.idempotency_key(due)]


async def test_a_schedule_added_here_wakes_a_resting_clock(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    due = (datetime.now(UTC) + timedelta(minutes=15)).replace(second=0, microsecond=0)
    moment = [due - timedelta(seconds=10)]
    monkeypatch.setattr("bot.scheduler.now", lambda: moment[0], raising=True)
    ticking = clock.schedule_loop()
    await ticking.start()  # (its own beats run at the moment given too)
    try:
        await ticking._beat()  # nothing stored: it rests for QUIET_S
        (added,) = clock.add(1, due=due, cron="0 * * * *")  # due ten seconds from now...
        clock.backend.schedule_added()  # ...added the way REST and Slack add one
        moment[0] = due + timedelta(seconds=1)
        await ticking._beat()
    finally:
        await ticking.stop()
    assert [key for key, _ in clock.scheduled_runs()] == [added.idempotency_key(due)]


async def test_a_stop_lets_the_beat_under_way_finish_instead_of_cutting_it_short(
    clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """APScheduler's executor cancels the jobs it is running when it shuts down: a beat that was
    its job ended half-way, logged as a failed job, and what it claimed went unreported."""
    ticking = clock.schedule_loop()
    entered, finished = asyncio.Event(), []

    async def slow_claim(at: datetime | None) -> list[object]:
        entered.set()
        await asyncio.sleep(0.2)  # (a burst being claimed)
        finished.append(at)
        return []

    monkeypatch.setattr(ticking, "_claim_due", slow_claim, raising=True)
    await ticking.start()
    ticking.poke()  # beat now
    await asyncio.wait_for(entered.wait(), 5)
    await ticking.stop()
    assert finished == [None]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.postgres
async def test_two_replicas_fire_every_occurrence_of_50_schedules_exactly_once(
    replicas: list[Clock],
) -> None:
    first = replicas[0]
    Directory(first.shipyard.store).grant("scheduler", "role", str(Role.DEPLOYER), datetime.now(UTC))
    loops = [replica.schedule_loop() for replica in replicas]
    start = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    for _ in range(50):
        first.schedule_store.new(
            pipeline="tick",
            cron="*/5 * * * *",
            timezone="UTC",
            parameters={},
            owner="scheduler",
            source="api",
            grace_s=3600,
            next_fire_at=start,
            now=start,
        )
    for occurrence in range(4):
        at = start + timedelta(minutes=5 * occurrence, seconds=1)
        results = await asyncio.gather(*(c.tick(at) for c in loops), *(c.tick(at) for c in loops))
        fired = [f for r in results for f in r if f.run_ref]
        assert len(fired) == 50, f"occurrence {occurrence}: {len(fired)} fires"
    runs = first.shipyard.store.list_runs("tick", limit=1000)
    assert len(runs) == 200
    keys = {r.run.idempotency_key for r in runs}
    assert len(keys) == 200 and all(k and k.startswith("schedule:") for k in keys)
