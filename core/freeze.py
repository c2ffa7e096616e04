"""Freeze windows: times when an environment takes no deployments, evaluated in their time zone.

Two shapes, both with a ``timezone`` (IANA name, default UTC) and an optional ``reason``::

    - {every: "0 16 * * 5", until: "0 8 * * 1", timezone: Europe/Berlin, reason: weekend}
    - {from: "2026-12-24T00:00", to: "2026-12-27T00:00", timezone: Europe/Berlin, reason: holidays}

A *recurring* window starts at every fire of ``every`` and ends at the next fire of ``until``:
it is active when the latest ``every`` fire at or before now is later than the latest ``until``
fire at or before now. Fires follow ``core.schedule``'s daylight-saving rules, so "Friday 16:00
to Monday 08:00" means local time on both ends, whatever the clocks did over the weekend.

A *one-off* window covers ``from`` (inclusive) to ``to`` (exclusive): local wall-clock times in
its zone, or ISO times with an offset, which then win over the zone.

``active_freeze`` answers "frozen now, and until when?": it follows back-to-back and
overlapping windows to the moment deploys are really allowed again. ``next_freeze`` answers
"when does the next freeze start?". Pure: the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from core.definition import _Strict
from core.errors import ShipyardError
from core.schedule import check_cron, local_instant, next_fire, previous_fire, zone

#: how far ``active_freeze`` follows windows that keep extending each other; an unbroken freeze
#: longer than this reports this far ahead as its end (the caller asks again then)
FOLLOW_LIMIT = timedelta(days=366)


def _date_time(value: Any) -> Any:
    """ISO text, YAML dates and date-times; a bare date means midnight."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO date-time (e.g. 2026-12-24T00:00, or 2026-12-24T00:00+01:00)"
            ) from None
    raise ValueError(f"expected an ISO date-time such as 2026-12-24T00:00, got {value!r}")


DateTime = Annotated[datetime, BeforeValidator(_date_time)]


class Freeze(_Strict):
    """One freeze window: recurring (``every``/``until``) or one-off (``from``/``to``)."""

    #: cron expression: when the window starts
    every: str | None = None
    #: cron expression: when the window ends (the first fire after it started)
    until: str | None = None
    start: DateTime | None = Field(default=None, alias="from")
    end: DateTime | None = Field(default=None, alias="to")
    timezone: str = "UTC"
    reason: str = ""

    @field_validator("every", "until")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_cron(value)
        except ShipyardError as exc:
            raise ValueError(exc.message) from None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zone(value)
        except ShipyardError as exc:
            raise ValueError(exc.message) from None
        return value

    @model_validator(mode="after")
    def _one_shape(self) -> Freeze:
        recurring = self.every is not None or self.until is not None
        once = self.start is not None or self.end is not None
        if recurring and once:
            raise ValueError(
                "a freeze is either recurring (every, until) or one date range (from, to), not both"
            )
        if recurring:
            if self.every is None or self.until is None:
                raise ValueError(
                    "a recurring freeze needs both `every` (cron: when it starts) and `until` "
                    "(cron: when it ends)"
                )
            if self.every == self.until:
                raise ValueError("`every` and `until` are the same, so the window would never be open")
        elif once:
            if self.start is None or self.end is None:
                raise ValueError("a one-off freeze needs both `from` and `to`")
            if self.closes <= self.opens:
                raise ValueError(
                    f"`to` ({self.end.isoformat()}) must be after `from` ({self.start.isoformat()})"
                )
        else:
            raise ValueError(
                "a freeze needs `every` and `until` (a recurring window, cron expressions) "
                "or `from` and `to` (one date range)"
            )
        return self

    @property
    def recurring(self) -> bool:
        return self.every is not None

    @property
    def opens(self) -> datetime:
        """A one-off window's start as an aware UTC instant."""
        assert self.start is not None, "only one-off windows have a fixed start"
        return self._instant(self.start)

    @property
    def closes(self) -> datetime:
        """A one-off window's end (exclusive) as an aware UTC instant."""
        assert self.end is not None, "only one-off windows have a fixed end"
        return self._instant(self.end)

    def _instant(self, value: datetime) -> datetime:
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        return local_instant(value, self.timezone)

    def occurrence_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The (start, end) of this window's occurrence that covers ``now``, or None."""
        if self.every is not None and self.until is not None:
            started = previous_fire(self.every, self.timezone, now)
            ended = previous_fire(self.until, self.timezone, now)
            if started > ended:
                return started, next_fire(self.until, self.timezone, now)
            return None
        if self.opens <= now < self.closes:
            return self.opens, self.closes
        return None

    def next_start(self, after: datetime) -> datetime | None:
        """When this window next starts, strictly after ``after`` (None: never again)."""
        if self.every is not None:
            return next_fire(self.every, self.timezone, after)
        return self.opens if self.opens > after else None

    def describe(self) -> str:
        """How people wrote it, e.g. ``"0 16 * * 5" until "0 8 * * 1" (Europe/Berlin): weekend``."""
        if self.every is not None:
            text = f'"{self.every}" until "{self.until}" ({self.timezone})'
        else:
            text = f"{local_text(self.opens, self.timezone)} to {local_text(self.closes, self.timezone)}"
        return f"{text}: {self.reason}" if self.reason else text


