"""The follow-up review of a break-glass run (``core.review``): when it is due, how often its
thread is reminded, and who may acknowledge it (separation of duties)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import CommandRefused, Forbidden
from core.review import REMIND_EVERY_S, check_acknowledge, open_review, reminder_number

T0 = datetime(2026, 11, 27, 22, 15, tzinfo=UTC)


def test_a_review_is_due_its_environments_review_time_after_the_glass_was_broken() -> None:
    review = open_review("r1", "admin", "prod is down, the fix cannot wait", T0, 2 * 3600)
    assert (review.run_id, review.admin, review.reason) == (
        "r1",
        "admin",
        "prod is down, the fix cannot wait",
    )
    assert (review.opened_at, review.due_at) == (T0, T0 + timedelta(hours=2))
    assert review.acknowledged_by is None and review.acknowledged_at is None
    assert not review.overdue(T0 + timedelta(hours=2))  # due at, not yet over
    assert review.overdue(T0 + timedelta(hours=2, seconds=1))
    done = replace(review, acknowledged_by="carol", acknowledged_at=T0 + timedelta(hours=3))
    assert not done.overdue(T0 + timedelta(days=1))  # acknowledged, however late


def test_the_thread_is_reminded_once_an_hour_while_the_review_waits() -> None:
    review = open_review("r1", "admin", "hotfix", T0, 600)
    hour = timedelta(seconds=REMIND_EVERY_S)
    assert REMIND_EVERY_S == 3600
    assert [reminder_number(review, T0 + d) for d in (timedelta(0), hour - timedelta(seconds=1))] == [0, 0]
    assert reminder_number(review, T0 + hour) == 1
    assert reminder_number(review, T0 + 5 * hour + timedelta(minutes=59)) == 5


def test_neither_the_admin_nor_anyone_who_asked_for_the_run_may_acknowledge_it() -> None:
    review = open_review("r1", "admin", "hotfix", T0, 3600)
    for who in ("admin", "alice", "bob"):
        with pytest.raises(
            Forbidden, match="someone other than whoever broke the glass or asked for the run"
        ):
            check_acknowledge(review, who, ("alice", "bob"))
    check_acknowledge(review, "carol", ("alice", "bob"))
    check_acknowledge(review, "carol", iter(["alice"]))  # (any iterable of requesters)


def test_an_acknowledged_review_says_by_whom_and_when_to_anyone_trying_again() -> None:
    review = replace(
        open_review("r1", "admin", "hotfix", T0, 3600),
        acknowledged_by="carol",
        acknowledged_at=T0 + timedelta(minutes=40),
    )
    for who in ("dave", "admin"):  # (said before who may not: it is done either way)
        with pytest.raises(CommandRefused, match=r"^already acknowledged by carol at 2026-11-27 22:55 UTC$"):
            check_acknowledge(review, who, ())
