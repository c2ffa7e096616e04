"""Every status column moves only along its table in ``core.states``, on real SQLite and
PostgreSQL: a move the table forbids is refused with ``IllegalTransition`` before anything is
written, and of two writers that make the same move from the same status exactly one wins."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from core import states
from core.commands import TriggerRun
from core.errors import IllegalTransition, ShipyardError
from core.runtime.service import Service
from storage.store import SqlStore
from storage.transition import COLUMNS, move
from tests.helpers import ALICE
from tests.pipelines import gated

NOW = datetime(2026, 3, 2, 10, 2, tzinfo=UTC)
WEBHOOK = "wh_0123456789abcdef01234567"
RUN_PARTS = ("run", "stage", "job", "gate")


def _webhook(status: str) -> dict[str, Any]:
    return {
        "id": WEBHOOK,
        "url": "http://127.0.0.1:9/hook",
        "events": [],
        "description": "",
        "secret": "whsec_x",
        "status": status,
        "status_reason": "",
        "owner": "alice",
        "from_seq": 0,
        "consecutive_failures": 0,
        "created_at": NOW,
    }


def _artifact(status: str) -> dict[str, Any]:
    return {
        "id": "a1",
        "name": "api",
        "version": "1.4.2",
        "digest": "sha256:" + "0" * 64,
        "uri": "oci://registry.local/api@1.4.2",
        "metadata": {},
        "created_by": "alice",
        "created_at": NOW,
        "bad": status == "bad",
    }


def _delivery(status: str) -> dict[str, Any]:
    return {
        "id": 1,
        "webhook_id": WEBHOOK,
        "key": "k1",
        "msg_id": "msg_1",
        "event_type": "run.started",
        "event_seq": 1,
        "position": 1,
        "run_id": "web-1",
        "subject_id": "web-1",
        "body": "{}",
        "state": status,
        "next_attempt_at": NOW,
        "last_error": "",
        "created_at": NOW,
    }


def _post(status: str) -> dict[str, Any]:
    return {"run_id": "web-1", "key": "gate:prod", "status": status}


def _written_by_the_service(status: str) -> dict[str, Any]:
    raise AssertionError("a run's rows are inserted by the service")


#: kind -> (the row's values at a status, the row's key column, the key, a legal move)
ROWS: dict[str, tuple[Callable[[str], dict[str, Any]], str, Any, tuple[str, str]]] = {
    "run": (_written_by_the_service, "pipeline", "ship", ("running", "paused")),
    "stage": (_written_by_the_service, "name", "production", ("pending", "waiting")),
    "job": (_written_by_the_service, "name", "compile", ("queued", "running")),
    "gate": (_written_by_the_service, "stage_name", "production", ("pending", "open")),
    "artifact": (_artifact, "id", "a1", ("registered", "bad")),
    "webhook": (_webhook, "id", WEBHOOK, ("active", "disabled")),
    "delivery": (_delivery, "id", 1, ("pending", "sending")),
    "slack_post": (_post, "key", "gate:prod", ("waiting", "sending")),
}


@pytest.fixture
def store(db_url: str, make_service: Callable[..., Service]) -> SqlStore:
    """A store holding one triggered run, whose rows ``ROWS`` finds by name (one of each)."""
    service = make_service(db_url, gated(name="ship"))  # a run, two stages, two jobs, a gate
    started = service.handle(TriggerRun(pipeline="ship", actor=ALICE)).state
    assert started is not None
    with service.store.engine.connect() as conn:
        for kind in RUN_PARTS:
            spec = COLUMNS[kind]
            _, key, ident, _ = ROWS[kind]
            assert conn.execute(sa.select(spec.table).where(spec.table.c[key] == ident)).all(), kind
    return service.store


def _put(store: SqlStore, kind: str, status: str) -> None:
    """Insert the row at ``status``, or set it there (test set-up, not a transition)."""
    values, key, ident, _ = ROWS[kind]
    spec = COLUMNS[kind]
    with store.engine.begin() as conn:
        if kind in RUN_PARTS:
            conn.execute(sa.update(spec.table).where(spec.table.c[key] == ident).values(status=status))
            return
        if kind == "delivery" and conn.execute(sa.select(spec.table.c.id)).first() is None:
            conn.execute(sa.insert(COLUMNS["webhook"].table).values(_webhook("active")))
        if conn.execute(sa.select(spec.table).where(spec.table.c[key] == ident)).first() is None:
            conn.execute(sa.insert(spec.table).values(values(status)))
        else:
            conn.execute(
                sa.update(spec.table)
                .where(spec.table.c[key] == ident)
                .values({spec.column: spec.encode(status)})
            )


def _status(store: SqlStore, kind: str) -> Any:
    _, key, ident, _ = ROWS[kind]
    spec = COLUMNS[kind]
    with store.engine.connect() as conn:
        return conn.execute(sa.select(spec.table.c[spec.column]).where(spec.table.c[key] == ident)).scalar()


def _move(store: SqlStore, kind: str, old: str, new: str) -> int:
    _, key, ident, _ = ROWS[kind]
    with store.engine.begin() as conn:
        return move(conn, kind, str(ident), COLUMNS[kind].table.c[key] == ident, old, new)


def test_every_status_column_has_a_table_and_every_table_but_the_lock_and_rollout_a_status_column() -> None:
    assert set(COLUMNS) == set(ROWS)
    # a lock has no status column: its state is the row's presence and expiry; a rollout's
    # status lives in its stage's JSON, changed with the stage (guarded by the run's version)
    assert set(states.TABLES) - set(COLUMNS) == {"lock", "rollout"}
    assert issubclass(IllegalTransition, ShipyardError)


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_every_illegal_move_is_refused_and_writes_nothing(store: SqlStore, kind: str) -> None:
    table = states.TABLES[kind]
    refused = [(old, new) for old in table for new in states.ENUMS[kind] if new not in table[old]]
    assert refused
    for old, new in refused:
        _put(store, kind, old)
        with pytest.raises(IllegalTransition) as info:
            _move(store, kind, old, new)
        assert info.value.message.startswith(f"{kind} {ROWS[kind][2]}: {old} → {new} refused: ")
        assert _status(store, kind) == COLUMNS[kind].encode(old)


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_a_legal_move_is_made_only_from_the_status_read(store: SqlStore, kind: str) -> None:
    old, new = ROWS[kind][3]
    _put(store, kind, old)
    assert _move(store, kind, old, new) == 1
    assert _status(store, kind) == COLUMNS[kind].encode(new)
    assert _move(store, kind, old, new) == 0  # read before the first move: finds it moved


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_of_two_concurrent_moves_from_the_same_status_exactly_one_wins(store: SqlStore, kind: str) -> None:
    old, new = ROWS[kind][3]
    for _ in range(5):
        _put(store, kind, old)
        start = threading.Barrier(2)

        def race(start: threading.Barrier) -> int:
            start.wait()
            return _move(store, kind, old, new)

        with ThreadPoolExecutor(2) as pool:
            won = sorted(f.result() for f in [pool.submit(race, start), pool.submit(race, start)])
        assert won == [0, 1]
        assert _status(store, kind) == COLUMNS[kind].encode(new)
