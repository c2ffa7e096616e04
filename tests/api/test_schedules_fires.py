"""A schedule's fire is the schedule as it was read: one removed, paused or changed between
being read due and its trigger does not fire with what it was; a fire two replicas trigger is
audited once; a schedule that can no longer start a run (its pipeline archived, a cron or
parameters stored before they were refused) is paused once, with the reason shown and
recorded once, instead of being refused at every fire. Fire times are given (no real minutes
pass); on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.scheduler import ScheduleLoop
from core.commands import Command, TriggerRun
from core.engine import Decision
from core.schedule import Schedule
from storage.reads import PipelineInfo
from storage.tables import T
from tests.api.conftest import Api, assert_problem
from tests.api.test_schedules import _by_hand
from tests.api.test_schedules_scale import DUE, Clock, open_clock
from tests.pipelines import API_PIPELINES

YAML = {"Content-Type": "application/yaml"}


@pytest.fixture
async def clock(db_url: str, tmp_path: Path) -> AsyncIterator[Clock]:
    async with open_clock(db_url, tmp_path) as made:
        yield made


def _audited(clock: Clock, action: str) -> list[tuple[str, str]]:
    audit = T["audit"]
    query = sa.select(audit.c.target, audit.c.outcome).where(audit.c.action == action)
    with clock.shipyard.store.engine.connect() as conn:
        return [(target, outcome) for target, outcome in conn.execute(query)]


def _in_the_window(clock: Clock, change: str, schedule: Schedule, done: list[bool]) -> None:
    """Change ``schedule`` the moment its fire's trigger is sent (after the clock read it due)."""
    real = clock.backend.decide
    store = clock.schedule_store

    async def changed_first(command: Command) -> Decision:
        if isinstance(command, TriggerRun) and command.actor.channel == "schedule" and not done:
            at = DUE + timedelta(seconds=1)
            if change == "remove":
                done.append(await clock.backend.write(store.remove, schedule.id, at))
            elif change == "pause":
                done.append(await clock.backend.write(store.pause_by_hand, schedule, "alice", at))
            else:  # paused and resumed: a new version, firing from the next occurrence on
                paused = await clock.backend.write(store.pause_by_hand, schedule, "alice", at)
                again = store.get(schedule.id)
                assert paused and again is not None
                following = DUE + timedelta(days=1)
                done.append(await clock.backend.write(store.resume, again, following, "alice", at))
        return await real(command)

    clock.backend.decide = changed_first  # type: ignore[method-assign]


@pytest.mark.parametrize("change", ["remove", "pause", "pause and resume"])
async def test_a_schedule_changed_after_its_fire_was_read_due_does_not_fire_as_it_was(
    clock: Clock, change: str
) -> None:
    (schedule,) = clock.add(1)
    done: list[bool] = []
    _in_the_window(clock, change, schedule, done)

    fired = await clock.schedule_loop().tick(DUE + timedelta(seconds=1))

    assert done == [True]  # the change was made between the read and the trigger
    assert fired == []  # nothing fired, nothing refused, nothing claimed as it was
    assert clock.scheduled_runs() == []
    assert _audited(clock, "trigger_run") == []
    stored = clock.schedule_store.get(schedule.id)
    if change == "remove":
        assert stored is None
    elif change == "pause":
        assert stored is not None and stored.paused_reason == "paused by alice"
        assert await clock.schedule_loop().tick(DUE + timedelta(days=1, seconds=1)) == []
    else:  # fires again from its next occurrence, as the person who resumed it saw
        assert stored is not None and stored.next_fire_at == DUE + timedelta(days=1)
        (next_night,) = await clock.schedule_loop().tick(DUE + timedelta(days=1, seconds=1))
        assert next_night.run_ref == "tick#1" and next_night.fire_at == DUE + timedelta(days=1)


async def test_a_fire_triggered_by_two_replicas_is_audited_once(clock: Clock) -> None:
    """The second replica read the fire due before the first claimed it: its trigger finds the
    run the first made (a replay) and its claim loses. One fire, one ``trigger_run`` entry."""
    (schedule,) = clock.add(1)
    at = DUE + timedelta(seconds=1)
    read_by_second = clock.schedule_store.due(at)  # (the second replica's read, before the first fires)
    first, second = clock.schedule_loop(), clock.schedule_loop()
    (fired,) = await first.tick(at)
    assert fired.run_ref == "tick#1"
    decisions: list[Decision] = []
    real = clock.backend.decide

    async def recorded(command: Command) -> Decision:
        decisions.append(await real(command))
        return decisions[-1]

    clock.backend.decide = recorded  # type: ignore[method-assign]

    assert await second._claim(read_by_second, at) == []  # the claim is the first's

    assert [d.duplicate for d in decisions] == [True]  # the second did trigger it, a replay
    assert _audited(clock, "trigger_run") == [("tick#1", "accepted")]
    assert [key for key, _ in clock.scheduled_runs()] == [schedule.idempotency_key(DUE)]


