"""DORA's four keys for one environment (and optionally one pipeline) over a window.

The definitions follow DORA's (dora.dev): *deployment frequency* is how often a change reaches
the environment successfully; *lead time for changes* is the time from a change's commit to its
successful deployment; *change failure rate* is the share of deployments that needed someone to
step in; *time to restore* (DORA's "failed deployment recovery time") is how long the environment
stayed unhealthy after a failed deployment.

What Shipyard counts:

* a **change** is a deployment of kind ``deploy`` or ``promotion`` that ended ``succeeded``,
  ``partial`` or ``failed`` (a canceled one delivered nothing; a ``rollback`` delivers no new
  change: it is the remedy, counted only as what restores);
* it is **successful** when it ended ``succeeded`` or ``partial`` and did not fail verification;
* it is a **failure** when it failed (its jobs, or its verification), was rolled back (the next
  deployment to the environment was a rollback) or its artifact was marked bad;
* the environment is **healthy** again after a deployment of any kind that succeeded, passed
  verification if it had one, was not rolled back and whose artifact is not marked bad.

Lead time needs the commit's time (a GitHub push's head commit, or ``revision_time`` on the
trigger). When it is unknown it is not guessed: the figure says how many deployments had it.
Times are medians, as DORA reports them. Pure: the caller reads the deployments and the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median

from core.duration import parse_duration

#: the window when none is asked for
DEFAULT_WINDOW = "30d"
_SUCCESS = frozenset({"succeeded", "partial"})
_CHANGE_KINDS = frozenset({"deploy", "promotion"})


@dataclass(frozen=True, slots=True)
class DeploymentFacts:
    """What the four keys need to know about one finished deployment."""

    finished_at: datetime
    #: how the deploy stage ended: ``succeeded``, ``partial``, ``failed`` or ``canceled``
    status: str
    pipeline: str = ""
    #: ``deploy``, ``promotion`` or ``rollback``
    kind: str = "deploy"
    #: ``verified``, ``failed`` or ``canceled`` when its environment verified it
    verification: str | None = None
    #: its artifact was marked bad (at any time since)
    marked_bad: bool = False
    #: when the deployed commit was made; None: unknown
    revision_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Frequency:
    deployments: int  #: successful changes in the window
    per_day: float
    per_week: float


@dataclass(frozen=True, slots=True)
class LeadTime:
    median_s: float | None  #: None: no successful change had its commit's time
    deployments: int  #: successful changes whose commit time is known (the median rests on them)
    unknown: int  #: successful changes whose commit time is unknown


@dataclass(frozen=True, slots=True)
class FailureRate:
    rate: float | None  #: failures / deployments; None: no change deployed
    failures: int
    deployments: int  #: changes deployed (successful or not)
    failed: int  #: its jobs failed
    failed_verification: int
    rolled_back: int
    marked_bad: int


@dataclass(frozen=True, slots=True)
class Restore:
    median_s: float | None  #: None: nothing was restored in the window
    restores: int  #: times the environment became healthy again after failures
    deployments: int  #: failed deployments those restores ended
    unrestored: int  #: failed deployments not followed by a healthy one (yet)


@dataclass(frozen=True, slots=True)
class FourKeys:
    environment: str
    pipeline: str | None
    since: datetime
    until: datetime
    deployment_frequency: Frequency
    lead_time: LeadTime
    change_failure_rate: FailureRate
    time_to_restore: Restore


def parse_window(text: str | None) -> timedelta:
    """``30d``, ``7d``, ``12h`` …; raises ``ValueError`` saying how to write one."""
    try:
        return timedelta(seconds=parse_duration(text or DEFAULT_WINDOW))
    except ValueError as e:
        raise ValueError(f"invalid window {text!r}: {e} (for example 7d, 30d or 90d)") from None


def is_change(d: DeploymentFacts) -> bool:
    return d.kind in _CHANGE_KINDS and d.status != "canceled"


def is_successful(d: DeploymentFacts) -> bool:
    return d.status in _SUCCESS and d.verification != "failed"


def four_keys(
    environment: str,
    deployments: Sequence[DeploymentFacts],
    since: datetime,
    until: datetime,
    pipeline: str | None = None,
) -> FourKeys:
    """The four keys over ``deployments``: every deployment to ``environment`` that finished in
    [since, until], in the order they were recorded, of every pipeline (a rollback or a fix may
    come from another pipeline); ``pipeline`` narrows the changes counted."""
    ordered = [d for d in sorted(deployments, key=lambda d: d.finished_at) if d.status != "canceled"]
    rolled_back = {i for i, d in enumerate(ordered[1:]) if d.kind == "rollback"}
    changes = [(i, d) for i, d in enumerate(ordered) if is_change(d) and pipeline in (None, d.pipeline)]
    reasons = {i: _reasons(d, i in rolled_back) for i, d in changes}
    return FourKeys(
        environment=environment,
        pipeline=pipeline,
        since=since,
        until=until,
        deployment_frequency=_frequency([d for _, d in changes], until - since),
        lead_time=_lead_time([d for _, d in changes]),
        change_failure_rate=_failure_rate(reasons),
        time_to_restore=_restore(ordered, {i for i, r in reasons.items() if r}, rolled_back),
    )


def _reasons(d: DeploymentFacts, rolled_back: bool) -> frozenset[str]:
    found = set()
    if d.verification == "failed":
        found.add("failed_verification")
    elif d.status == "failed":
        found.add("failed")
    if rolled_back:
        found.add("rolled_back")
    if d.marked_bad:
        found.add("marked_bad")
    return frozenset(found)


def _frequency(changes: list[DeploymentFacts], window: timedelta) -> Frequency:
    count = sum(1 for d in changes if is_successful(d))
    days = window.total_seconds() / 86400
    return Frequency(count, count / days, count * 7 / days)


def _lead_time(changes: list[DeploymentFacts]) -> LeadTime:
    successful = [d for d in changes if is_successful(d)]
    # a commit time after the deployment finished is a wrong clock, not a lead time
    times = [
        (d.finished_at - d.revision_time).total_seconds()
        for d in successful
        if d.revision_time is not None and d.revision_time <= d.finished_at
    ]
    return LeadTime(median(times) if times else None, len(times), len(successful) - len(times))


def _failure_rate(reasons: dict[int, frozenset[str]]) -> FailureRate:
    def count(reason: str) -> int:
        return sum(1 for r in reasons.values() if reason in r)

    failures = sum(1 for r in reasons.values() if r)
    return FailureRate(
        rate=failures / len(reasons) if reasons else None,
        failures=failures,
        deployments=len(reasons),
        failed=count("failed"),
        failed_verification=count("failed_verification"),
        rolled_back=count("rolled_back"),
        marked_bad=count("marked_bad"),
    )


def _restore(ordered: list[DeploymentFacts], failed: set[int], rolled_back: set[int]) -> Restore:
    """Each run of failures (from the first failed deployment) ends at the next healthy
    deployment of any kind: one restore, timed from the first failure's end to its end."""
    times: list[float] = []
    restored = 0
    open_since: datetime | None = None
    open_count = 0
    for i, d in enumerate(ordered):
        if i in failed:
            open_since = open_since or d.finished_at
            open_count += 1
        elif open_since is not None and is_successful(d) and not d.marked_bad and i not in rolled_back:
            times.append((d.finished_at - open_since).total_seconds())
            restored += open_count
            open_since, open_count = None, 0
    return Restore(median(times) if times else None, len(times), restored, open_count)
