"""Environment locks on real SQLite and PostgreSQL: one holder at a time (also when many lock at
the same instant), expiry and take-over, the holder locking again, who may unlock, the rollback
lock's acknowledgement, handovers, and the keeper's claims made exactly once across replicas."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from core.errors import Conflict, InvalidInput, NotFound
from core.events import NO_RUN
from core.locks import EnvironmentLocked, Lock, NotLockHolder, describe
from core.ports import AuditEntry
from storage.locks import LockStore
from storage.store import SqlStore

T = TypeVar("T")
NOW = datetime(2026, 3, 2, 10, 2, tzinfo=UTC)
H = 3600.0


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.fixture
def locks(db_url: str, stores: list[SqlStore]) -> LockStore:
    store = SqlStore(db_url)
    stores.append(store)
    return LockStore(store)


def audit(locks: LockStore) -> list[AuditEntry]:
    """Oldest first."""
    return list(reversed(locks.store.audit_entries(200)))


def test_one_holder_at_a_time_and_the_refusal_says_who_since_when_why_until_when(
    locks: LockStore,
) -> None:
    held = locks.acquire("production", "alice", "incident 4711", 2 * H, NOW, channel="rest")
    assert held == Lock(
        environment="production",
        holder="alice",
        reason="incident 4711",
        since=NOW,
        expires_at=at(2 * H),
    )
    with pytest.raises(EnvironmentLocked) as refused:
        locks.acquire("production", "bob", "deploy hotfix", None, at(H), channel="slack")
    assert refused.value.message == (
        "production is locked by alice since 10:02 UTC (1h ago): incident 4711; expires 12:02 UTC"
    )
    assert locks.current("production", at(H)) == held
    assert locks.all(at(H)) == [held]
    assert locks.current("staging", at(H)) is None  # other environments are not affected
    locks.acquire("staging", "bob", "load test", None, at(H))
    assert [lock.environment for lock in locks.all(at(H))] == ["production", "staging"]

    entries = audit(locks)
    assert [(e.action, e.actor, e.channel, e.outcome) for e in entries] == [
        ("lock_environment", "alice", "rest", "accepted"),
        ("lock_environment", "bob", "slack", "rejected"),
        ("lock_environment", "bob", "system", "accepted"),
    ]
    assert entries[0].target == "environment production" and entries[0].reason == "incident 4711"
    assert entries[0].detail["expires_at"] == at(2 * H).isoformat()
    assert entries[1].reason == refused.value.message


def test_the_holder_locking_again_changes_reason_and_expiry_but_not_since(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", 2 * H, NOW)
    again = locks.acquire("production", "alice", "incident 4711, still", None, at(H))
    assert (again.since, again.reason, again.expires_at) == (NOW, "incident 4711, still", None)
    assert locks.current("production", at(100 * H)) == again  # no expiry any more
    assert [e.action for e in audit(locks)] == ["lock_environment", "relock_environment"]


def test_an_expired_lock_is_free_and_is_taken_over_by_a_conditional_update(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", H, NOW)
    assert locks.current("production", at(H - 1)) is not None
    assert locks.current("production", at(H)) is None  # expired, not swept: free
    assert locks.all(at(H)) == []
    taken = locks.acquire("production", "bob", "release 1.4", None, at(2 * H))
    assert (taken.holder, taken.since, taken.expires_at) == ("bob", at(2 * H), None)
    assert locks.expire_due(at(3 * H)) == []  # nothing left to expire: it was taken over
    assert [(e.action, e.actor) for e in audit(locks)] == [
        ("lock_environment", "alice"),
        ("expire_lock", "shipyard"),
        ("lock_environment", "bob"),
    ]


def test_release_rules(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", None, NOW)
    with pytest.raises(NotLockHolder, match=r"locked by alice .* Only alice or an admin may unlock it"):
        locks.release("production", "bob", at(60), admin=False)
    assert locks.current("production", at(60)) is not None
    gone = locks.release("production", "alice", at(60), admin=False, channel="slack")
    assert gone.holder == "alice" and locks.current("production", at(60)) is None
    with pytest.raises(NotFound, match="production is not locked"):
        locks.release("production", "alice", at(61), admin=False)

    locks.acquire("production", "alice", "incident 4712", None, at(120))
    assert locks.release("production", "root", at(180), admin=True).holder == "alice"  # an admin may

    assert [(e.action, e.actor, e.outcome) for e in audit(locks)] == [
        ("lock_environment", "alice", "accepted"),
        ("unlock_environment", "bob", "rejected"),
        ("unlock_environment", "alice", "accepted"),
        ("unlock_environment", "alice", "rejected"),
        ("lock_environment", "alice", "accepted"),
        ("unlock_environment", "root", "accepted"),
    ]


def test_a_rollback_lock_holds_until_any_deployer_acknowledges_it(locks: LockStore) -> None:
    rollback = locks.acquire(
        "production", "carol", "rolled back web 1.4.2 to 1.4.1", 2 * H, NOW, kind="rollback"
    )
    assert (rollback.kind, rollback.expires_at) == ("rollback", None)  # no expiry: until acknowledged
    assert describe(rollback, NOW).endswith("until someone acknowledges the rollback")
    assert locks.expire_due(at(1000 * H)) == []
    with pytest.raises(EnvironmentLocked, match="acknowledges the rollback"):
        locks.acquire("production", "carol", "back to normal", None, at(60))  # not relocked away
    with pytest.raises(NotLockHolder, match="a deployer or an admin may acknowledge"):
        locks.release("production", "viewer", at(60), admin=False, deployer=False)
    gone = locks.release("production", "bob", at(120), admin=False, deployer=True)
    assert gone.kind == "rollback" and locks.current("production", at(120)) is None
    assert [(e.action, e.outcome) for e in audit(locks)][-2:] == [
        ("unlock_environment", "rejected"),
        ("acknowledge_rollback", "accepted"),
    ]


def test_the_holders_manual_lock_becomes_the_rollback_lock(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", H, NOW)
    rollback = locks.acquire("production", "alice", "rolled back to 1.4.1", None, at(60), kind="rollback")
    assert (rollback.kind, rollback.expires_at, rollback.since) == ("rollback", None, NOW)


def test_extend_by_the_holder_only_and_it_is_reminded_again(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", H, NOW)
    assert [lock.environment for lock in locks.due_reminders(at(50 * 60), 15 * 60)] == ["production"]
    with pytest.raises(NotLockHolder, match="Only alice may extend it"):
        locks.extend("production", "bob", H, at(50 * 60))
    longer = locks.extend("production", "alice", H, at(50 * 60))
    assert longer.expires_at == at(2 * H) and longer.reminded_at is None
    assert locks.due_reminders(at(H), 15 * 60) == []
    assert [lock.expires_at for lock in locks.due_reminders(at(2 * H - 600), 15 * 60)] == [at(2 * H)]
    assert locks.current("production", at(2 * H - 1)) is not None
    with pytest.raises(NotFound):
        locks.extend("production", "alice", H, at(2 * H))  # too late: it expired


def test_a_handover_moves_the_lock_and_keep_declines(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", 2 * H, NOW)
    with pytest.raises(InvalidInput, match="you hold the lock"):
        locks.request_handover("production", "alice", at(60))
    asked = locks.request_handover("production", "bob", at(60))
    assert asked.handover_requested_by == "bob"
    assert locks.request_handover("production", "bob", at(70)) == asked  # asking twice: one request
    assert [lock.handover_requested_by for lock in locks.due_handovers(at(80))] == ["bob"]
    assert locks.due_handovers(at(90)) == []  # told once

    kept, asker = locks.keep("production", "alice", at(100))
    assert (kept.handover_requested_by, asker) == (None, "bob")
    locks.request_handover("production", "bob", at(110))  # asked again: told again
    assert len(locks.due_handovers(at(120))) == 1

    with pytest.raises(NotLockHolder, match="Only alice may hand it over"):
        locks.hand_over("production", "bob", "bob", at(130))
    moved = locks.hand_over("production", "alice", "bob", at(130))
    assert (moved.holder, moved.since, moved.expires_at, moved.handover_requested_by) == (
        "bob",
        at(130),
        at(2 * H),
        None,
    )
    assert locks.current("production", at(140)) == moved
    with pytest.raises(NotLockHolder):
        locks.release("production", "alice", at(150), admin=False)
    actions = [e.action for e in audit(locks) if e.outcome == "accepted"]
    assert actions == [
        "lock_environment",
        "request_lock_handover",
        "tell_lock_handover",
        "keep_lock",
        "request_lock_handover",
        "tell_lock_handover",
        "hand_over_lock",
    ]


def test_expire_due_expires_each_lock_once_and_audits_it(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", H, NOW)
    locks.acquire("staging", "bob", "load test", 2 * H, NOW)
    locks.acquire("dev", "carol", "poking around", None, NOW)
    assert locks.expire_due(at(H - 1)) == []
    assert [lock.environment for lock in locks.expire_due(at(H))] == ["production"]
    assert locks.expire_due(at(H)) == []
    assert [lock.environment for lock in locks.expire_due(at(10 * H))] == ["staging"]
    assert [lock.environment for lock in locks.all(at(10 * H))] == ["dev"]
    expired = [e for e in audit(locks) if e.action == "expire_lock"]
    assert [(e.actor, e.channel, e.detail["holder"]) for e in expired] == [
        ("shipyard", "system", "alice"),
        ("shipyard", "system", "bob"),
    ]


def test_reminders_respect_each_environments_lead_and_skip_short_locks(locks: LockStore) -> None:
    locks.acquire("production", "alice", "incident 4711", H, NOW)
    locks.acquire("staging", "bob", "load test", H, NOW)
    locks.acquire("dev", "carol", "a quick look", 10 * 60, at(45 * 60))  # shorter than the lead
    due = locks.due_reminders(at(46 * 60), 15 * 60, ["production"])
    assert [(lock.environment, lock.reminded_at) for lock in due] == [("production", at(46 * 60))]
    assert locks.due_reminders(at(46 * 60), 15 * 60, ["dev"]) == []
    assert [lock.environment for lock in locks.due_reminders(at(55 * 60), 5 * 60)] == ["staging"]


def test_bad_input_is_refused_before_anything_is_stored(locks: LockStore) -> None:
    with pytest.raises(InvalidInput, match="say why"):
        locks.acquire("production", "alice", "  ", None, NOW)
    with pytest.raises(InvalidInput, match="from 1m to 365d"):
        locks.acquire("production", "alice", "x", 5, NOW)
    assert locks.all(NOW) == []


# -- concurrency ---------------------------------------------------------------------------------
def _race(count: int, fn: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``fn(0..count-1)`` on ``count`` threads released at the same instant."""
    gate = threading.Barrier(count)

    def one(i: int) -> T | BaseException:
        gate.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.postgres