@dataclass(frozen=True, slots=True)
class ActiveFreeze:
    """A stretch of time without deployments, made of one or more windows."""

    starts: datetime  #: when it started (or, from ``next_freeze``, will start)
    until: datetime  #: when deploys are allowed again
    windows: tuple[Freeze, ...]  #: every window that makes it up, in the order met
    timezone: str  #: the zone of the window that ends it, for messages

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.reason for w in self.windows if w.reason))

    def describe(self) -> str:
        """``frozen until Mon 26 Oct 2026 08:00 CET (weekend)``"""
        why = f" ({', '.join(self.reasons)})" if self.reasons else ""
        return f"frozen until {local_text(self.until, self.timezone)}{why}"


def local_text(instant: datetime, tz: str) -> str:
    """``Mon 26 Oct 2026 08:00 CET``: a time as people in that zone read it."""
    return instant.astimezone(zone(tz)).strftime("%a %d %b %Y %H:%M %Z")


def active_freeze(freezes: Sequence[Freeze], now: datetime) -> ActiveFreeze | None:
    """The freeze in force at ``now`` and when it really ends, or None if deploys may go.

    A window that is open when another one closes (back to back or overlapping) extends the
    freeze, so ``until`` is the first instant at which no window is open.
    """
    hits = _open_at(freezes, now)
    if not hits:
        return None
    windows = [f for f, _ in hits]
    starts = min(start for _, (start, _) in hits)
    last, (_, until) = max(hits, key=lambda hit: hit[1][1])
    limit = now + FOLLOW_LIMIT
    while until < limit and (more := _open_at(freezes, until)):
        windows.extend(f for f, _ in more if f not in windows)
        last, (_, until) = max(more, key=lambda hit: hit[1][1])
    return ActiveFreeze(starts=starts, until=until, windows=tuple(windows), timezone=last.timezone)


def next_freeze(freezes: Sequence[Freeze], now: datetime, horizon: timedelta) -> ActiveFreeze | None:
    """The next freeze that starts after ``now`` and within ``horizon`` of it (after the
    current one ends, if one is in force), or None."""
    current = active_freeze(freezes, now)
    after = current.until if current else now
    limit = now + horizon
    while True:
        starts = [s for f in freezes if (s := f.next_start(after)) is not None]
        if not starts or min(starts) > limit:
            return None
        after = min(starts)
        # a recurring window whose start falls on one of its own ends opens nothing: look on
        if found := active_freeze(freezes, after):
            return found


def _open_at(freezes: Sequence[Freeze], now: datetime) -> list[tuple[Freeze, tuple[datetime, datetime]]]:
    return [(f, occurrence) for f in freezes if (occurrence := f.occurrence_at(now))]
