"""Runner labels: which runners may take which jobs.

A job needs the union of its own ``runs_on``, its stage's ``runs_on`` and its environment's
``runner_labels`` (from the service's configuration, so a pipeline cannot drop them), worked out
once when the run is laid out (``core.protection``) and stored with the job. A runner may claim
a job iff the job's labels are a subset of the runner's; a job with no labels runs anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

LABEL = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
#: the label every built-in runner (the one inside ``shipyard serve``) carries
BUILTIN = "builtin"


def check_labels(value: Iterable[str]) -> list[str]:
    """``value`` as a sorted list without duplicates; ``ValueError`` naming a bad label."""
    labels = list(value)
    for label in labels:
        if not isinstance(label, str) or not re.fullmatch(LABEL, label):
            raise ValueError(
                f"{label!r} is not a runner label: use lowercase letters, digits, '-', '_' and '.', "
                "starting with a letter or digit (at most 63)"
            )
    return sorted(set(labels))


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels (``--labels linux,prod-eu``, ``SHIPYARD_RUNNER_LABELS``)."""
    return check_labels(part.strip() for part in text.split(",") if part.strip())


def needed(*parts: Iterable[str]) -> tuple[str, ...]:
    """The labels a job needs: the union of its own, its stage's and its environment's."""
    return tuple(sorted({label for part in parts for label in part}))


def satisfies(runner_labels: Iterable[str], job_labels: Iterable[str]) -> bool:
    return set(job_labels) <= set(runner_labels)


def describe(labels: Iterable[str]) -> str:
    return ", ".join(labels) or "no labels"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSeen:
    """A runner as the server last saw it (``GET /api/v1/runners``)."""

    name: str
    labels: tuple[str, ...]
    version: str
    capacity: int
    lease_s: float
    first_seen: datetime
    last_seen: datetime
    draining: bool = False
    #: jobs it holds now
    running: int = 0

    def online(self, now: datetime) -> bool:
        """Seen within two of its leases (it calls the server at least once a lease)."""
        return now - self.last_seen <= timedelta(seconds=2 * self.lease_s)

    def state(self, now: datetime) -> str:
        """``draining`` (told to finish its jobs and stop), ``online`` or ``offline``."""
        if self.draining:
            return "draining"
        return "online" if self.online(now) else "offline"


def waiting_for_runner(labels: Iterable[str], runners: Iterable[RunnerSeen], now: datetime) -> str:
    """Why a queued job needing ``labels`` waits, when no online runner could take it; "" when
    one could (it is just busy, or about to claim)."""
    labels = tuple(labels)
    able = [r for r in runners if satisfies(r.labels, labels)]
    if any(r.online(now) and not r.draining for r in able):
        return ""
    what = f"a runner with {describe(labels)}" if labels else "a runner"
    if not able:
        return f"waiting for {what}: none has ever connected"
    draining = sorted(r.name for r in able if r.online(now))  # (online ones left here all drain)
    offline = [r.last_seen for r in able if not r.online(now)]
    since = f"since {max(offline).strftime('%H:%M')} UTC" if offline else ""
    if not draining:
        return f"waiting for {what}: none online {since}"
    them = "it" if len(draining) == 1 else "them"
    verb = "is" if len(draining) == 1 else "are"
    others = f"; any other offline {since}" if offline else ""
    return f"waiting for {what}: {', '.join(draining)} {verb} draining (an admin may resume {them}){others}"


#: a queued job is said to wait for a runner only after this long (a runner may be about to claim)
WAIT_S = 3.0


def queued_too_long(queued_at: datetime | None, now: datetime) -> bool:
    return queued_at is not None and now - queued_at > timedelta(seconds=WAIT_S)


def runner_waits(
    jobs: Iterable[tuple[str, tuple[str, ...], datetime | None]],
    runners: Sequence[RunnerSeen],
    now: datetime,
) -> dict[str, str]:
    """For queued jobs (id, labels, queued at): why each that has waited a while waits, when no
    online runner could take it (``waiting_for_runner``)."""
    found = {}
    for job_id, labels, queued_at in jobs:
        if queued_too_long(queued_at, now) and (why := waiting_for_runner(labels, runners, now)):
            found[job_id] = why
    return found