def test_concurrent_acquires_on_postgres_exactly_one_wins(pg_url: str, stores: list[SqlStore]) -> None:
    people = 12
    books = [LockStore(SqlStore(pg_url, pool_size=1)) for _ in range(people)]
    stores.extend(locks.store for locks in books)
    for locks in books:  # connected first, so they race on the insert, not on connecting
        assert locks.current("production", NOW) is None
    for round_, moment in enumerate((NOW, at(2 * H))):  # free, then expired and not swept

        def lock(i: int, when: datetime = moment) -> Lock:
            return books[i].acquire("production", f"p{i}", "mine", H, when)

        results = _race(people, lock)
        won = [r for r in results if isinstance(r, Lock)]
        lost = [r for r in results if isinstance(r, EnvironmentLocked)]
        assert len(won) == 1 and len(lost) == people - 1, results
        assert all(exc.lock == won[0] for exc in lost)  # every loser was told the winner's lock
        assert books[0].current("production", moment) == won[0], round_
    accepted = [e for e in audit(books[0]) if e.action == "lock_environment" and e.outcome == "accepted"]
    assert len(accepted) == 2


@pytest.mark.postgres
def test_two_replicas_claim_each_expiry_reminder_and_handover_once(
    pg_url: str, stores: list[SqlStore]
) -> None:
    replicas = [LockStore(SqlStore(pg_url)) for _ in range(2)]
    stores.extend(locks.store for locks in replicas)
    setup = replicas[0]
    envs = [f"env-{i}" for i in range(30)]
    for env in envs:
        setup.acquire(env, "alice", "maintenance", H, NOW)
        setup.request_handover(env, "bob", NOW)

    def claimed(fn: Callable[[LockStore], list[Lock]]) -> list[str]:
        results = _race(2, lambda i: fn(replicas[i]))
        assert not [r for r in results if isinstance(r, BaseException)], results
        return sorted(lock.environment for r in results for lock in r)  # type: ignore[union-attr]

    assert claimed(lambda b: b.due_handovers(at(60))) == sorted(envs)
    assert claimed(lambda b: b.due_reminders(at(50 * 60), 15 * 60)) == sorted(envs)
    assert claimed(lambda b: b.expire_due(at(H))) == sorted(envs)
    counts = {a: 0 for a in ("tell_lock_handover", "remind_lock_holder", "expire_lock")}
    for entry in setup.store.audit_entries(1000):
        if entry.action in counts:
            counts[entry.action] += 1
    assert counts == dict.fromkeys(counts, len(envs))


