"""The lock rules without a database: who may do what from which state, the words people are
refused with, durations as people type them, and when a reminder is due."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import CommandRefused, Forbidden, InvalidInput, NotFound
from core.locks import (
    REASON_MAX,
    TRANSITIONS,
    EnvironmentLocked,
    Lock,
    LockAction,
    LockState,
    NotLockHolder,
    after_rollback,
    check_hand_over,
    check_keep,
    check_reason,
    check_release,
    check_request_handover,
    describe,
    expiry_in,
    extended_until,
    is_reminder_due,
    lock_duration,
    plan_acquire,
    require,
    split_for,
    state_of,
)

NOW = datetime(2026, 3, 2, 12, 2, tzinfo=UTC)
H = timedelta(hours=1)


def lock(**changes: object) -> Lock:
    base = Lock(
        environment="production",
        holder="alice",
        reason="incident 4711",
        since=NOW - 2 * H,
        expires_at=NOW + H,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# -- words -----------------------------------------------------------------------------------------
def test_describe_says_who_since_when_why_and_until_when() -> None:
    held = lock(
        since=datetime(2026, 3, 2, 10, 2, tzinfo=UTC), expires_at=datetime(2026, 3, 2, 14, 2, tzinfo=UTC)
    )
    assert describe(held, NOW) == (
        "production is locked by alice since 10:02 UTC (2h ago): incident 4711; expires 14:02 UTC"
    )


@pytest.mark.parametrize(
    ("changes", "ending"),
    [
        ({"expires_at": None}, "; until it is unlocked"),
        ({"kind": "rollback", "expires_at": None}, "; until someone acknowledges the rollback"),
        ({"expires_at": NOW - timedelta(minutes=1)}, "; expired 12:01 UTC"),
        ({"expires_at": NOW + 30 * H}, "; expires 2026-03-03 18:02 UTC"),
    ],
)
def test_describe_says_until_when_for_every_kind_of_lock(changes: dict[str, object], ending: str) -> None:
    assert describe(lock(**changes), NOW).endswith(ending)


def test_describe_writes_old_dates_in_full_and_fresh_locks_as_just_now() -> None:
    old = lock(since=NOW - 26 * H)
    assert "since 2026-03-01 10:02 UTC (1d2h ago)" in describe(old, NOW)
    assert "since 12:01 UTC (just now)" in describe(lock(since=NOW - timedelta(seconds=59)), NOW)
    assert "locked by <@U1>" in describe(lock(holder="U1"), NOW, lambda n: f"<@{n}>")


def test_expiry_in_counts_down() -> None:
    assert expiry_in(lock(expires_at=NOW + timedelta(minutes=15)), NOW) == "12:17 UTC (in 15m)"
    assert expiry_in(lock(expires_at=NOW + timedelta(seconds=20)), NOW) == "12:02 UTC (in under a minute)"


# -- durations and reasons -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2h", 7200.0), ("for 2h", 7200.0), (" 1h30m ", 5400.0), ("1d", 86400.0), (None, None), ("", None)],
)
def test_lock_durations(text: str | None, seconds: float | None) -> None:
    assert lock_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2", "give '2' a unit"),
        ("2hrs", "use e.g. 30m, 2h"),
        ("30s", "from 1m to 365d"),
        ("400d", "from 1m to 365d"),
        ("soon", "use e.g."),
    ],
)
def test_bad_durations_are_refused_saying_what_to_write(text: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        lock_duration(text)


@pytest.mark.parametrize(
    ("words", "rest", "seconds"),
    [
        (["incident 4711", "for", "2h"], ["incident 4711"], 7200.0),
        (["incident", "4711", "FOR", "1h", "30m"], ["incident", "4711"], 5400.0),
        (["incident 4711"], ["incident 4711"], None),
        (["waiting", "for", "the", "migration"], ["waiting", "for", "the", "migration"], None),
        (["for", "2h"], [], 7200.0),
    ],
)
def test_split_for_takes_the_duration_off_the_end(
    words: list[str], rest: list[str], seconds: float | None
) -> None:
    assert split_for(words) == (rest, seconds)


def test_split_for_refuses_a_duration_it_cannot_read_instead_of_making_it_the_reason() -> None:
    with pytest.raises(InvalidInput, match="2hrs"):
        split_for(["incident", "for", "2hrs"])


def test_reasons_are_required_single_spaced_and_bounded() -> None:
    assert check_reason("  incident\n 4711 ") == "incident 4711"
    with pytest.raises(InvalidInput, match="say why"):
        check_reason(" \t")
    with pytest.raises(InvalidInput, match="at most 500"):
        check_reason("x" * 501)


# -- the transition table --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("current", "state"),
    [(None, LockState.FREE), (lock(), LockState.HELD), (lock(expires_at=NOW), LockState.EXPIRED)],
)
def test_state_of(current: Lock | None, state: LockState) -> None:
    assert state_of(current, NOW) is state


@pytest.mark.parametrize("action", list(LockAction))
@pytest.mark.parametrize(
    ("current", "state"),
    [(None, LockState.FREE), (lock(), LockState.HELD), (lock(expires_at=NOW - H), LockState.EXPIRED)],
)
def test_every_action_starts_only_from_the_states_its_table_row_names(
    action: LockAction, current: Lock | None, state: LockState
) -> None:
    allowed, _ = TRANSITIONS[action]
    if state in allowed:
        require(action, "production", current, NOW)
    elif state is LockState.HELD:
        with pytest.raises(EnvironmentLocked, match="locked by alice"):
            require(action, "production", current, NOW)
    else:
        with pytest.raises(NotFound, match="production is not locked"):
            require(action, "production", current, NOW)


@pytest.mark.parametrize(
    ("current", "holder", "kind", "planned"),
    [
        (None, "bob", "manual", LockAction.ACQUIRE),
        (lock(expires_at=NOW - H), "bob", "manual", LockAction.ACQUIRE),
        (lock(), "alice", "manual", LockAction.RELOCK),
        (lock(), "alice", "rollback", LockAction.RELOCK),
        (lock(kind="rollback", expires_at=None), "alice", "rollback", LockAction.RELOCK),
    ],
)
def test_plan_acquire(current: Lock | None, holder: str, kind: str, planned: LockAction) -> None:
    assert plan_acquire(current, holder, kind, NOW) is planned  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("current", "holder", "kind"),
    [
        (lock(), "bob", "manual"),
        (lock(), "bob", "rollback"),
        (lock(kind="rollback", expires_at=None), "alice", "manual"),  # acknowledge it, not relock it
    ],
)
def test_someone_elses_lock_refuses_with_its_description(current: Lock, holder: str, kind: str) -> None:
    with pytest.raises(EnvironmentLocked) as refused:
        plan_acquire(current, holder, kind, NOW)  # type: ignore[arg-type]
    assert refused.value.message == describe(current, NOW)
    assert refused.value.kind == "conflict" and isinstance(refused.value, CommandRefused)
    assert refused.value.lock == current


@pytest.mark.parametrize(
    ("current", "by", "admin", "deployer", "allowed"),
    [
        (lock(), "alice", False, True, True),
        (lock(), "root", True, False, True),
        (lock(), "bob", False, True, False),
        (lock(kind="rollback", expires_at=None), "bob", False, True, True),
        (lock(kind="rollback", expires_at=None), "root", True, False, True),
        (lock(kind="rollback", expires_at=None), "viewer", False, False, False),
    ],
)
def test_release_rules(current: Lock, by: str, admin: bool, deployer: bool, allowed: bool) -> None:
    if allowed:
        check_release(current, "production", by, NOW, admin=admin, deployer=deployer)
        return
    with pytest.raises(NotLockHolder) as refused:
        check_release(current, "production", by, NOW, admin=admin, deployer=deployer)
    assert isinstance(refused.value, Forbidden)
    assert "locked by alice" in refused.value.message
    assert refused.value.told(lambda n: f"<@{n}>").startswith("production is locked by <@alice>")


def test_release_of_a_free_or_expired_environment_is_not_found() -> None:
    for current in (None, lock(expires_at=NOW - H)):
        with pytest.raises(NotFound, match="production is not locked"):
            check_release(current, "production", "alice", NOW, admin=True, deployer=True)


def test_extend_moves_the_expiry_for_the_holder_only() -> None:
    assert extended_until(lock(), "production", "alice", 3600, NOW) == NOW + 2 * H
    soon = lock(expires_at=NOW + timedelta(minutes=1))
    assert extended_until(soon, "production", "alice", 3600, NOW) == NOW + timedelta(minutes=61)
    with pytest.raises(NotLockHolder, match="Only alice may extend it"):
        extended_until(lock(), "production", "bob", 3600, NOW)
    with pytest.raises(InvalidInput, match="no expiry to extend"):
        extended_until(lock(expires_at=None), "production", "alice", 3600, NOW)
    with pytest.raises(InvalidInput, match="at most 365d"):
        extended_until(lock(expires_at=NOW + 300 * 24 * H), "production", "alice", 100 * 86400, NOW)


def test_handover_rules() -> None:
    check_request_handover(lock(), "production", "bob", NOW)
    with pytest.raises(InvalidInput, match="you hold the lock"):
        check_request_handover(lock(), "production", "alice", NOW)
    with pytest.raises(InvalidInput, match="acknowledge the rollback"):
        check_request_handover(lock(kind="rollback", expires_at=None), "production", "bob", NOW)
    check_hand_over(lock(), "production", "alice", "bob", NOW)
    with pytest.raises(NotLockHolder, match="Only alice may hand it over"):
        check_hand_over(lock(), "production", "bob", "bob", NOW)
    with pytest.raises(InvalidInput, match="holds the lock"):
        check_hand_over(lock(), "production", "alice", "alice", NOW)
    assert check_keep(lock(handover_requested_by="bob"), "production", "alice", NOW) == "bob"
    with pytest.raises(InvalidInput, match="nobody asked"):
        check_keep(lock(), "production", "alice", NOW)
    with pytest.raises(NotLockHolder):
        check_keep(lock(handover_requested_by="bob"), "production", "bob", NOW)


@pytest.mark.parametrize(
    ("changes", "due"),
    [
        ({"expires_at": NOW + timedelta(minutes=14)}, True),
        ({"expires_at": NOW + timedelta(minutes=15)}, True),
        ({"expires_at": NOW + timedelta(minutes=16)}, False),
        ({"expires_at": NOW + timedelta(minutes=14), "reminded_at": NOW - H}, False),
        ({"expires_at": NOW - timedelta(minutes=1)}, False),
        ({"expires_at": None}, False),
        # taken for 10 minutes a moment ago: its holder knows when it ends
        ({"since": NOW - timedelta(minutes=1), "expires_at": NOW + timedelta(minutes=9)}, False),
        # relocked or extended for 10 minutes a moment ago: the same
        ({"expiry_set_at": NOW - timedelta(minutes=1), "expires_at": NOW + timedelta(minutes=9)}, False),
        # handed over a moment ago, 10 minutes before the expiry its giver set: its new holder did not
        (
            {
                "since": NOW - timedelta(minutes=1),
                "expiry_set_at": NOW - 2 * H,
                "expires_at": NOW + timedelta(minutes=9),
            },
            True,
        ),
    ],
)
def test_a_reminder_is_due_once_within_the_lead_of_the_expiry(changes: dict[str, object], due: bool) -> None:
    assert is_reminder_due(lock(**changes), 15 * 60, NOW) is due


# -- after a rollback ------------------------------------------------------------------------------
@pytest.mark.parametrize("current", [None, lock(expires_at=NOW - H)], ids=["free", "expired"])
def test_a_rollback_locks_a_free_environment_as_shipyard_until_acknowledged(current: Lock | None) -> None:
    assert after_rollback(current, "production", "rolled back", NOW) == Lock(
        environment="production", holder="shipyard", reason="rolled back", since=NOW, kind="rollback"
    )


def test_a_rollback_makes_a_held_manual_lock_its_own_and_leaves_a_rollback_lock() -> None:
    held = lock(reminded_at=NOW, reason="x" * REASON_MAX)
    became = after_rollback(held, "production", "rolled back", NOW)
    assert became is not None
    assert (became.holder, became.since, became.kind, became.expires_at) == (
        "alice",
        held.since,
        "rollback",
        None,
    )
    assert became.reminded_at is None
    assert (
        became.reason.startswith("rolled back (locked by alice before: x")
        and len(became.reason) == REASON_MAX
    )
    assert after_rollback(became, "production", "rolled back again", NOW) is None
