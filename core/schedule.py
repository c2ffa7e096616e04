"""When schedules fire: cron expressions evaluated in their time zone, with one rule for the
nights the clock changes, and what to do after downtime. Pure: the caller gives the times.

Daylight-saving rules (docs/schedules.md repeats them):

* A local time that does not exist that night (02:30 when clocks jump from 02:00 to 03:00)
  fires once, at the first minute that does exist after it (03:00).
* A local time that happens twice (02:30 when clocks fall back from 03:00 to 02:00) fires
  once, at its first occurrence.

So a daily 02:30 schedule makes exactly one run every night. A schedule that fires every hour
(its hour field is ``*``) runs by the real clock instead, as cron runs it: in both passes of a
repeated hour, and not at all at times the clock skips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from core.errors import InvalidInput

#: a missed fire still runs if the service comes back within this long after it was due
DEFAULT_GRACE_S = 3600.0
#: missed occurrences counted per schedule after a downtime, at most (then: "more than")
MAX_MISSED = 10_000
#: the longest cron expression a schedule keeps (as the REST API's schema says)
MAX_CRON = 120
#: a fire at most this late is on time whatever the schedule's grace (even 0): the clock beats
#: on the whole second and a burst of fires takes a while to read
ON_TIME_S = 60.0


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``InvalidInput`` for anything else, including a name that is a
    directory of the zone database (``Europe``), which ``ZoneInfo`` answers with ``OSError``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(
            f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin or UTC)"
        ) from None


def check_cron(expression: str, *, stored: bool = False) -> str:
    """The expression, if it is a valid five-field cron expression that fires at all; else
    ``InvalidInput``. One naming a day no month has (30 February) parses, but finding its next
    fire raises: refused here, it cannot reach the clock. So are ranges and steps croniter
    accepts but reads unlike cron (``_odd_term``); a ``stored`` expression, taken before they
    were refused, keeps croniter's reading (a pipeline saved with one must still load)."""
    fields = expression.split()
    if not stored and len(" ".join(fields)) > MAX_CRON:
        raise InvalidInput(
            f"cron {expression!r} is too long: at most {MAX_CRON} characters are kept "
            "(write ranges and steps such as 0-29 or */5 instead of long lists)"
        )
    if len(fields) != 5:
        raise InvalidInput(
            f"cron {expression!r} must have five fields: minute hour day-of-month month day-of-week "
            '(e.g. "0 2 * * 1-5" for 02:00 on weekdays)'
        )
    for index, field in enumerate([] if stored else fields):
        for term in field.lower().split(","):
            if problem := _odd_term(term, index):
                raise InvalidInput(f"cron {expression!r} is not valid: {problem}")
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidInput(
            f"cron {expression!r} never fires: no month has that day (e.g. 30 February)"
        ) from None
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        raise InvalidInput(f"cron {expression!r} is not valid: {exc}") from None
    return " ".join(fields)


_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_TERM = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/([0-9]+))?$")


def _odd_term(term: str, index: int) -> str:
    """What is wrong with one comma-separated term of field ``index`` that croniter takes but
    reads unlike cron ("": nothing, or nothing this knows; croniter judges the rest): a range
    that runs backwards (croniter wraps ``5-1`` round the end), one from a value to itself
    (croniter makes ``5-5`` the whole field), and a step too large to repeat within its range
    (``*/61`` in the minute field fires once an hour, not every 61 minutes)."""
    match = _TERM.match(term)
    if match is None:
        return ""
    first, last, step = match.groups()
    lowest, highest = croniter.RANGES[index]
    names = croniter.ALPHACONV[index]

    def value(text: str) -> int:
        named = names.get(text)
        return named if isinstance(named, int) else int(text)

    try:
        low = lowest if first == "*" else value(first)
        if last is not None and first != "*":
            high = value(last)
        elif step is not None:
            high = highest  # (croniter reads "5/15" as "5-59/15")
        else:
            return ""  # (one value, or a "*" croniter judges)
    except ValueError:  # (L, H and the like: croniter's own)
        return ""
    where = f"in the {_FIELDS[index]} field"
    if last is not None and low == high:
        return f"the range {first}-{last} {where} does not go up (write {low} for that one value)"
    if last is not None and low > high:
        wrap = f"{lowest}-{high}" if low > highest else f"{low}-{highest},{lowest}-{high}"  # (7: Sunday)
        return f"the range {first}-{last} {where} runs backwards (write {wrap} instead)"
    if step is not None and low + int(step) > high:
        return (
            f"the step /{step} {where} does not fit in {low}-{high}, so it would fire only at {low} "
            f"(cron cannot repeat every {step}; write {low} if that is what is meant)"
        )
    return ""


def next_fire(expression: str, tz: str, after: datetime) -> datetime:
    """The first fire strictly after ``after`` (aware), as an aware UTC datetime."""
    local = zone(tz)
    if _every_hour(expression):
        return _next_by_the_clock(expression, local, after)
    naive = after.astimezone(local).replace(tzinfo=None)
    it = croniter(expression, naive)
    while True:
        candidate: datetime = it.get_next(datetime)
        fire = _to_instant(candidate, local)
        if fire > after:
            return fire


def _every_hour(expression: str) -> bool:
    """Does it fire every hour (its hour field is ``*``)? Such a schedule runs by the real
    clock, as cron runs it: through both passes of an hour the clock repeats, and not at all at
    times the clock skips (no catch-up fire at the first minute after them)."""
    return expression.split()[1] == "*"