def test_claims_are_made_once_by_two_books_on_sqlite_too(sqlite_url: str, stores: list[SqlStore]) -> None:
    first, second = LockStore(SqlStore(sqlite_url)), LockStore(SqlStore(sqlite_url))
    stores.extend([first.store, second.store])
    first.acquire("production", "alice", "incident 4711", H, NOW)
    results = _race(2, lambda i: (first, second)[i].expire_due(at(H)))
    assert sorted(len(r) for r in results if isinstance(r, list)) == [0, 1]


def test_every_lock_change_appends_its_event_which_readers_follow_by_cursor(locks: LockStore) -> None:
    cursor = locks.store.last_event_seq()
    locks.acquire("production", "alice", "incident 4711", H, NOW, channel="rest")
    locks.extend("production", "alice", 2 * H, at(60))
    with pytest.raises(EnvironmentLocked):  # a refusal changes nothing, so appends nothing
        locks.acquire("production", "bob", "deploy hotfix", None, at(120))
    locks.request_handover("production", "bob", at(180))
    locks.hand_over("production", "alice", "bob", at(240))
    locks.release("production", "bob", at(300), admin=False)
    locks.acquire("staging", "carol", "load test", 60.0, at(300))
    assert [lock.environment for lock in locks.expire_due(at(360))] == ["staging"]

    events = locks.store.events_after(cursor)
    assert [(e.name, e.subject_id, e.from_status, e.to_status) for e in events] == [
        ("lock.acquired", "production", "free", "held"),
        ("lock.extended", "production", "held", "held"),
        ("lock.handover_requested", "production", "held", "held"),
        ("lock.handed_over", "production", "held", "held"),
        ("lock.released", "production", "held", "free"),
        ("lock.acquired", "staging", "free", "held"),
        ("lock.expired", "staging", "expired", "free"),
    ]
    assert [e.seq for e in events] == sorted({e.seq for e in events})  # strictly increasing
    assert {(e.subject, e.run_id) for e in events} == {("lock", NO_RUN)}
    assert events[3].data["holder"] == "bob" and events[3].data["by"] == "alice"
    assert locks.store.events_after(events[-1].seq) == []


