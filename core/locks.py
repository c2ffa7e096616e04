"""Locks as leases: a person takes an environment out of service for a while, with a reason.

While an environment is locked it accepts no deployments, and whoever tries is told who holds
the lock, since when, why and until when (``describe``). A lock taken *for* a time is a lease:
it expires by itself, so a forgotten lock does not block deploys for days. Its holder is
reminded before it does and may extend it; anyone else may ask the holder to hand it over.
After a rollback the environment is locked by a ``rollback`` lock with no expiry, released
when someone acknowledges the rollback, so the next run in the queue does not deploy the bad
version again; a lock someone took while the rollback deployed becomes that lock.

An environment is *free* (no lock), *held*, or *expired* (its time ran out but nobody swept the
row yet: it counts as free). Every change is one row of this table; the store applies it as a
conditional update, so two people or two replicas never both make it::

    action            from            to     who
    acquire           free, expired   held   a deployer or an admin (an expired lock is taken over)
    relock            held            held   its holder: a new reason and expiry
    release           held            free   manual: its holder or an admin
                                             rollback: anyone who may deploy (acknowledge)
    extend            held            held   its holder, if the lock has an expiry
    request_handover  held            held   anyone but the holder
    hand_over         held            held   the holder, to someone else (who holds it from now)
    keep              held            held   the holder declines a handover request
    expire            expired         free   the keeper, once per lock
    remind            held            held   the keeper, once per expiry

Pure: no I/O, no clock. ``storage.locks`` keeps the rows; the engine's admission asks
``LockStore.current`` and refuses a locked environment with ``EnvironmentLocked``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

from core.duration import MAX_SECONDS, format_duration, parse_duration
from core.errors import CommandRefused, Forbidden, InvalidInput, NotFound
from core.events import NO_RUN, Event
from core.states import LockState, check

LockKind = Literal["manual", "rollback"]
#: how a principal is written in a message (Slack passes one that makes mentions)
Namer = Callable[[str], str]

REASON_MAX: Final = 500
_INVISIBLE: Final = re.compile(r"[\x00-\x20\x7f]+")
#: the shortest lease: anything shorter is a typo (``for 2`` meant hours, not seconds)
MIN_SECONDS: Final = 60.0


class LockAction(StrEnum):
    ACQUIRE = "acquire"
    RELOCK = "relock"
    RELEASE = "release"
    EXTEND = "extend"
    REQUEST_HANDOVER = "request_handover"
    HAND_OVER = "hand_over"
    KEEP = "keep"
    EXPIRE = "expire"
    REMIND = "remind"


_FREE = frozenset({LockState.FREE, LockState.EXPIRED})
_HELD = frozenset({LockState.HELD})

#: action -> (the states it may start from, the state it leads to); every move is one that
#: ``core.states.LOCK_TRANSITIONS`` allows (a test keeps them so)
TRANSITIONS: Final[dict[LockAction, tuple[frozenset[LockState], LockState]]] = {
    LockAction.ACQUIRE: (_FREE, LockState.HELD),
    LockAction.RELOCK: (_HELD, LockState.HELD),
    LockAction.RELEASE: (_HELD, LockState.FREE),
    LockAction.EXTEND: (_HELD, LockState.HELD),
    LockAction.REQUEST_HANDOVER: (_HELD, LockState.HELD),
    LockAction.HAND_OVER: (_HELD, LockState.HELD),
    LockAction.KEEP: (_HELD, LockState.HELD),
    LockAction.EXPIRE: (frozenset({LockState.EXPIRED}), LockState.FREE),
    LockAction.REMIND: (_HELD, LockState.HELD),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Lock:
    """One environment's lock. ``holder`` is a principal: a token name or a Slack user id."""

    environment: str
    holder: str
    reason: str
    since: datetime
    expires_at: datetime | None = None
    kind: LockKind = "manual"
    #: someone asked the holder to hand the lock over to them
    handover_requested_by: str | None = None
    #: when the holder was reminded that this expiry is near (None: not yet)
    reminded_at: datetime | None = None
    #: when the expiry was set, if not when the lock was taken (None): relocked or extended
    #: since, or set by the holder who handed the lock over (then before ``since``)
    expiry_set_at: datetime | None = None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def state(self, now: datetime) -> LockState:
        return LockState.EXPIRED if self.is_expired(now) else LockState.HELD