async def test_a_stored_cron_refused_since_is_paused_once_shown_with_why_and_never_fires(
    clock: Clock,
) -> None:
    """Stored before ranges croniter reads unlike cron were refused: ``5-1`` would wrap round
    the hour. It is paused at the next sync (within a minute), once, and never fires."""
    (odd,) = clock.add(1, cron="5-1 * * * *")
    (ok,) = clock.add(1, owner="bob")
    loop = clock.schedule_loop()

    await loop.sync_files()
    await loop.sync_files()

    stored = clock.schedule_store.get(odd.id)
    assert stored is not None and "runs backwards" in stored.paused_reason
    assert "stored before such expressions were refused" in stored.paused_reason
    assert _audited(clock, "schedule_paused") == [(f"schedule {odd.id}", "rejected")]
    fired = await loop.tick(DUE + timedelta(seconds=1))
    assert [f.schedule.id for f in fired] == [ok.id]  # (bob holds no role: refused, as before)
    assert clock.scheduled_runs() == []


async def test_a_fire_of_a_schedule_that_can_no_longer_start_a_run_pauses_it_instead(
    clock: Clock,
) -> None:
    """Found at the fire (before any sync): its parameters are ones the pipeline never took."""
    (schedule,) = clock.add(1)
    clock.schedule_store.remove(schedule.id, DUE - timedelta(days=1))
    clock.schedule_store.add(replace(schedule, id="stale", parameters={"x": "1"}))

    (fired,) = await clock.schedule_loop().tick(DUE + timedelta(seconds=1))

    assert fired.run_ref is None and "paused: its parameters no longer start a run of tick" in fired.refused
    assert "'x'" in fired.refused
    assert await clock.schedule_loop().tick(DUE + timedelta(days=1, seconds=1)) == []
    assert _audited(clock, "schedule_paused") == [("schedule stale", "rejected")]
    assert _audited(clock, "trigger_run") == []


async def test_a_persons_schedule_of_an_archived_pipeline_is_paused_shown_and_resumed(lite: Api) -> None:
    loop: ScheduleLoop = _by_hand(lite)
    made = (await lite.post("/schedules", "deployer", json={"pipeline": "quick", "cron": "0 2 * * *"})).json
    assert made["paused"] is False and made["paused_reason"] is None
    assert (await lite.call("DELETE", "/pipelines/quick", "admin")).status == 200
    due = datetime.fromisoformat(made["next_fire_at"])

    (fired,) = await loop.tick(due + timedelta(seconds=1))
    assert fired.run_ref is None and "archived" in fired.refused
    for night in range(1, 4):  # the nights after: nothing fires, nothing is recorded again
        assert await loop.tick(due + timedelta(days=night, seconds=1)) == []
    await loop.sync_files()

    (listed,) = (await lite.get("/schedules")).json["items"]
    assert listed["paused"] is True and "pipeline 'quick' is archived" in listed["paused_reason"]
    assert listed["next_fire_at"] is None  # (not the night that was not fired)
    assert (await lite.get(f"/schedules/{made['id']}")).json["paused_reason"] == listed["paused_reason"]
    audit = (await lite.get("/audit?limit=100", "admin")).json["items"]
    assert [e["action"] for e in audit].count("schedule_paused") == 1
    assert "trigger_run" not in [e["action"] for e in audit]

    refused = await lite.post(f"/schedules/{made['id']}/resume", "deployer")
    assert_problem(refused, 409, "is archived")
    assert_problem(await lite.post(f"/schedules/{made['id']}/resume", "deployer2"), 403, "belongs to")
    restored = await lite.post("/pipelines", "admin", data=API_PIPELINES["quick"], headers=YAML)
    assert restored.status == 201, restored.text
    resumed = await lite.post(f"/schedules/{made['id']}/resume", "deployer")
    assert resumed.status == 200, resumed.text
    assert resumed.json["paused"] is False
    following = datetime.fromisoformat(resumed.json["next_fire_at"])
    assert following > datetime.now(UTC) - timedelta(seconds=5)  # the nights it missed do not run
    (fired,) = await loop.tick(following + timedelta(seconds=1))
    assert fired.run_ref == "quick#1"


