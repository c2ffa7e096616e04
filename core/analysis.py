"""Analysis: what a run of measurements says, with Argo Rollouts' semantics. Pure: the loop that
measures (``core/runtime/analyses.py``) and the store that keeps the counts
(``storage/analyses.py``) bring the measurements and the clock.

An analysis measures its checks (``core/checks.py``) every ``interval``. Two kinds:

* ``verify``: after a deployment, for the verify policy's ``for``; ``verdict`` turns the
  checks' tallies into ``passed``, ``failed``, ``inconclusive`` (paused: a person decides) or
  ``running``.
* ``health``: one per environment, never ending; ``health_of`` turns each watched check's
  latest measurements into the environment's ``Health``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from core.checks import CheckResult, HealthWatch, Measurement, VerifyPolicy

#: failed measurements a tally keeps for the reason it gives
KEEP_FAILURES = 3


class AnalysisKind(StrEnum):
    HEALTH = "health"  #: an environment's checks, watched all the time
    VERIFY = "verify"  #: a deployment's verification, for a while
    ROLLOUT = "rollout"  #: a canary step's analysis (``core.rollout``), with the step's own limits


class AnalysisStatus(StrEnum):
    RUNNING = "running"  #: still measuring
    PASSED = "passed"  #: every check passed until the deadline
    FAILED = "failed"  #: a check failed (or errored) too often
    INCONCLUSIVE = "inconclusive"  #: paused: a person decides
    CANCELED = "canceled"  #: ended by a person, or by the run it verified


class Health(StrEnum):
    HEALTHY = "healthy"  #: every watched check's latest measurement passed
    DEGRADED = "degraded"  #: some check failing (under its limit), inconclusive or not measured yet
    UNHEALTHY = "unhealthy"  #: some check failed its last ``failure_limit`` measurements
    UNKNOWN = "unknown"  #: no checks watched, or no data yet


@dataclass(frozen=True, slots=True)
class Seen:
    """A measurement kept for a reason: when, what was measured, and the words for it."""

    at: datetime
    value: str | None
    detail: str

    @classmethod
    def of(cls, m: Measurement) -> Seen:
        return cls(m.at, m.value, m.detail)


@dataclass(frozen=True, slots=True)
class CheckTally:
    """The counts of one check in one analysis (stored with it, so a restart resumes them)."""

    measured: int = 0
    passed: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    #: errors since the last measurement that was not one
    consecutive_errors: int = 0
    #: the last few failed measurements, oldest first
    failures: tuple[Seen, ...] = ()
    last_error: Seen | None = None
    last_inconclusive: Seen | None = None


def tally(t: CheckTally, m: Measurement) -> CheckTally:
    """``t`` after measurement ``m``; anything but an error resets ``consecutive_errors``."""
    t = replace(t, measured=t.measured + 1)
    seen = Seen.of(m)
    match m.result:
        case CheckResult.PASSED:
            return replace(t, passed=t.passed + 1, consecutive_errors=0)
        case CheckResult.FAILED:
            failures = (*t.failures, seen)[-KEEP_FAILURES:]
            return replace(t, failed=t.failed + 1, consecutive_errors=0, failures=failures)
        case CheckResult.INCONCLUSIVE:
            return replace(t, inconclusive=t.inconclusive + 1, consecutive_errors=0, last_inconclusive=seen)
        case CheckResult.ERROR:
            return replace(
                t, errors=t.errors + 1, consecutive_errors=t.consecutive_errors + 1, last_error=seen
            )


def times(n: int) -> str:
    """``once``, ``twice``, ``3 times``."""
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _said(check: str, detail: str) -> str:
    """A measurement's words, named for its check (details may name it already)."""
    return detail if detail.startswith(check) else f"{check}: {detail}"


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S")


def verdict(
    policy: VerifyPolicy, tallies: Mapping[str, CheckTally], now: datetime, deadline: datetime
) -> tuple[AnalysisStatus, str]:
    """What a verification says now, with its reason.

    ``failed`` as soon as any check has ``failure_limit`` failed measurements (this many failed
    measurements fail it: ``failure_limit: 2`` fails on the second) or ``consecutive_error_limit``
    errors in a row; ``inconclusive`` (a person decides) once any check has ``inconclusive_limit``
    inconclusive ones. Otherwise ``running`` until ``deadline``, then ``passed`` if every check
    passed at least once, else ``inconclusive`` ("smoke: no measurement"). Checks are looked at
    in the policy's order, so the reason names the first that decided."""
    checks = [(name, tallies.get(name, CheckTally())) for name in policy.checks]
    for name, t in checks:
        if t.failed >= policy.failure_limit and t.failures:
            last = t.failures[-1]
            return (
                AnalysisStatus.FAILED,
                f"{_said(name, last.detail)} at {_clock(last.at)}, {times(t.failed)}",
            )
        if t.consecutive_errors >= policy.consecutive_error_limit and t.last_error is not None:
            last = t.last_error
            return (
                AnalysisStatus.FAILED,
                f"{name}: could not be measured {t.consecutive_errors} times in a row "
                f"(last at {_clock(last.at)}: {last.detail})",
            )
    for name, t in checks:
        if t.inconclusive >= policy.inconclusive_limit and t.last_inconclusive is not None:
            last = t.last_inconclusive
            return (
                AnalysisStatus.INCONCLUSIVE,
                f"{_said(name, last.detail)} at {_clock(last.at)}, inconclusive {times(t.inconclusive)}",
            )
    if now < deadline:
        return AnalysisStatus.RUNNING, ""
    for name, t in checks:
        if t.measured - t.errors == 0:
            return AnalysisStatus.INCONCLUSIVE, f"{name}: no measurement"
        if t.passed == 0:
            return AnalysisStatus.INCONCLUSIVE, f"{name}: never passed"
    return AnalysisStatus.PASSED, "every check passed: " + ", ".join(
        f"{name} {times(t.passed)}" for name, t in checks
    )


