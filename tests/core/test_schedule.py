"""When schedules fire: cron validation, time zones, the two daylight-saving nights, and what
happens to fires missed while the service was down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.errors import InvalidInput
from core.schedule import check_cron, due, next_fire, zone

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("0 2 * *", "must have five fields"),
        ("61 * * * *", "is not valid"),
        ("0 2 * * mon-frii", "is not valid"),
        ("* * * * * *", "must have five fields"),
        ("0 0 30 2 *", "never fires"),  # (parses; only asking for its next fire raised)
        ("0 0 31 2 *", "never fires"),
        ("* * 31 4,6,9,11 *", "never fires"),
    ],
)
def test_bad_cron_expressions_are_refused_with_what_is_wrong(expression: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        check_cron(expression)


def test_a_day_that_exists_only_in_leap_years_is_accepted() -> None:
    assert next_fire(check_cron("0 0 29 2 *"), "UTC", datetime(2026, 1, 1, tzinfo=UTC)).year == 2028


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown time zone 'Mars/Base'"):
        zone("Mars/Base")
    with pytest.raises(InvalidInput, match="unknown time zone 'Europe'"):  # (a directory: OSError)
        zone("Europe")


def test_a_cron_that_fires_only_on_29_february_is_taken() -> None:
    assert check_cron("0 0 29 2 *") == "0 0 29 2 *"


def test_a_weekday_schedule_fires_at_local_time() -> None:
    friday_noon = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    fire = next_fire("0 2 * * 1-5", "Europe/Berlin", friday_noon)
    assert fire.astimezone(BERLIN) == datetime(2026, 11, 30, 2, 0, tzinfo=BERLIN)  # Monday, not Saturday


def nights(expression: str, start: datetime, count: int) -> list[datetime]:
    fires, at = [], start
    for _ in range(count):
        at = next_fire(expression, "Europe/Berlin", at)
        fires.append(at)
    return fires


def test_the_night_the_clock_skips_0230_runs_once_at_0300() -> None:
    fires = nights("30 2 * * *", datetime(2026, 3, 27, 12, 0, tzinfo=UTC), 3)
    local = [f.astimezone(BERLIN) for f in fires]
    assert [(f.day, f.hour, f.minute) for f in local] == [(28, 2, 30), (29, 3, 0), (30, 2, 30)]


def test_the_night_0230_happens_twice_runs_once_at_the_first() -> None:
    fires = nights("30 2 * * *", datetime(2026, 10, 24, 12, 0, tzinfo=UTC), 2)
    assert fires[0] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, the first of the two
    assert fires[1] == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)  # 02:30 CET the next night
    assert len({f.astimezone(BERLIN).date() for f in fires}) == 2


def test_a_fire_missed_within_the_grace_period_runs_once_and_older_ones_are_skipped() -> None:
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    plan = due("0 * * * *", "UTC", due_at, due_at + timedelta(hours=5, minutes=10), grace_s=3600)
    assert plan.fire_at == datetime(2026, 1, 1, 5, 0, tzinfo=UTC)  # only the newest, no backlog
    assert len(plan.missed) == 5
    assert plan.next_fire == datetime(2026, 1, 1, 6, 0, tzinfo=UTC)


def test_a_fire_missed_beyond_the_grace_period_is_skipped() -> None:
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    plan = due("0 0 * * *", "UTC", due_at, due_at + timedelta(hours=2), grace_s=3600)
    assert plan.fire_at is None and plan.missed == (due_at,)
    assert plan.next_fire == datetime(2026, 1, 2, 0, 0, tzinfo=UTC)


def test_a_fire_on_time_has_nothing_missed() -> None:
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    plan = due("*/5 * * * *", "UTC", due_at, due_at + timedelta(seconds=1), grace_s=3600)
    assert (plan.fire_at, plan.missed, plan.next_fire) == (due_at, (), due_at + timedelta(minutes=5))


def test_after_a_downtime_longer_than_the_missed_list_the_newest_fire_still_runs() -> None:
    """A minutely schedule down for eight days misses more fires than are listed: the one due
    a minute ago is still within grace and runs, and the next fire is after now."""
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    now = due_at + timedelta(days=8, seconds=30)
    plan = due("* * * * *", "UTC", due_at, now, grace_s=3600)
    assert plan.fire_at == datetime(2026, 1, 9, 0, 0, tzinfo=UTC)
    assert plan.next_fire == datetime(2026, 1, 9, 0, 1, tzinfo=UTC)
    assert plan.missed[0] == due_at and plan.fire_at not in plan.missed
    assert len(plan.missed) == len(set(plan.missed))