def _next_by_the_clock(expression: str, local: ZoneInfo, after: datetime) -> datetime:
    """``next_fire`` of a schedule that fires every hour: the earliest real instant after
    ``after`` whose local time the expression names, either pass of a repeated hour counted."""
    naive = after.astimezone(local).replace(tzinfo=None)
    # an hour the clock is about to repeat: its second pass reads earlier than ``naive``
    back = max(_offset(after, local) - _offset(after + timedelta(hours=3), local), timedelta(0))
    it = croniter(expression, naive - back)
    best: tuple[datetime, datetime] | None = None  # (instant, local time)
    while True:
        candidate: datetime = it.get_next(datetime)
        if best is not None and candidate > best[1] + back:
            return best[0]
        for fold in (0, 1):
            instant = candidate.replace(tzinfo=local, fold=fold).astimezone(UTC)
            exists = instant.astimezone(local).replace(tzinfo=None) == candidate
            if exists and instant > after and (best is None or instant < best[0]):
                best = (instant, candidate)
        if best is not None and not back and _offset(best[0], local) == _offset(after, local):
            return best[0]  # (no clock change between: nothing later can come sooner)


def _offset(instant: datetime, local: ZoneInfo) -> timedelta:
    return instant.astimezone(local).utcoffset() or timedelta(0)


def previous_fire(expression: str, tz: str, at: datetime) -> datetime:
    """The latest fire at or before ``at`` (aware), as an aware UTC datetime: ``next_fire``
    looking back, by the same daylight-saving rules (freeze windows ask "when did it start?")."""
    local = zone(tz)
    # In a repeated hour the local clock reads earlier than a fire that already happened, so
    # start a few hours later and compare instants, not wall-clock times.
    naive = (at + timedelta(hours=3)).astimezone(local).replace(tzinfo=None)
    it = croniter(expression, naive)
    while True:
        candidate: datetime = it.get_prev(datetime)
        fire = _to_instant(candidate, local)
        if fire <= at:
            return fire


def local_instant(naive: datetime, tz: str) -> datetime:
    """A wall-clock time in ``tz`` as an aware UTC datetime, by the daylight-saving rules above."""
    return _to_instant(naive, zone(tz))


def _to_instant(naive: datetime, local: ZoneInfo) -> datetime:
    """A local wall-clock time as an instant: the first occurrence of a repeated time; the
    first existing minute after a time the clock skipped."""
    probe = naive
    for _ in range(24 * 60):
        aware = probe.replace(tzinfo=local, fold=0)
        if aware.astimezone(UTC).astimezone(local).replace(tzinfo=None) == probe:
            return aware.astimezone(UTC)
        probe += timedelta(minutes=1)
    raise ValueError(f"{naive} has no valid local time within a day")  # no real zone does this


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A pipeline triggered by the clock, as a named principal (its owner)."""

    id: str
    pipeline: str
    cron: str
    timezone: str
    parameters: dict[str, str]
    owner: str
    source: str  #: "file" (declared in the pipeline file) or "api"/"slack"
    grace_s: float
    next_fire_at: datetime
    created_at: datetime
    #: bumped by every change: a fire read with this version starts a run only while it holds
    version: int = 1
    #: why it is paused ("": it fires): by its owner, or by the clock when it can no longer
    #: start a run (its pipeline archived, a cron or parameters no longer accepted)
    paused_reason: str = ""
    paused_at: datetime | None = None

    def describe(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.parameters.items())
        return f"{self.pipeline} {self.cron!r} ({self.timezone})" + (f" {params}" if params else "")

    def idempotency_key(self, fire_at: datetime) -> str:
        """Every occurrence triggers with this key: two replicas can never both start it."""
        return f"schedule:{self.id}:{fire_at.astimezone(UTC).isoformat()}"


@dataclass(frozen=True, slots=True)
class Missed:
    """The occurrences a schedule skipped, summed up: a minutely schedule down for a week skips
    ten thousand, and one record says so."""

    count: int  #: how many (more than this, when not ``exact``)
    first: datetime
    last: datetime
    exact: bool = True  #: False: more than ``MAX_MISSED``, and counted no further

    def describe(self) -> str:
        if self.count == 1:
            return f"missed {self.first.isoformat()}"
        many = f"{self.count} fires" if self.exact else f"more than {self.count} fires"
        return f"missed {many}, {self.first.isoformat()} to {self.last.isoformat()}"


@dataclass(frozen=True, slots=True)
class Due:
    """What to do with a schedule whose next fire time has come."""

    fire_at: datetime | None  #: the occurrence to run now, or None if it was missed
    missed: Missed | None  #: the occurrences skipped (beyond the grace period), if any
    next_fire: datetime  #: the next occurrence after now


def due(expression: str, tz: str, next_at: datetime, now: datetime, grace_s: float) -> Due:
    """Given a schedule's stored next fire time (``next_at`` ≤ ``now``): the newest occurrence
    up to now runs if it is within the grace period; every other one is skipped. A backlog of
    missed fires never runs. After a downtime longer than ``MAX_MISSED`` occurrences the count
    stops there, and the newest is found from ``now`` (not taken to be the last counted)."""
    earlier, latest, count = None, next_at, 1  # the occurrences up to now: the last two, how many
    following = next_fire(expression, tz, next_at)
    while following <= now and count <= MAX_MISSED:
        earlier, latest, count = latest, following, count + 1
        following = next_fire(expression, tz, following)
    exact = following > now
    if not exact:  # more than are counted: the newest, and the one before it, are found from now
        latest = previous_fire(expression, tz, now)
        earlier = previous_fire(expression, tz, latest - timedelta(microseconds=1))
        following = next_fire(expression, tz, now)
    if (now - latest).total_seconds() <= max(grace_s, ON_TIME_S):
        fire_at, count, last = latest, count - 1, earlier
    else:
        fire_at, last = None, latest
    missed = None if last is None else Missed(count if exact else MAX_MISSED, next_at, last, exact)
    return Due(fire_at, missed, following)
