"""Schedules through the REST API, fired by the clock at given times (no real minutes pass):
CRUD, ownership and misfires (two replicas: test_schedules_scale.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot import scheduler
from bot.app import CLOCK
from bot.scheduler import ScheduleLoop
from core import schedule as schedule_module
from core.schedule import Due, due, next_fire
from storage.directory import Directory
from tests.api.conftest import Api, assert_problem
from tests.pipelines import one_job


def _by_hand(api: Api) -> ScheduleLoop:
    """The app's clock, its own beat paused: the test ticks it past an occurrence by hand, and a
    real beat reaching that occurrence first (a test crossing a whole minute or hour) would have
    fired it already, leaving the test's tick nothing."""
    clock = api.client.app[CLOCK]  # type: ignore[index]
    assert clock.scheduler is not None and clock.scheduler.running
    clock.scheduler.pause()
    return clock


async def test_a_schedule_is_created_listed_fired_once_per_occurrence_and_removed(api: Api) -> None:
    clock = _by_hand(api)
    made = await api.post(
        "/schedules",
        "deployer",
        json={
            "pipeline": "web",
            "cron": "0 2 * * *",
            "timezone": "Europe/Berlin",
            "parameters": {"ref": "abc1234"},
        },
    )
    assert made.status == 201, made.text
    schedule = made.json
    assert (
        schedule["owner"] == "deployer" and made.headers["Location"] == f"/api/v1/schedules/{schedule['id']}"
    )
    listed = (await api.get("/schedules")).json["items"]
    assert [s["id"] for s in listed] == [schedule["id"]]

    due = datetime.fromisoformat(schedule["next_fire_at"])
    assert await clock.tick(due - timedelta(seconds=1)) == []
    fired = await clock.tick(due + timedelta(seconds=3))
    assert [f.run_ref for f in fired] == ["web#1"]
    assert await clock.tick(due + timedelta(seconds=4)) == []  # the occurrence is claimed
    run = await api.run("web#1")
    assert run["triggered_by"] == {"principal": "deployer", "channel": "schedule"}
    assert run["parameters"]["ref"] == "abc1234"
    after = (await api.get(f"/schedules/{schedule['id']}")).json
    assert datetime.fromisoformat(after["next_fire_at"]) == due + timedelta(days=1)

    assert_problem(
        await api.call("DELETE", f"/schedules/{schedule['id']}", "deployer2"), 403, "belongs to deployer"
    )
    assert (await api.call("DELETE", f"/schedules/{schedule['id']}", "deployer")).status == 200
    assert (await api.get("/schedules")).json["items"] == []


async def test_bad_schedules_are_refused_with_what_to_fix(lite: Api) -> None:
    bad_cron = await lite.post("/schedules", "deployer", json={"pipeline": "web", "cron": "0 2 * *"})
    assert_problem(bad_cron, 422, "cron")
    backwards = await lite.post("/schedules", "deployer", json={"pipeline": "web", "cron": "5-1 * * * *"})
    assert_problem(backwards, 422, "runs backwards")
    too_far = await lite.post("/schedules", "deployer", json={"pipeline": "web", "cron": "*/61 * * * *"})
    assert_problem(too_far, 422, "would fire only at 0")
    typo = {"pipeline": "web", "cron": "0 2 * * *", "parameters": {"rev": "abc1234"}}  # (every fire refused)
    assert_problem(await lite.post("/schedules", "deployer", json=typo), 422, "unknown parameter 'rev'")
    bad_zone = await lite.post(
        "/schedules", "deployer", json={"pipeline": "web", "cron": "0 2 * * *", "timezone": "X/Y"}
    )
    assert_problem(bad_zone, 422, "unknown time zone")
    assert_problem(
        await lite.post("/schedules", "deployer", json={"pipeline": "nope", "cron": "* * * * *"}), 404
    )
    assert_problem(
        await lite.post("/schedules", "viewer", json={"pipeline": "web", "cron": "* * * * *"}), 403
    )


