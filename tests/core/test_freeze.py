"""Freeze windows: validation, a weekend freeze in Berlin time (also over the two weekends the
clocks change), one-off date ranges, windows that meet or overlap, and the next freeze."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from core.freeze import FOLLOW_LIMIT, Freeze, active_freeze, next_freeze
from core.schedule import previous_fire

BERLIN = ZoneInfo("Europe/Berlin")
WEEKEND = {"every": "0 16 * * 5", "until": "0 8 * * 1", "timezone": "Europe/Berlin", "reason": "weekend"}


def freeze(**fields: Any) -> Freeze:
    return Freeze.model_validate(fields)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A Berlin wall-clock time that happens once (not in a repeated hour)."""
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN).astimezone(UTC)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"every": "0 16 * *", "until": "0 8 * * 1"}, "must have five fields"),
        ({"every": "61 16 * * 5", "until": "0 8 * * 1"}, "is not valid"),
        ({"every": "0 0 30 2 *", "until": "0 8 * * 1"}, "never fires"),
        ({**WEEKEND, "timezone": "Mars/Base"}, "unknown time zone 'Mars/Base'"),
        ({"every": "0 16 * * 5"}, "needs both `every`"),
        ({"every": "0 8 * * 1", "until": "0 8 * * 1"}, "never be open"),
        ({"from": "2026-12-27T00:00", "to": "2026-12-24T00:00"}, "must be after `from`"),
        ({"from": "2026-12-24T00:00", "to": "2026-12-24T00:00"}, "must be after `from`"),
        # the same instant written in two zones: 01:00 Berlin is 00:00 UTC
        ({"from": "2026-12-24T00:00+00:00", "to": "2026-12-24T01:00", "timezone": "Europe/Berlin"}, "after"),
        ({"from": "2026-12-24T00:00"}, "needs both `from` and `to`"),
        ({"from": "24.12.2026", "to": "2026-12-27"}, "not an ISO date-time"),
        ({**WEEKEND, "from": "2026-12-24", "to": "2026-12-27"}, "not both"),
        ({"reason": "just because"}, "needs `every` and `until`"),
        ({**WEEKEND, "untill": "0 9 * * 1"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_window_is_refused_saying_what_is_wrong(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Freeze.model_validate(fields)


def test_one_off_times_are_local_to_the_zone_unless_they_carry_an_offset() -> None:
    local = freeze(**{"from": "2026-12-24T00:00", "to": "2026-12-27T00:00", "timezone": "Europe/Berlin"})
    assert (local.opens, local.closes) == (utc(2026, 12, 23, 23, 0), utc(2026, 12, 26, 23, 0))
    offset = freeze(**{"from": "2026-12-24T00:00+00:00", "to": "2026-12-27", "timezone": "Europe/Berlin"})
    assert offset.opens == utc(2026, 12, 24, 0, 0)
    # YAML turns unquoted dates into date objects: a date means midnight
    dates = freeze(**{"from": date(2026, 12, 24), "to": date(2026, 12, 27)})
    assert (dates.opens, dates.closes) == (utc(2026, 12, 24), utc(2026, 12, 27))


# -- a recurring window ----------------------------------------------------------------------


def test_the_weekend_freeze_holds_from_friday_1600_to_monday_0800_berlin_time() -> None:
    weekend = [freeze(**WEEKEND)]
    assert active_freeze(weekend, berlin(2026, 11, 25, 12, 0)) is None  # Wednesday
    assert active_freeze(weekend, berlin(2026, 11, 27, 15, 59)) is None
    for at in (berlin(2026, 11, 27, 16, 0), berlin(2026, 11, 28, 12, 0), berlin(2026, 11, 30, 7, 59)):
        frozen = active_freeze(weekend, at)
        assert frozen is not None, at
        assert frozen.starts == berlin(2026, 11, 27, 16, 0)
        assert frozen.until == berlin(2026, 11, 30, 8, 0)
        assert frozen.reasons == ("weekend",)
    assert active_freeze(weekend, berlin(2026, 11, 30, 8, 0)) is None


def test_the_freeze_message_says_until_when_in_the_windows_zone() -> None:
    frozen = active_freeze([freeze(**WEEKEND)], berlin(2026, 11, 28, 12, 0))
    assert frozen is not None
    assert frozen.describe() == "frozen until Mon 30 Nov 2026 08:00 CET (weekend)"


def test_the_weekend_the_clocks_go_back_ends_at_0800_local_which_is_0700_utc() -> None:
    # Sunday 25 Oct 2026 03:00 CEST becomes 02:00 CET: Friday 16:00 is 14:00 UTC, Monday 08:00 is 07:00 UTC
    weekend = [freeze(**WEEKEND)]
    assert active_freeze(weekend, utc(2026, 10, 23, 13, 59)) is None
    for at in (
        utc(2026, 10, 23, 14, 0),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two
        utc(2026, 10, 25, 1, 30),  # 02:30 CET, the second
        utc(2026, 10, 26, 6, 59),
    ):
        frozen = active_freeze(weekend, at)
        assert frozen is not None, at
        assert (frozen.starts, frozen.until) == (utc(2026, 10, 23, 14, 0), utc(2026, 10, 26, 7, 0))
    assert active_freeze(weekend, utc(2026, 10, 26, 7, 0)) is None


def test_the_weekend_the_clocks_go_forward_ends_at_0800_local_which_is_0600_utc() -> None:
    # Sunday 29 Mar 2026 02:00 CET becomes 03:00 CEST: Friday 16:00 is 15:00 UTC, Monday 08:00 is 06:00 UTC
    weekend = [freeze(**WEEKEND)]
    assert active_freeze(weekend, utc(2026, 3, 27, 14, 59)) is None
    frozen = active_freeze(weekend, utc(2026, 3, 29, 1, 30))  # 03:30 CEST, just after the jump
    assert frozen is not None
    assert (frozen.starts, frozen.until) == (utc(2026, 3, 27, 15, 0), utc(2026, 3, 30, 6, 0))
    assert active_freeze(weekend, utc(2026, 3, 30, 5, 59)) is not None
    assert active_freeze(weekend, utc(2026, 3, 30, 6, 0)) is None


def test_a_nightly_window_starting_at_a_skipped_time_starts_when_the_clock_resumes() -> None:
    nightly = [freeze(every="30 2 * * *", until="0 4 * * *", timezone="Europe/Berlin", reason="backups")]
    # 29 Mar 2026 has no 02:30 in Berlin: the window opens at 03:00 CEST (01:00 UTC)
    assert active_freeze(nightly, utc(2026, 3, 29, 0, 59)) is None
    frozen = active_freeze(nightly, utc(2026, 3, 29, 1, 0))
    assert frozen is not None
    assert (frozen.starts, frozen.until) == (utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 2, 0))


def test_the_latest_start_is_found_from_inside_the_repeated_hour() -> None:
    # 02:15 CET (01:15 UTC) reads earlier on the wall clock than 02:30 CEST (00:30 UTC), which
    # already happened that night
    assert previous_fire("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 25, 0, 30)
    assert previous_fire("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 0, 30)
    assert previous_fire("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 29)) == utc(2026, 10, 24, 0, 30)


# -- one-off windows -------------------------------------------------------------------------


def test_a_one_off_range_holds_from_its_start_up_to_its_end() -> None:
    holidays = [
        freeze(
            **{"from": "2026-12-24T00:00", "to": "2026-12-27T00:00", "timezone": "Europe/Berlin"},
            reason="holidays",
        )
    ]
    assert active_freeze(holidays, utc(2026, 12, 23, 22, 59)) is None
    frozen = active_freeze(holidays, utc(2026, 12, 23, 23, 0))
    assert frozen is not None
    assert frozen.until == utc(2026, 12, 26, 23, 0)
    assert frozen.describe() == "frozen until Sun 27 Dec 2026 00:00 CET (holidays)"
    assert active_freeze(holidays, utc(2026, 12, 26, 23, 0)) is None


# -- several windows -------------------------------------------------------------------------


def test_back_to_back_windows_freeze_until_the_last_one_ends() -> None:
    review = freeze(
        **{"from": "2026-11-30T08:00", "to": "2026-12-01T12:00", "timezone": "Europe/Berlin"},
        reason="release review",
    )
    windows = [freeze(**WEEKEND), review]
    frozen = active_freeze(windows, berlin(2026, 11, 28, 12, 0))
    assert frozen is not None
    assert frozen.until == berlin(2026, 12, 1, 12, 0)
    assert frozen.reasons == ("weekend", "release review")
    assert frozen.starts == berlin(2026, 11, 27, 16, 0)


def test_a_window_that_starts_inside_another_extends_the_freeze() -> None:
    # Friday 25 Dec 2026: a holiday until 18:00, and the weekend freeze from 16:00
    christmas = freeze(
        **{"from": "2026-12-25T00:00", "to": "2026-12-25T18:00", "timezone": "Europe/Berlin"},
        reason="christmas",
    )
    frozen = active_freeze([christmas, freeze(**WEEKEND)], berlin(2026, 12, 25, 10, 0))
    assert frozen is not None
    assert frozen.until == berlin(2026, 12, 28, 8, 0)
    assert frozen.reasons == ("christmas", "weekend")
    assert frozen.describe() == "frozen until Mon 28 Dec 2026 08:00 CET (christmas, weekend)"


def test_overlapping_ranges_end_with_the_later_one_and_a_gap_ends_the_freeze() -> None:
    first = freeze(**{"from": "2026-12-24", "to": "2026-12-27"}, reason="a")
    second = freeze(**{"from": "2026-12-26", "to": "2027-01-02"}, reason="b")
    later = freeze(**{"from": "2027-01-03", "to": "2027-01-04"}, reason="c")
    frozen = active_freeze([first, second, later], utc(2026, 12, 25))
    assert frozen is not None
    assert (frozen.until, frozen.reasons) == (utc(2027, 1, 2), ("a", "b"))
    assert active_freeze([first, second, later], utc(2027, 1, 2, 12)) is None


def test_windows_that_cover_all_time_report_an_end_a_year_out_and_answer_quickly() -> None:
    halves = [
        freeze(every="0 0 * * *", until="0 12 * * *", reason="mornings"),
        freeze(every="0 12 * * *", until="0 0 * * *", reason="afternoons"),
    ]
    now = utc(2026, 6, 1, 9, 0)
    began = time.perf_counter()
    frozen = active_freeze(halves, now)
    assert time.perf_counter() - began < 5
    assert frozen is not None
    assert now + FOLLOW_LIMIT <= frozen.until <= now + FOLLOW_LIMIT + timedelta(days=1)
    assert frozen.reasons == ("mornings", "afternoons")


# -- the next freeze -------------------------------------------------------------------------


def test_the_next_freeze_is_the_coming_weekend_within_the_horizon() -> None:
    weekend = [freeze(**WEEKEND)]
    wednesday = berlin(2026, 11, 25, 12, 0)
    upcoming = next_freeze(weekend, wednesday, timedelta(days=7))
    assert upcoming is not None
    assert (upcoming.starts, upcoming.until) == (berlin(2026, 11, 27, 16, 0), berlin(2026, 11, 30, 8, 0))
    assert next_freeze(weekend, wednesday, timedelta(days=1)) is None


def test_during_a_freeze_the_next_one_is_the_one_after_it() -> None:
    weekend = [freeze(**WEEKEND)]
    upcoming = next_freeze(weekend, berlin(2026, 11, 28, 12, 0), timedelta(days=14))
    assert upcoming is not None
    assert upcoming.starts == berlin(2026, 12, 4, 16, 0)


def test_the_next_freeze_takes_the_earliest_window_and_ignores_ranges_in_the_past() -> None:
    past = freeze(**{"from": "2026-01-01", "to": "2026-01-02"}, reason="new year")
    audit = freeze(
        **{"from": "2026-11-26T09:00", "to": "2026-11-26T11:00", "timezone": "Europe/Berlin"},
        reason="audit",
    )
    upcoming = next_freeze([freeze(**WEEKEND), past, audit], berlin(2026, 11, 25, 12, 0), timedelta(days=7))
    assert upcoming is not None
    assert (upcoming.starts, upcoming.until, upcoming.reasons) == (
        berlin(2026, 11, 26, 9, 0),
        berlin(2026, 11, 26, 11, 0),
        ("audit",),
    )
    assert next_freeze([past], utc(2026, 6, 1), timedelta(days=365)) is None