_BAD = (CheckResult.FAILED, CheckResult.ERROR)


def _in_a_row(ms: Sequence[Measurement]) -> int:
    """How many of the newest measurements failed or errored, in a row."""
    n = 0
    for m in ms:
        if m.result not in _BAD:
            break
        n += 1
    return n


def health_of(watch: HealthWatch | None, last: Mapping[str, Sequence[Measurement]]) -> tuple[Health, str]:
    """An environment's health from each watched check's latest measurements (newest first).

    ``unhealthy`` when some check's last ``watch.failure_limit`` measurements all failed or
    errored; ``degraded`` when some check's latest did not pass (under that limit), or some check
    has no data yet while others do; ``healthy`` when every check's latest passed; ``unknown``
    with no checks or no data at all."""
    if watch is None:
        return Health.UNKNOWN, "no health checks"
    if not any(last.get(name) for name in watch.checks):
        return Health.UNKNOWN, "no measurement yet"
    unhealthy, degraded = [], []
    for name in watch.checks:
        ms = last.get(name) or ()
        if not ms:
            degraded.append(f"{name}: not measured yet")
            continue
        latest = ms[0]
        if latest.result is CheckResult.PASSED:
            continue
        row = _in_a_row(ms)
        said = _said(name, latest.detail or latest.result.value)
        if row >= watch.failure_limit:
            unhealthy.append(f"{said} ({row} in a row)")
        elif latest.result is CheckResult.INCONCLUSIVE:
            degraded.append(f"{said} (inconclusive)")
        else:
            degraded.append(f"{said} ({row} of {watch.failure_limit} in a row)")
    if unhealthy:
        return Health.UNHEALTHY, "; ".join(unhealthy + degraded)
    if degraded:
        return Health.DEGRADED, "; ".join(degraded)
    n = len(watch.checks)
    return Health.HEALTHY, "the check passes" if n == 1 else f"all {n} checks pass"


@dataclass(frozen=True, slots=True)
class Analysis:
    """One analysis as stored: a verification of a run's deploy stage, or an environment's
    health watch (``health:<environment>``, one per environment, never ending)."""

    id: str
    environment: str
    kind: AnalysisKind
    checks: tuple[str, ...]
    started_at: datetime
    status: AnalysisStatus = AnalysisStatus.RUNNING
    reason: str = ""
    run_id: str | None = None
    stage_index: int | None = None
    deadline: datetime | None = None
    ended_at: datetime | None = None
    ended_by: str | None = None
    version: int = 1
    #: a canary step's limits (``failure_limit``, ``inconclusive_limit``,
    #: ``consecutive_error_limit``); None: the environment's ``verify`` says
    limits: Mapping[str, int] | None = None


def health_analysis_id(environment: str) -> str:
    """The id of an environment's health watch: derived from its name, so there is one."""
    return f"health:{environment}"


@dataclass(frozen=True, slots=True)
class DueCheck:
    """A check of an analysis claimed for measuring: it was due at ``due_at``."""

    analysis_id: str
    environment: str
    kind: AnalysisKind
    check: str
    due_at: datetime


@dataclass(frozen=True, slots=True)
class Taken:
    """A claimed check's measurement, to record: the check is next due at ``next_at``;
    ``watch`` is its environment's health watch (a health watch's measurement may change the
    environment's health, recomputed from it)."""

    analysis_id: str
    check: str
    measurement: Measurement
    next_at: datetime
    watch: HealthWatch | None = None


@dataclass(frozen=True, slots=True)
class EnvironmentHealth:
    environment: str
    state: Health
    since: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class HealthChange:
    id: int
    environment: str
    at: datetime
    from_state: Health
    to_state: Health
    reason: str


def announced_as(history: Sequence[HealthChange], change: HealthChange, settle_s: float) -> Health | None:
    """Is ``change`` told to people, and as a change from what? Health that flaps must not flood
    a channel, so (as Alertmanager's ``for`` or Nagios' soft states do) a change is told only
    once it *held* for ``settle_s``: the next change (in ``history``, any order) came no sooner.
    It is then told as a change from the state people last heard: the one the last earlier
    change that held settled in (else where the history starts). Returns that state, or None
    when ``change`` is not to be told: it did not hold, or it only came back to what people
    heard last (healthy, degraded for 20 s, healthy again tells nothing)."""
    ordered = sorted(history, key=lambda c: (c.at, c.id))
    window = timedelta(seconds=settle_s)

    def held(c: HealthChange) -> bool:
        after = next((n for n in ordered if (n.at, n.id) > (c.at, c.id)), None)
        return after is None or after.at >= c.at + window

    if settle_s <= 0:
        return change.from_state
    if not held(change):
        return None
    earlier = [c for c in ordered if (c.at, c.id) < (change.at, change.id)]
    settled = [c for c in earlier if held(c)]
    heard = settled[-1].to_state if settled else (earlier[0].from_state if earlier else change.from_state)
    return heard if heard is not change.to_state else None


def spread(environment: str, check: str, interval_s: float) -> float:
    """Seconds after a health watch starts that ``check`` is first due: a stable spot within its
    interval, from its names (as Prometheus spreads its scrapes), so many environments' checks
    come due evenly over the interval instead of all at one instant."""
    return (zlib.crc32(f"{environment}/{check}".encode()) % 1000) / 1000 * interval_s
