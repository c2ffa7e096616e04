"""Analysis verdicts and environment health, from tallies and measurements (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest

from core.analysis import (
    AnalysisStatus,
    CheckTally,
    Health,
    HealthChange,
    announced_as,
    health_of,
    tally,
    verdict,
)
from core.checks import CheckResult, HealthWatch, Measurement, VerifyPolicy

T0 = datetime(2026, 12, 6, 12, 4, 0, tzinfo=UTC)
DEADLINE = T0 + timedelta(minutes=10)
P, F, Q, E = CheckResult.PASSED, CheckResult.FAILED, CheckResult.INCONCLUSIVE, CheckResult.ERROR
DETAIL = {P: "error-rate = 0.001", F: "error-rate = 0.034 > 0.01", Q: "no data", E: "connection refused"}


def m(result: CheckResult, at: int = 0, check: str = "error-rate", detail: str | None = None) -> Measurement:
    return Measurement(check, T0 + timedelta(seconds=at), result, "0.034", detail or DETAIL[result])


def counted(*results: CheckResult) -> CheckTally:
    return reduce(tally, [m(r, at=10 * i) for i, r in enumerate(results)], CheckTally())


def test_tally_counts_each_result_and_errors_in_a_row_reset_on_anything_else() -> None:
    t = counted(P, E, E, F, E, Q, E, E)
    assert (t.measured, t.passed, t.failed, t.inconclusive, t.errors) == (8, 1, 1, 1, 5)
    assert t.consecutive_errors == 2
    assert counted(E, E, E).consecutive_errors == 3
    assert [s.at for s in counted(F, F, F, F).failures] == [T0 + timedelta(seconds=s) for s in (10, 20, 30)]


POLICY = VerifyPolicy.model_validate(
    {
        "checks": ["error-rate"],
        "for": "10m",
        "failure_limit": 2,
        "inconclusive_limit": 2,
        "consecutive_error_limit": 3,
    }
)


@pytest.mark.parametrize(
    ("results", "at_deadline", "status", "reason"),
    [
        ((), False, AnalysisStatus.RUNNING, ""),
        ((P, P), False, AnalysisStatus.RUNNING, ""),
        ((F,), False, AnalysisStatus.RUNNING, ""),  # under the limit
        ((F, P, F), False, AnalysisStatus.FAILED, "error-rate = 0.034 > 0.01 at 12:04:20, twice"),
        ((E, E), False, AnalysisStatus.RUNNING, ""),
        ((E, P, E, E), False, AnalysisStatus.RUNNING, ""),  # not in a row
        ((E, E, E), False, AnalysisStatus.FAILED, "error-rate: could not be measured 3 times in a row"),
        (
            (Q, P, Q),
            False,
            AnalysisStatus.INCONCLUSIVE,
            "error-rate: no data at 12:04:20, inconclusive twice",
        ),
        ((P, P), True, AnalysisStatus.PASSED, "every check passed: error-rate twice"),
        ((P, F), True, AnalysisStatus.PASSED, "every check passed: error-rate once"),
        ((), True, AnalysisStatus.INCONCLUSIVE, "error-rate: no measurement"),
        ((E, E), True, AnalysisStatus.INCONCLUSIVE, "error-rate: no measurement"),
        ((F,), True, AnalysisStatus.INCONCLUSIVE, "error-rate: never passed"),
        ((F, F), True, AnalysisStatus.FAILED, "error-rate = 0.034 > 0.01 at 12:04:10, twice"),
    ],
)
def test_verdict(
    results: tuple[CheckResult, ...], at_deadline: bool, status: AnalysisStatus, reason: str
) -> None:
    now = DEADLINE if at_deadline else T0 + timedelta(minutes=1)
    got_status, got_reason = verdict(POLICY, {"error-rate": counted(*results)}, now, DEADLINE)
    assert got_status is status
    assert got_reason.startswith(reason)


def test_failure_limit_of_one_fails_on_the_first_failed_measurement_and_names_the_check() -> None:
    policy = VerifyPolicy.model_validate({"checks": ["smoke", "error-rate"], "for": "1m"})
    tallies = {"smoke": reduce(tally, [m(F, check="smoke", detail="status 503, expected 200")], CheckTally())}
    assert verdict(policy, tallies, T0, DEADLINE) == (
        AnalysisStatus.FAILED,
        "smoke: status 503, expected 200 at 12:04:00, once",
    )


def test_a_check_never_measured_at_the_deadline_is_inconclusive_even_when_others_passed() -> None:
    policy = VerifyPolicy.model_validate({"checks": ["error-rate", "smoke"], "for": "1m"})
    assert verdict(policy, {"error-rate": counted(P)}, DEADLINE, DEADLINE) == (
        AnalysisStatus.INCONCLUSIVE,
        "smoke: no measurement",
    )


WATCH = HealthWatch(checks=["smoke", "error-rate"], failure_limit=3)


def newest_first(check: str, *results: CheckResult) -> list[Measurement]:
    return [
        m(r, at=-10 * i, check=check, detail="status 503, expected 200" if r is F else None)
        for i, r in enumerate(results)
    ]


@pytest.mark.parametrize(
    ("smoke", "rate", "health", "reason"),
    [
        ((), (), Health.UNKNOWN, "no measurement yet"),
        ((P,), (P, F), Health.HEALTHY, "all 2 checks pass"),
        ((P,), (), Health.DEGRADED, "error-rate: not measured yet"),
        ((F, P), (P,), Health.DEGRADED, "smoke: status 503, expected 200 (1 of 3 in a row)"),
        ((Q,), (P,), Health.DEGRADED, "smoke: no data (inconclusive)"),
        ((F, E, F, P), (P,), Health.UNHEALTHY, "smoke: status 503, expected 200 (3 in a row)"),
        ((E, E, E), (P,), Health.UNHEALTHY, "smoke: connection refused (3 in a row)"),
        ((F, F), (P,), Health.DEGRADED, "smoke: status 503, expected 200 (2 of 3 in a row)"),
    ],
)
def test_health_of(
    smoke: tuple[CheckResult, ...], rate: tuple[CheckResult, ...], health: Health, reason: str
) -> None:
    last = {"smoke": newest_first("smoke", *smoke), "error-rate": newest_first("error-rate", *rate)}
    assert health_of(WATCH, last) == (health, reason)


def test_no_watch_is_unknown() -> None:
    assert health_of(None, {}) == (Health.UNKNOWN, "no health checks")


# -- which health changes are told (damping) ---------------------------------------------------
def _changes(*steps: tuple[int, Health, Health]) -> list[HealthChange]:
    base = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    return [
        HealthChange(i + 1, "production", base + timedelta(seconds=s), was, to, "")
        for i, (s, was, to) in enumerate(steps)
    ]


def test_a_health_change_is_told_once_it_held_as_a_change_from_what_was_told_last() -> None:
    H, D, U, K = Health.HEALTHY, Health.DEGRADED, Health.UNHEALTHY, Health.UNKNOWN
    first, dip, back, down = _changes((0, K, H), (100, H, D), (120, D, H), (200, H, U))
    history = [down, back, dip, first]  # (newest first, as the store reads them)
    assert announced_as(history, first, 60) is K  # held 100 s
    assert announced_as(history, dip, 60) is None  # back after 20 s: a flap
    assert announced_as(history, back, 60) is None  # back to what was told: nothing to tell
    assert announced_as(history, down, 60) is H  # the latest, once its window passed
    quick = _changes((0, K, H), (10, H, D), (20, D, U))
    assert announced_as(quick, quick[2], 60) is K  # none before it held: told from the start
    assert announced_as(quick, quick[1], 0) is H  # 0 s: every change, from what it was