def state_of(lock: Lock | None, now: datetime) -> LockState:
    return LockState.FREE if lock is None else lock.state(now)


#: the event each change appends to the log (a reminder changes nothing anyone is shown)
EVENT_NAMES: Final[dict[LockAction, str]] = {
    LockAction.ACQUIRE: "lock.acquired",
    LockAction.RELOCK: "lock.relocked",
    LockAction.RELEASE: "lock.released",
    LockAction.EXTEND: "lock.extended",
    LockAction.REQUEST_HANDOVER: "lock.handover_requested",
    LockAction.HAND_OVER: "lock.handed_over",
    LockAction.KEEP: "lock.kept",
    LockAction.EXPIRE: "lock.expired",
}


def changed(
    action: LockAction,
    lock: Lock,
    by: str,
    now: datetime,
    was: LockState,
    *,
    took_over: Lock | None = None,
    channel: str | None = None,
) -> Event:
    """The event a change of ``lock`` (as it now is, or as it was when it is gone) appends in
    its transaction, so readers that follow the log by cursor (the Slack notifier's App Home)
    learn of it like of any run's change. A lock is no run's: ``run_id`` is ``NO_RUN``. An
    acquire that ``took_over`` an expired lock nobody swept yet names it (``previous_holder``,
    ``previous_reason``): its expiry is told from this event, since no sweep will tell it.
    ``channel`` is where the change was asked (``rest``, ``web``, a Slack channel…): the
    notifier tells the deploy channel of a lock taken or released outside Slack."""
    _, to = TRANSITIONS[action]
    expires = lock.expires_at.isoformat() if lock.expires_at is not None else None
    previous = (
        {}
        if took_over is None
        else {
            "previous_holder": took_over.holder,
            "previous_reason": took_over.reason,
        }
    )
    return Event(
        name=EVENT_NAMES[action],
        run_id=NO_RUN,
        subject="lock",
        subject_id=lock.environment,
        at=now,
        from_status=was,
        to_status=to,
        data={
            "by": by,
            "holder": lock.holder,
            "kind": lock.kind,
            "reason": lock.reason,
            "expires_at": expires,
            **previous,
            **({"channel": channel} if channel is not None else {}),
        },
    )


# -- errors ----------------------------------------------------------------------------------------
class EnvironmentLocked(CommandRefused):
    """The environment is locked."""

    kind = "conflict"

    def __init__(self, lock: Lock, now: datetime) -> None:
        self.lock = lock
        self.now = now
        super().__init__(describe(lock, now))

    def told(self, name: Namer) -> str:
        """The message with the holder written by ``name`` (a Slack mention)."""
        return describe(self.lock, self.now, name)


class NotLockHolder(Forbidden):
    """Only the lock's holder may do this."""

    def __init__(self, lock: Lock, now: datetime, who_may: str) -> None:
        self.lock = lock
        self.now = now
        self.who_may = who_may
        super().__init__(self.told(str))

    def told(self, name: Namer) -> str:
        return f"{describe(self.lock, self.now, name)}. Only {self.who_may}."


def not_locked(environment: str) -> NotFound:
    return NotFound(f"{environment} is not locked")


# -- the rules -------------------------------------------------------------------------------------
def require(action: LockAction, environment: str, lock: Lock | None, now: datetime) -> None:
    """Refuse ``action`` unless the lock's state allows it (the table above)."""
    allowed, to = TRANSITIONS[action]
    state = state_of(lock, now)
    if state in allowed:
        check("lock", environment, state, to)
        return
    if state is not LockState.HELD:
        raise not_locked(environment)
    assert lock is not None
    raise EnvironmentLocked(lock, now)


def plan_acquire(current: Lock | None, holder: str, kind: LockKind, now: datetime) -> LockAction:
    """``ACQUIRE`` when the environment is free (or its lock expired), ``RELOCK`` when
    ``holder`` holds it already (a manual lock may become a rollback lock, not back);
    ``EnvironmentLocked`` when someone else does."""
    if current is None or state_of(current, now) is not LockState.HELD:
        return LockAction.ACQUIRE
    if current.holder != holder or (current.kind == "rollback" and kind == "manual"):
        raise EnvironmentLocked(current, now)
    return LockAction.RELOCK