def test_the_rollback_lock_appends_its_event_in_the_engines_transaction(locks: LockStore) -> None:
    cursor = locks.store.last_event_seq()
    locks.acquire("production", "alice", "load test", 60.0, NOW)
    with locks.store.transaction() as tx:  # the expired lock is swept, the rollback lock holds
        assert tx.lock_after_rollback("production", "rolled back to api@1.4.1", at(120))
    with locks.store.transaction() as tx:  # held already: that lock stays, nothing is appended
        assert not tx.lock_after_rollback("production", "rolled back again", at(180))
    events = locks.store.events_after(cursor)
    assert [(e.name, e.from_status, e.to_status, e.data["kind"]) for e in events] == [
        ("lock.acquired", "free", "held", "manual"),
        ("lock.acquired", "expired", "held", "rollback"),
    ]


def test_a_rollback_that_finishes_under_a_manual_lock_leaves_it_a_rollback_lock(locks: LockStore) -> None:
    """Alice locked production while the rollback deployed: her lock would expire in an hour
    and the next queued run ship the bad version again. It becomes the rollback lock instead:
    hers still, with no expiry, until someone acknowledges the rollback."""
    cursor = locks.store.last_event_seq()
    locks.acquire("production", "alice", "incident 4711", H, NOW)
    with locks.store.transaction() as tx:
        assert tx.lock_after_rollback("production", "rolled back to api@1.4.1", at(120))
    held = locks.current("production", at(2 * H))
    assert held is not None
    assert (held.kind, held.holder, held.since, held.expires_at) == ("rollback", "alice", NOW, None)
    assert held.reason == "rolled back to api@1.4.1 (locked by alice before: incident 4711)"
    events = locks.store.events_after(cursor)
    assert [(e.name, e.from_status, e.to_status, e.data["kind"]) for e in events] == [
        ("lock.acquired", "free", "held", "manual"),
        ("lock.relocked", "held", "held", "rollback"),
    ]
    with pytest.raises(NotLockHolder):  # acknowledged by a deployer, like any rollback lock
        locks.release("production", "bob", at(2 * H), admin=False, deployer=False)
    locks.release("production", "bob", at(2 * H), admin=False, deployer=True)
    assert locks.current("production", at(2 * H)) is None