async def test_after_downtime_only_a_fire_within_grace_runs_and_older_ones_are_recorded_missed(
    lite: Api,
) -> None:
    clock = _by_hand(lite)
    made = (
        await lite.post(
            "/schedules",
            "deployer",
            json={"pipeline": "quick", "cron": "0 * * * *", "grace_seconds": 600},
        )
    ).json
    due = datetime.fromisoformat(made["next_fire_at"])
    late = await clock.tick(due + timedelta(hours=3, minutes=20))  # down for hours: all beyond grace
    assert [(f.fire_at, f.missed and f.missed.count) for f in late] == [(None, 4)]
    (audit,) = (await lite.get("/audit?action=schedule_missed", "admin")).json["items"]  # one for all
    last = due + timedelta(hours=3)
    assert audit["reason"] == f"missed 4 fires, {due.isoformat()} to {last.isoformat()}"
    assert (audit["detail"]["missed"], audit["detail"]["exact"]) == (4, True)
    runs = (await lite.get("/runs?pipeline=quick")).json["items"]
    assert runs == []
    nxt = datetime.fromisoformat((await lite.get(f"/schedules/{made['id']}")).json["next_fire_at"])
    assert nxt == due + timedelta(hours=4)


async def test_catching_up_on_a_long_downtime_is_worked_out_off_the_event_loop(
    lite: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A minutely schedule down for eight days has 11,520 fires to account for (most of a second
    of CPU): worked out beside the event loop, so Slack and REST are answered meanwhile; the
    newest fire, within grace, still runs."""
    clock = _by_hand(lite)
    made = await lite.post(
        "/schedules", "deployer", json={"pipeline": "quick", "cron": "* * * * *", "grace_seconds": 600}
    )
    on_loop: list[bool] = []

    def watched(*args: Any) -> Due:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return due(*args)

    monkeypatch.setattr(schedule_module, "due", watched, raising=True)
    at = datetime.fromisoformat(made.json["next_fire_at"]) + timedelta(days=8, seconds=30)
    fired = await clock.tick(at)
    assert [f.run_ref for f in fired] == ["quick#1"]
    assert on_loop == [False]
    (audit,) = (await lite.get("/audit?action=schedule_missed", "admin")).json["items"]  # not 10,000
    assert audit["reason"].startswith("missed more than 10000 fires")


async def test_schedules_declared_in_a_pipeline_follow_its_definition(lite: Api) -> None:
    trigger = "triggers:\n  - schedule: {cron: '30 2 * * *', timezone: Europe/Berlin, "
    trigger += "parameters: {dry_run: true}}\n"
    takes = "parameters:\n  - {name: dry_run, type: boolean, default: false}\n"
    text = one_job("nightly", head=takes + trigger)
    yaml = {"Content-Type": "application/yaml"}
    assert (await lite.post("/pipelines", "admin", data=text, headers=yaml)).status == 201
    clock = lite.client.app[CLOCK]  # type: ignore[index]
    await clock.sync_files()
    (declared,) = [s for s in (await lite.get("/schedules")).json["items"] if s["pipeline"] == "nightly"]
    assert (declared["source"], declared["owner"], declared["parameters"]) == (
        "file",
        "scheduler",
        {"dry_run": "true"},
    )
    assert_problem(await lite.call("DELETE", f"/schedules/{declared['id']}", "admin"), 409, "edit the file")
    await clock.sync_files()  # unchanged: the same schedule, not a new one
    assert [s["id"] for s in (await lite.get("/schedules")).json["items"]] == [declared["id"]]
    # archived, it starts no runs: its schedules go, and come back once it is restored
    assert (await lite.call("DELETE", "/pipelines/nightly", "admin")).status == 200
    await clock.sync_files()
    assert (await lite.get("/schedules")).json["items"] == []
    assert (await lite.post("/pipelines", "admin", data=text, headers=yaml)).status == 201  # (restored)
    await clock.sync_files()
    assert [s["id"] for s in (await lite.get("/schedules")).json["items"]] == [declared["id"]]
    without = text.replace(trigger, "")
    assert (await lite.call("PUT", "/pipelines/nightly", "admin", data=without, headers=yaml)).status == 200
    await clock.sync_files()
    assert (await lite.get("/schedules")).json["items"] == []


async def test_every_pipelines_file_schedules_are_synced_however_many_pipelines_there_are(
    lite: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipelines are read a page at a time: the ones past the first page count too."""
    monkeypatch.setattr(scheduler, "SYNC_PAGE", 2)
    trigger = "triggers:\n  - schedule: {cron: '0 3 * * *'}\n"
    yaml = {"Content-Type": "application/yaml"}
    names = [f"nightly-{i}" for i in range(5)]
    for name in names:
        assert (
            await lite.post("/pipelines", "admin", data=one_job(name, head=trigger), headers=yaml)
        ).status == 201
    clock = lite.client.app[CLOCK]  # type: ignore[index]
    pages = []
    read = clock.backend.reads.pipelines
    monkeypatch.setattr(clock.backend.reads, "pipelines", lambda *a: pages.append(a[0]) or read(*a))
    await clock.sync_files()
    assert len(pages) >= 3  # (the fixture's own pipelines come first: more pages, not fewer)
    synced = {s["pipeline"] for s in (await lite.get("/schedules")).json["items"] if s["source"] == "file"}
    assert synced == set(names)


async def test_a_schedule_whose_owner_lost_the_right_to_deploy_does_not_run(lite: Api) -> None:
    clock = _by_hand(lite)
    made = (await lite.post("/schedules", "deployer", json={"pipeline": "quick", "cron": "* * * * *"})).json
    directory = Directory(lite.store)
    await lite.db(directory.revoke_grant, "deployer", "role", "deployer", datetime.now(UTC))
    due = datetime.fromisoformat(made["next_fire_at"])
    (fired,) = await clock.tick(due + timedelta(seconds=1))
    assert fired.run_ref is None and "may no longer start runs" in fired.refused
    assert (await lite.get("/runs?pipeline=quick")).json["items"] == []
    # paused once with why, not refused and audited again at every fire after
    assert await clock.tick(due + timedelta(minutes=1, seconds=1)) == []
    shown = (await lite.get(f"/schedules/{made['id']}")).json
    assert shown["paused_reason"] == "deployer may no longer start runs (roles: none)"
    audit = (await lite.get("/audit?limit=100", "admin")).json["items"]
    assert [e["action"] for e in audit if e["target"] == f"schedule {made['id']}"] == ["schedule_paused"]


async def test_a_schedule_whose_owner_has_every_token_revoked_does_not_run(lite: Api) -> None:
    """Roles still granted, but the owner cannot act any more: as for an incoming trigger."""
    clock = _by_hand(lite)
    made = (await lite.post("/schedules", "deployer", json={"pipeline": "quick", "cron": "* * * * *"})).json
    directory = Directory(lite.store)
    await lite.db(directory.revoke_token, "deployer", datetime.now(UTC))
    (fired,) = await clock.tick(datetime.fromisoformat(made["next_fire_at"]) + timedelta(seconds=1))
    assert fired.run_ref is None and "every API token revoked" in fired.refused
    assert (await lite.get("/runs?pipeline=quick", "admin")).json["items"] == []


async def test_a_schedule_added_over_rest_wakes_a_resting_clock(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing due the clock rests (``QUIET_S``); a schedule added here makes it look again,
    so an occurrence due before the rest would have ended still fires on time."""
    real = datetime.now(UTC)
    hour = 3 if real.hour == 1 and real.minute == 59 else 2  # (not crossing the fire time meanwhile)
    due = next_fire(f"0 {hour} * * *", "UTC", real)
    clock = api.client.app[CLOCK]  # type: ignore[index]
    moment = [due - timedelta(seconds=10)]
    monkeypatch.setattr("bot.scheduler.now", lambda: moment[0], raising=True)
    await clock._beat()  # nothing stored: it rests until QUIET_S after the moment given
    made = await api.post(
        "/schedules",
        "deployer",
        json={"pipeline": "web", "cron": f"0 {hour} * * *", "parameters": {"ref": "abc1234"}},
    )
    assert made.status == 201 and datetime.fromisoformat(made.json["next_fire_at"]) == due
    for _ in range(200):  # (the poke also beats at once, in the background: let that beat end)
        if clock._beating is None:
            break
        await asyncio.sleep(0.01)
    moment[0] = due + timedelta(seconds=1)
    await clock._beat()
    for _ in range(100):
        if (await api.get("/runs/web%231")).status == 200:
            break
        await asyncio.sleep(0.05)
    run = await api.run("web#1")
    assert run["triggered_by"] == {"principal": "deployer", "channel": "schedule"}


async def test_an_archived_pipeline_cannot_be_scheduled(lite: Api) -> None:
    """It starts no runs: a schedule of it would be refused at every fire (Slack says so too)."""
    assert (await lite.call("DELETE", "/pipelines/quick", "admin")).status == 200
    made = await lite.post("/schedules", "deployer", json={"pipeline": "quick", "cron": "0 2 * * *"})
    assert_problem(made, 409, "'quick' is archived")
    assert (await lite.get("/schedules")).json["items"] == []


async def test_a_cron_expression_that_never_fires_is_refused_not_an_internal_error(lite: Api) -> None:
    made = await lite.post("/schedules", "deployer", json={"pipeline": "quick", "cron": "0 0 30 2 *"})
    assert_problem(made, 422, "never fires")
    assert (await lite.get("/schedules")).json["items"] == []