def after_rollback(current: Lock | None, environment: str, reason: str, now: datetime) -> Lock | None:
    """The lock a rollback that succeeded leaves on ``environment``: a new one held by shipyard
    when it is free; when someone locked it meanwhile, their lock becomes it (same holder and
    ``since``, no expiry, their reason kept after the rollback's), since a manual lock would
    expire or be released and the next queued run ship the bad version again; None when a
    rollback lock holds already (it stays)."""
    if current is None or state_of(current, now) is not LockState.HELD:
        return Lock(environment=environment, holder="shipyard", reason=reason, since=now, kind="rollback")
    if current.kind == "rollback":
        return None
    why = f"{reason} (locked by {current.holder} before: {current.reason})"
    return replace(current, reason=why[:REASON_MAX], expires_at=None, kind="rollback", reminded_at=None)


def check_release(
    lock: Lock | None, environment: str, by: str, now: datetime, *, admin: bool, deployer: bool
) -> None:
    """A manual lock: its holder or an admin. A rollback lock is acknowledged by anyone who may
    deploy, since whoever watches the environment after a rollback may clear it."""
    require(LockAction.RELEASE, environment, lock, now)
    assert lock is not None
    if lock.kind == "rollback":
        if not (deployer or admin):
            raise NotLockHolder(lock, now, "a deployer or an admin may acknowledge a rollback")
        return
    if lock.holder != by and not admin:
        raise NotLockHolder(lock, now, f"{lock.holder} or an admin may unlock it")


def extended_until(lock: Lock | None, environment: str, by: str, seconds: float, now: datetime) -> datetime:
    """The new expiry when ``by`` extends the lock by ``seconds`` (from its expiry, or from now
    if that is later)."""
    require(LockAction.EXTEND, environment, lock, now)
    assert lock is not None
    if lock.holder != by:
        raise NotLockHolder(lock, now, f"{lock.holder} may extend it")
    if lock.kind == "rollback" or lock.expires_at is None:
        raise InvalidInput(f"{describe(lock, now)}; it has no expiry to extend")
    until = max(lock.expires_at, now) + timedelta(seconds=check_seconds(seconds))
    if (until - now).total_seconds() > MAX_SECONDS:
        raise InvalidInput("a lock may run for at most 365d")
    return until


def check_request_handover(lock: Lock | None, environment: str, by: str, now: datetime) -> None:
    require(LockAction.REQUEST_HANDOVER, environment, lock, now)
    assert lock is not None
    if lock.holder == by:
        raise InvalidInput(f"you hold the lock on {environment} already")
    if lock.kind == "rollback":
        raise InvalidInput(f"{describe(lock, now)}; acknowledge the rollback instead of asking for the lock")


def check_hand_over(lock: Lock | None, environment: str, by: str, to: str, now: datetime) -> None:
    require(LockAction.HAND_OVER, environment, lock, now)
    assert lock is not None
    if lock.holder != by:
        raise NotLockHolder(lock, now, f"{lock.holder} may hand it over")
    if to == lock.holder:
        raise InvalidInput(f"{to} holds the lock on {environment} already")


def check_keep(lock: Lock | None, environment: str, by: str, now: datetime) -> str:
    """Who asked for the lock, when ``by`` (its holder) declines to hand it over."""
    require(LockAction.KEEP, environment, lock, now)
    assert lock is not None
    if lock.holder != by:
        raise NotLockHolder(lock, now, f"{lock.holder} may answer a handover request")
    if lock.handover_requested_by is None:
        raise InvalidInput(f"nobody asked for the lock on {environment}")
    return lock.handover_requested_by