@pytest.mark.postgres
def test_a_rollback_never_sweeps_away_a_lock_someone_took_while_it_finished(
    pg_url: str, stores: list[SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine reads the environment free (alice's lock ran out); before it writes the
    rollback lock, bob takes the expired lock over on another replica. Bob keeps his lock: the
    engine's transaction loses the race and, decided again, makes bob's lock the rollback lock."""
    engine, person = LockStore(SqlStore(pg_url)), LockStore(SqlStore(pg_url))
    stores.extend((engine.store, person.store))
    engine.acquire("production", "alice", "load test", 60.0, NOW)
    import storage.locks

    read = storage.locks.current_lock
    taken: list[Lock] = []

    def current_then_bob_locks(conn: Any, environment: str, now: datetime) -> Lock | None:
        found = read(conn, environment, now)
        if not taken:  # committed by the other replica between the engine's read and its write
            taken.append(person.acquire("production", "bob", "hotfix", None, now))
        return found

    monkeypatch.setattr(storage.locks, "current_lock", current_then_bob_locks)
    with pytest.raises(Conflict), engine.store.transaction() as tx:
        tx.lock_after_rollback("production", "rolled back to api@1.4.1", at(120))
    assert taken and taken[0].holder == "bob"
    with engine.store.transaction() as tx:  # decided again: bob's lock stays, as the rollback's
        assert tx.lock_after_rollback("production", "rolled back to api@1.4.1", at(121))
    held = engine.current("production", at(121))
    assert held is not None and (held.holder, held.since) == (taken[0].holder, taken[0].since)
    assert held.kind == "rollback" and held.reason.endswith("(locked by bob before: hotfix)")


def test_taking_over_an_expired_lock_names_it_in_the_event(locks: LockStore) -> None:
    """No sweep will tell that alice's lock ran out: the event of bob's lock says it instead."""
    cursor = locks.store.last_event_seq()
    locks.acquire("production", "alice", "incident 4711", 60.0, NOW)
    locks.acquire("production", "bob", "release 1.4", None, at(120))
    locks.acquire("production", "bob", "release 1.5", None, at(180))  # (his own: no takeover)
    events = locks.store.events_after(cursor)
    assert [
        (e.from_status, e.data.get("previous_holder"), e.data.get("previous_reason")) for e in events
    ] == [
        ("free", None, None),
        ("expired", "alice", "incident 4711"),
        ("held", None, None),
    ]
