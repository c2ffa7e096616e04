"""When schedules fire: cron validation, time zones, the two daylight-saving nights, and what
happens to fires missed while the service was down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from core.definition import PipelineDef, parse_pipeline
from core.errors import DefinitionError, InvalidInput
from core.schedule import MAX_MISSED, Missed, check_cron, due, next_fire, zone

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
        # croniter takes these, but reads them unlike cron
        ("5-1 * * * *", r"range 5-1 in the minute field runs backwards \(write 5-59,0-1 instead\)"),
        ("0 0 * nov-feb *", "range nov-feb in the month field runs backwards"),
        ("0 0 * * 7-1", r"write 0-1 instead"),  # (7 is Sunday too)
        ("5-5 * * * *", "range 5-5 in the minute field does not go up"),  # (croniter: every minute)
        ("*/61 * * * *", "step /61 in the minute field does not fit in 0-59, so it would fire only at 0"),
        ("*/60 * * * *", "would fire only at 0"),
        ("0 */25 * * *", "hour field"),
        ("0 0 */32 * *", "day-of-month field"),
        ("10/55 * * * *", "does not fit in 10-59"),  # ("10/55" is "10-59/55")
    ],
)
def test_bad_cron_expressions_are_refused_with_what_is_wrong(expression: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        check_cron(expression)


@pytest.mark.parametrize(
    "expression", ["0 2 * * 1-5", "*/15 9-17 * * mon-fri", "0 0 * * 5-7", "*/59 * * * *", "0 0 L * *"]
)
def test_ranges_and_steps_that_read_as_cron_are_taken(expression: str) -> None:
    assert check_cron(expression) == expression


NIGHTLY = """
name: nightly
triggers:
  - schedule: {cron: "*/61 * * * *"}
stages:
  - name: build
    jobs: [{name: make, run: "true"}]
"""


def test_a_pipeline_file_with_an_odd_cron_is_refused_but_a_stored_one_still_loads() -> None:
    """A definition stored before such expressions were refused is read back as it was saved
    (the pipeline and its runs must still load); a file given now is refused."""
    with pytest.raises(DefinitionError, match=r"triggers\[0\]\.schedule\.cron: .*step /61 in the minute"):
        parse_pipeline(NIGHTLY)
    stored = {
        "name": "nightly",
        "triggers": [{"schedule": {"cron": "*/61 * * * *"}}],
        "stages": [{"name": "build", "jobs": [{"name": "make", "run": "true"}]}],
    }
    assert PipelineDef.model_validate(stored).triggers[0].schedule.cron == "*/61 * * * *"


def test_a_pipeline_file_whose_schedule_cannot_start_a_run_is_refused() -> None:
    """Its parameters are checked as a run's are: else every fire is refused, the first the
    morning after the file was saved."""
    text = NIGHTLY.replace('{cron: "*/61 * * * *"}', '{cron: "0 2 * * *", parameters: {rev: main}}')
    text = text.replace("triggers:", "parameters:\n  - {name: ref, required: true}\ntriggers:")
    with pytest.raises(DefinitionError, match=r"unknown parameter 'rev' .*; parameter ref is required"):
        parse_pipeline(text)
    assert parse_pipeline(text.replace("rev: main", "ref: main")).triggers[0].schedule.parameters == {
        "ref": "main"
    }


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
    assert plan.missed == Missed(5, due_at, datetime(2026, 1, 1, 4, 0, tzinfo=UTC))
    assert plan.next_fire == datetime(2026, 1, 1, 6, 0, tzinfo=UTC)


def test_a_fire_missed_beyond_the_grace_period_is_skipped() -> None:
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    plan = due("0 0 * * *", "UTC", due_at, due_at + timedelta(hours=2), grace_s=3600)
    assert plan.fire_at is None and plan.missed == Missed(1, due_at, due_at)
    assert plan.missed.describe() == "missed 2026-01-01T00:00:00+00:00"
    assert plan.next_fire == datetime(2026, 1, 2, 0, 0, tzinfo=UTC)


def test_a_fire_on_time_has_nothing_missed() -> None:
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    plan = due("*/5 * * * *", "UTC", due_at, due_at + timedelta(seconds=1), grace_s=3600)
    assert (plan.fire_at, plan.missed, plan.next_fire) == (due_at, None, due_at + timedelta(minutes=5))


def test_after_a_downtime_longer_than_is_counted_the_newest_fire_still_runs() -> None:
    """A minutely schedule down for eight days misses more fires than are counted: the one due
    a minute ago is still within grace and runs, the next fire is after now, and what was
    missed is said truly: from the first to the one before the fire that runs, more than
    ``MAX_MISSED`` of them."""
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    now = due_at + timedelta(days=8, seconds=30)
    plan = due("* * * * *", "UTC", due_at, now, grace_s=3600)
    assert plan.fire_at == datetime(2026, 1, 9, 0, 0, tzinfo=UTC)
    assert plan.next_fire == datetime(2026, 1, 9, 0, 1, tzinfo=UTC)
    last = datetime(2026, 1, 8, 23, 59, tzinfo=UTC)
    assert plan.missed == Missed(MAX_MISSED, due_at, last, exact=False)
    assert plan.missed.describe() == (
        f"missed more than {MAX_MISSED} fires, 2026-01-01T00:00:00+00:00 to 2026-01-08T23:59:00+00:00"
    )


def test_a_downtime_of_exactly_what_is_counted_is_counted_exactly() -> None:
    due_at = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    now = due_at + timedelta(minutes=MAX_MISSED)  # MAX_MISSED + 1 fires; the newest runs
    plan = due("* * * * *", "UTC", due_at, now, grace_s=3600)
    assert plan.fire_at == now
    assert plan.missed == Missed(MAX_MISSED, due_at, now - timedelta(minutes=1))


def _every(expression: str, start: datetime, count: int) -> list[datetime]:
    fires, at = [], start
    for _ in range(count):
        at = next_fire(expression, "Europe/Berlin", at)
        fires.append(at)
    return fires


def test_a_schedule_every_quarter_hour_keeps_firing_through_the_hour_the_clock_repeats() -> None:
    """Its hour field is ``*``: it runs by the real clock (as cron does), every 15 minutes
    through both passes of 02:00-03:00 on the night clocks fall back, not silent for 75."""
    start = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00 CEST; at 03:00 CEST it is 02:00 CET
    fires = _every("*/15 * * * *", start, 9)
    assert fires == [start + timedelta(minutes=15 * i) for i in range(1, 10)]


def test_an_hourly_schedule_fires_every_real_hour_on_both_daylight_saving_nights() -> None:
    autumn = _every("0 * * * *", datetime(2026, 10, 24, 23, 30, tzinfo=UTC), 4)
    assert autumn == [datetime(2026, 10, 25, h, 0, tzinfo=UTC) for h in range(4)]  # 02:00 twice
    spring = _every("30 * * * *", datetime(2026, 3, 29, 0, 0, tzinfo=UTC), 3)
    # 01:30 CET, then 03:30 CEST: 02:30 does not exist, and no extra fire at 03:00
    assert spring == [datetime(2026, 3, 29, h, 30, tzinfo=UTC) for h in range(3)]