def is_reminder_due(lock: Lock, before_s: float, now: datetime) -> bool:
    """The holder is reminded once, ``before_s`` before the expiry. A lock taken, relocked or
    extended to expire within that gets no reminder: its holder set the time a moment ago. One
    handed over gets it, however late: its new holder did not choose the time."""
    if lock.expires_at is None or lock.reminded_at is not None or lock.is_expired(now):
        return False
    lead = timedelta(seconds=before_s)
    set_at = lock.expiry_set_at or lock.since
    holder_set_it_late = set_at >= lock.since and set_at >= lock.expires_at - lead
    return lock.expires_at - lead <= now and not holder_set_it_late


# -- input -----------------------------------------------------------------------------------------
def check_reason(reason: str) -> str:
    """One line people can read: runs of ASCII spaces and control characters become one space
    (the same characters the API's pattern treats as invisible, so both agree)."""
    text = _INVISIBLE.sub(" ", reason).strip()
    if not text:
        raise InvalidInput('say why the environment is locked (e.g. "incident 4711")')
    if len(text) > REASON_MAX:
        raise InvalidInput(f"the reason is {len(text)} characters long; at most {REASON_MAX}")
    return text


def check_seconds(seconds: float) -> float:
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:  # also refuses NaN
        raise InvalidInput(f"a lock lasts from 1m to 365d, not {format_duration(seconds)}")
    return seconds


def lock_duration(text: str | None) -> float | None:
    """Seconds in ``2h``, ``for 2h``, ``1h30m``; None for nothing (the lock holds until it is
    unlocked). A bare number is refused: ``for 2`` means hours to some and seconds to others."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    if value.lower().startswith("for "):
        value = value[4:].strip()
    if value.replace(" ", "").isdigit():
        raise InvalidInput(f"give {value!r} a unit: 30m, 2h, 1d")
    try:
        return check_seconds(parse_duration(value))
    except ValueError as exc:
        raise InvalidInput(
            f"invalid lock duration {value!r}: use e.g. 30m, 2h, 1h30m (from 1m to 365d)"
        ) from exc


def split_for(words: list[str]) -> tuple[list[str], float | None]:
    """``["incident 4711", "for", "2h"]`` → ``(["incident 4711"], 7200.0)``. Words after the
    last ``for`` that do not look like a duration (no digit first) are part of the reason, so
    ``deploy freeze for the migration`` stays a reason; ``for 2hrs`` is an error, not a reason."""
    lowered = [w.lower() for w in words]
    if "for" not in lowered:
        return words, None
    at = len(lowered) - 1 - lowered[::-1].index("for")
    tail = words[at + 1 :]
    if not tail or not tail[0].lstrip("+-")[:1].isdigit():  # (``for -5m`` is a wrong duration)
        return words, None
    return words[:at], lock_duration("".join(tail))


# -- words for people ------------------------------------------------------------------------------
def _clock(at: datetime, now: datetime) -> str:
    at, now = at.astimezone(UTC), now.astimezone(UTC)
    return f"{at:%H:%M} UTC" if at.date() == now.date() else f"{at:%Y-%m-%d %H:%M} UTC"


def ago(at: datetime, now: datetime) -> str:
    seconds = (now - at).total_seconds()
    return "just now" if seconds < 60 else f"{format_duration(seconds)} ago"


def until(lock: Lock, now: datetime) -> str:
    """Until when the lock holds, in words."""
    if lock.kind == "rollback":
        return "until someone acknowledges the rollback"
    if lock.expires_at is None:
        return "until it is unlocked"
    verb = "expired" if lock.is_expired(now) else "expires"
    return f"{verb} {_clock(lock.expires_at, now)}"


def describe(lock: Lock, now: datetime, name: Namer = str) -> str:
    """``production is locked by alice since 10:02 UTC (2h ago): incident 4711; expires
    12:02 UTC``: who, since when, why and until when, for people being refused."""
    return (
        f"{lock.environment} is locked by {name(lock.holder)} since {_clock(lock.since, now)} "
        f"({ago(lock.since, now)}): {lock.reason}; {until(lock, now)}"
    )


def expiry_in(lock: Lock, now: datetime) -> str:
    """``12:02 UTC (in 15m)``, for reminders."""
    assert lock.expires_at is not None
    left = max((lock.expires_at - now).total_seconds(), 0.0)
    return f"{_clock(lock.expires_at, now)} (in {format_duration(left) if left >= 60 else 'under a minute'})"
