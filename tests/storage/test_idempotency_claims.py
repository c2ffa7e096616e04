"""Claims on an ``Idempotency-Key`` name their holder and hold a lease: the live holder renews
it, a claim left by a process that is gone frees the key once its lease ran out (and exactly one
of many retries takes it over), and a holder that lost its claim can neither answer for the key
nor commit the work it guards (``settle`` fences the work's own transaction)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.commands import TriggerRun
from core.engine import Decision
from core.ports import Tx
from core.runtime.service import Service, Then
from storage.idempotency import IDEMPOTENCY, ClaimLost, IdempotencyStore, settle
from storage.store import SqlTx
from tests.helpers import ALICE

MakeService = Callable[..., Service]
LEASE = timedelta(seconds=10)
QUICK = """
name: quick
stages:
  - {name: build, jobs: [{name: compile, run: "true"}]}
"""
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def keys_of(svc: Service) -> IdempotencyStore:
    return IdempotencyStore(svc.store, timedelta(hours=24), LEASE)  # type: ignore[arg-type]


def rows(svc: Service) -> list[tuple[str, str, str | None]]:
    with svc.store.engine.begin() as conn:  # type: ignore[attr-defined]
        found = conn.execute(sa.select(IDEMPOTENCY.c.key, IDEMPOTENCY.c.state, IDEMPOTENCY.c.holder))
        return [(r[0], r[1], r[2]) for r in found]


def test_a_renewed_claim_stays_and_a_lapsed_one_is_taken_over_by_one_retry(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url)
    keys = keys_of(svc)
    first = keys.claim("ci", "k", "fp", T0)
    assert first.outcome == "new" and first.holder

    assert keys.claim("ci", "k", "fp", T0 + LEASE / 2).outcome == "in_progress"
    assert keys.renew("ci", "k", first.holder, T0 + LEASE * 0.9)  # the live process renews
    assert keys.claim("ci", "k", "fp", T0 + LEASE * 1.5).outcome == "in_progress"

    # the holder died: once its lease ran out, of many retries exactly one takes the key over
    late = T0 + LEASE * 3
    with ThreadPoolExecutor(8) as pool:
        retries = list(pool.map(lambda _: keys.claim("ci", "k", "fp", late), range(16)))
    outcomes = [c.outcome for c in retries]
    assert outcomes.count("new") == 1 and set(outcomes) <= {"new", "in_progress"}
    (taken,) = [c for c in retries if c.outcome == "new"]
    assert taken.holder != first.holder

    # the old holder, had it lived on, can no longer renew, answer or release the key
    assert not keys.renew("ci", "k", first.holder, late)
    assert not keys.finish("ci", "k", first.holder, 202, {"body": "stale"})
    keys.release("ci", "k", first.holder)
    assert rows(svc) == [("k", "processing", taken.holder)]

    assert keys.finish("ci", "k", taken.holder, 202, {"body": "fresh"})
    replay = keys.claim("ci", "k", "fp", late)
    assert (replay.outcome, replay.response) == ("replay", {"body": "fresh"})
    assert keys.claim("ci", "k", "fp", late + LEASE * 100).outcome == "replay"  # answers do not lapse


def test_a_claim_made_before_leases_is_free_after_five_minutes(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url)
    with svc.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            sa.insert(IDEMPOTENCY).values(
                caller="ci", key="old", fingerprint="fp", state="processing", response={}, created_at=T0
            )
        )
    keys = keys_of(svc)
    assert keys.claim("ci", "old", "fp", T0 + timedelta(minutes=4)).outcome == "in_progress"
    assert keys.claim("ci", "old", "fp", T0 + timedelta(minutes=6)).outcome == "new"


def _settling(caller: str, key: str, holder: str) -> Then:
    def then(tx: Tx, decision: Decision) -> None:
        assert isinstance(tx, SqlTx)
        settle(tx.conn, caller, key, holder, 202, {"body": decision.state.run.id if decision.state else ""})

    return then


def test_work_commits_with_its_answer_only_while_its_request_holds_the_key(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, QUICK)
    keys = keys_of(svc)
    now = datetime.now(UTC)
    lost = keys.claim("ci", "lost", "fp", now - LEASE * 2)
    taken = keys.claim("ci", "lost", "fp", now)  # its lease ran out: another request took it
    held = keys.claim("ci", "held", "fp", now)
    assert (lost.outcome, taken.outcome, held.outcome) == ("new", "new", "new")

    with pytest.raises(ClaimLost):
        svc.handle(TriggerRun(pipeline="quick", actor=ALICE), _settling("ci", "lost", lost.holder))
    assert svc.store.list_runs("quick", 10) == []  # type: ignore[attr-defined]

    # in one group commit, the fenced command rolls back and the other still commits
    decisions, _ = svc.commit(
        [TriggerRun(pipeline="quick", actor=ALICE), TriggerRun(pipeline="quick", actor=ALICE)],
        [],
        [_settling("ci", "lost", lost.holder), _settling("ci", "held", held.holder)],
    )
    assert isinstance(decisions[0], ClaimLost)
    ok = decisions[1]
    assert isinstance(ok, Decision) and ok.state is not None
    assert [s.run.id for s in svc.store.list_runs("quick", 10)] == [ok.state.run.id]  # type: ignore[attr-defined]
    replay = keys.claim("ci", "held", "fp", now)
    assert (replay.outcome, replay.status_code, replay.response) == ("replay", 202, {"body": ok.state.run.id})
    assert sorted(rows(svc)) == [("held", "done", held.holder), ("lost", "processing", taken.holder)]