async def test_a_schedule_is_paused_and_resumed_by_its_owner_over_rest(lite: Api) -> None:
    loop: ScheduleLoop = _by_hand(lite)
    made = (await lite.post("/schedules", "deployer", json={"pipeline": "quick", "cron": "0 2 * * *"})).json
    assert_problem(await lite.post(f"/schedules/{made['id']}/pause", "deployer2"), 403, "belongs to deployer")
    paused = await lite.post(f"/schedules/{made['id']}/pause", "deployer")
    assert paused.status == 200 and paused.json["paused_reason"] == "paused by deployer"
    assert paused.json["next_fire_at"] is None
    assert_problem(await lite.post(f"/schedules/{made['id']}/pause", "deployer"), 409, "paused already")
    due = datetime.fromisoformat(made["next_fire_at"])
    assert await loop.tick(due + timedelta(seconds=1)) == []
    assert (await lite.post(f"/schedules/{made['id']}/resume", "admin")).status == 200
    assert_problem(await lite.post(f"/schedules/{made['id']}/resume", "deployer"), 409, "is not paused")
    assert_problem(await lite.post("/schedules/nope/pause", "deployer"), 404, "no schedule 'nope'")


async def test_a_schedule_with_no_grace_still_fires_when_the_clock_is_a_moment_late(lite: Api) -> None:
    """``grace_seconds: 0`` means "never run a fire late", not "never run": the clock beats on
    the whole second and a burst takes a while, so a fire read a few seconds after its time is
    on time. One missed beyond that is skipped as before."""
    loop = _by_hand(lite)
    body = {"pipeline": "quick", "cron": "0 * * * *", "grace_seconds": 0}
    made = (await lite.post("/schedules", "deployer", json=body)).json
    due = datetime.fromisoformat(made["next_fire_at"])

    (fired,) = await loop.tick(due + timedelta(seconds=2))

    assert fired.run_ref == "quick#1" and fired.missed is None
    (late,) = await loop.tick(due + timedelta(hours=1, minutes=5))
    assert late.run_ref is None and late.missed is not None and late.missed.count == 1


async def test_a_schedule_of_a_pipeline_added_while_the_sync_read_the_others_is_not_paused(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync reads every pipeline a page at a time, then the schedules: a pipeline added (or
    restored) in between, and a schedule of it, must not be taken for gone."""
    (schedule,) = clock.add(1)
    loop = clock.schedule_loop()
    pages = loop._every_pipeline
    skipped: list[str] = []

    async def before_tick_was_added() -> AsyncIterator[PipelineInfo]:
        async for info in pages():
            if info.name == "tick":
                skipped.append(info.name)
            else:
                yield info

    monkeypatch.setattr(loop, "_every_pipeline", before_tick_was_added)

    await loop.sync_files()

    assert skipped == ["tick"]  # the sync did not see it among the pipelines
    stored = clock.schedule_store.get(schedule.id)
    assert stored is not None and stored.paused_reason == ""
    assert _audited(clock, "schedule_paused") == []


async def test_a_stored_schedule_whose_next_fire_cannot_be_worked_out_is_paused_not_retried_each_second(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """A time zone the zone database no longer has: the clock cannot work out its fires. It
    was left due, and every beat (each second) logged the same traceback, forever."""
    (schedule,) = clock.add(1)
    clock.schedule_store.remove(schedule.id, DUE - timedelta(days=1))
    clock.schedule_store.add(replace(schedule, id="gone-zone", timezone="Mars/Olympus_Mons"))
    loop = clock.schedule_loop()

    (fired,) = await loop.tick(DUE + timedelta(seconds=1))

    assert fired.run_ref is None and "unknown time zone 'Mars/Olympus_Mons'" in fired.refused
    assert await loop.tick(DUE + timedelta(seconds=2)) == []
    assert await loop.tick(DUE + timedelta(days=1)) == []
    stored = clock.schedule_store.get("gone-zone")
    assert stored is not None and "unknown time zone" in stored.paused_reason
    assert _audited(clock, "schedule_paused") == [("schedule gone-zone", "rejected")]
    assert not [r for r in caplog.records if "cannot work out its next fire" in r.getMessage()]
