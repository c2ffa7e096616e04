"""The follow-up review of a break-glass run.

An admin may push a run through freezes and required approvals; someone else must then look
at what was done and acknowledge it within the environments' ``break_glass_review`` time.
Until they do, the run's thread is reminded. The admin and whoever asked for the run may not
acknowledge it themselves (separation of duties, like gates).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from core.errors import CommandRefused, Forbidden

#: how often the thread is reminded while the review waits
REMIND_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Review:
    run_id: str
    admin: str
    reason: str
    opened_at: datetime
    due_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None

    def overdue(self, now: datetime) -> bool:
        return self.acknowledged_at is None and now > self.due_at


def open_review(run_id: str, admin: str, reason: str, now: datetime, within_s: float) -> Review:
    return Review(
        run_id=run_id, admin=admin, reason=reason, opened_at=now, due_at=now + timedelta(seconds=within_s)
    )


def check_acknowledge(review: Review, by: str, requested_by: Iterable[str]) -> None:
    """Raise unless ``by`` may acknowledge ``review`` now."""
    if review.acknowledged_at is not None:
        raise CommandRefused(
            f"already acknowledged by {review.acknowledged_by} at {review.acknowledged_at:%Y-%m-%d %H:%M} UTC"
        )
    if by == review.admin or by in set(requested_by):
        raise Forbidden("someone other than whoever broke the glass or asked for the run must acknowledge it")


def reminder_number(review: Review, now: datetime) -> int:
    """0 for the first notice, then one more each ``REMIND_EVERY_S`` while it waits."""
    return int((now - review.opened_at).total_seconds() // REMIND_EVERY_S)
