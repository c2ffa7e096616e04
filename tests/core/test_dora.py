"""DORA's four keys against a month of deployments worked out by hand (the numbers below are
computed on paper from the series, not by the code under test)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.dora import DeploymentFacts, four_keys, parse_window

SINCE = datetime(2026, 11, 1, tzinfo=UTC)
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)  # 30 days


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def deploy(
    finished: datetime,
    status: str = "succeeded",
    *,
    pipeline: str = "web",
    kind: str = "deploy",
    verification: str | None = None,
    marked_bad: bool = False,
    revision_time: datetime | None = None,
) -> DeploymentFacts:
    return DeploymentFacts(finished, status, pipeline, kind, verification, marked_bad, revision_time)


SERIES = [
    # D1: fine; commit 2h before
    deploy(at(2, 10), revision_time=at(2, 8)),
    # D2: its job failed: a failure, the environment is unhealthy from 4 Nov 12:00
    deploy(at(4, 12), "failed", revision_time=at(4, 11)),
    # D3: verified fix 3h later: restores (3h); lead time 30m
    deploy(at(4, 15), verification="verified", revision_time=at(4, 14, 30)),
    # D4: succeeded, commit time unknown, then rolled back by D5: a failure from 8 Nov 09:00
    deploy(at(8, 9)),
    # D5: the rollback restores after 1h; not a change
    deploy(at(8, 10), kind="rollback"),
    # D6: failed verification: a failure from 10 Nov 10:00
    deploy(at(10, 10), "failed", verification="failed", revision_time=at(10, 6)),
    # D7: succeeded but its artifact was marked bad: a failure in the same outage; lead 30m
    deploy(at(10, 11), marked_bad=True, revision_time=at(10, 10, 30)),
    # D8: canceled: counted nowhere
    deploy(at(10, 11, 30), "canceled", revision_time=at(10, 11)),
    # D9: another pipeline's deployment leaves it healthy 3h after D6; its commit time is after
    # it finished (a wrong clock): not a lead time
    deploy(at(10, 13), pipeline="api", revision_time=at(10, 14)),
    # D10: a promotion with an allowed failure; lead 24h
    deploy(at(20, 10), "partial", kind="promotion", revision_time=at(19, 10)),
    # D11: failed, then a rollback that failed too: rolled back, and still unhealthy at the end
    deploy(at(28, 10), "failed", revision_time=at(28, 9)),
    deploy(at(28, 11), "failed", kind="rollback"),
]


def test_every_pipeline() -> None:
    keys = four_keys("production", list(reversed(SERIES)), SINCE, UNTIL)

    # successful changes: D1 D3 D4 D7 D9 D10 = 6 in 30 days
    assert keys.deployment_frequency.deployments == 6
    assert keys.deployment_frequency.per_day == pytest.approx(0.2)
    assert keys.deployment_frequency.per_week == pytest.approx(1.4)
    # known: D1 2h, D3 30m, D7 30m, D10 24h -> median of (1800, 1800, 7200, 86400) = 4500 s;
    # unknown: D4 (none), D9 (after it finished)
    assert keys.lead_time.median_s == 4500
    assert (keys.lead_time.deployments, keys.lead_time.unknown) == (4, 2)
    # changes: D1 D2 D3 D4 D6 D7 D9 D10 D11 = 9; failures: D2 D4 D6 D7 D11 = 5
    rate = keys.change_failure_rate
    assert (rate.failures, rate.deployments) == (5, 9)
    assert rate.rate == pytest.approx(5 / 9)
    assert (rate.failed, rate.failed_verification, rate.rolled_back, rate.marked_bad) == (2, 1, 2, 1)
    # restores: D2->D3 3h, D4->D5 1h, D6(+D7)->D9 3h; D11 not restored
    restore = keys.time_to_restore
    assert restore.median_s == 3 * 3600
    assert (restore.restores, restore.deployments, restore.unrestored) == (3, 4, 1)


def test_one_pipeline() -> None:
    keys = four_keys("production", SERIES, SINCE, UNTIL, pipeline="web")

    # D9 is api's: 5 successful changes, 8 changes
    assert keys.deployment_frequency.deployments == 5
    assert keys.deployment_frequency.per_day == pytest.approx(5 / 30)
    assert keys.lead_time.median_s == 4500
    assert (keys.lead_time.deployments, keys.lead_time.unknown) == (4, 1)
    assert (keys.change_failure_rate.failures, keys.change_failure_rate.deployments) == (5, 8)
    # api's D9 still ends web's outage: the environment is healthy again
    assert keys.time_to_restore.median_s == 3 * 3600
    assert (keys.time_to_restore.restores, keys.time_to_restore.unrestored) == (3, 1)


def test_a_later_failure_ends_no_outage() -> None:
    """Failing again while unhealthy prolongs the outage: timed from the first failure."""
    keys = four_keys(
        "production",
        [deploy(at(1, 10), "failed"), deploy(at(1, 11), "failed"), deploy(at(1, 14))],
        SINCE,
        UNTIL,
    )
    assert keys.time_to_restore.median_s == 4 * 3600
    assert (keys.time_to_restore.restores, keys.time_to_restore.deployments) == (1, 2)
    assert keys.change_failure_rate.rate == pytest.approx(2 / 3)


def test_nothing_deployed() -> None:
    keys = four_keys("staging", [], SINCE, UNTIL)
    assert keys.deployment_frequency.deployments == 0
    assert keys.deployment_frequency.per_day == 0
    assert keys.lead_time.median_s is None
    assert keys.change_failure_rate.rate is None
    assert keys.time_to_restore.median_s is None
    assert keys.time_to_restore.restores == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, timedelta(days=30)), ("7d", timedelta(days=7)), ("12h", timedelta(hours=12))],
)
def test_window(text: str | None, expected: timedelta) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["month", "0d", "400d", "-3d"])
def test_bad_window_says_how(text: str) -> None:
    with pytest.raises(ValueError, match="for example 7d, 30d or 90d"):
        parse_window(text)
