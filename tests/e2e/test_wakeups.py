"""Ready jobs announced between replicas with PostgreSQL ``NOTIFY`` (``storage.wakeups``): two real
``shipyard serve`` replicas on one database, polling only every 5 s; a run triggered on one is
claimed at once by a ``shipyard runner`` long-polling the other, and still is after the other's
listening connection was killed."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from storage.store import SqlStore
from storage.wakeups import APPLICATION
from tests.e2e.server import Server, wait_until
from tests.e2e.test_remote_runner import ADMIN, RemoteRunner, _done, _tokens, _trigger

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

#: how often the replicas look at the database by themselves: a claim found by polling would
#: wait up to this long
POLL_S = 5.0
#: what a wake-up must beat, well under ``POLL_S``
WITHIN_S = 1.0


def _claim_latency(store: SqlStore, run_id: str) -> float:
    """Seconds from the job becoming ready to its claim, as the event log has them."""
    events = store.events_after(0, 100, run_id)
    queued = next(e.at for e in events if e.subject == "job" and e.to_status == "queued")
    running = next(e.at for e in events if e.subject == "job" and e.to_status == "running")
    return (running - queued).total_seconds()


def _replicas(tmp_path: Path, pg_url: str, started: list[Any]) -> tuple[Server, Server]:
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        server = Server(
            tmp_path / name, pg_url, capacity=0, admin_token=ADMIN, poll_interval=POLL_S, lease_seconds=30
        )
        server.pipeline(
            "quick", "name: quick\nstages:\n  - name: only\n    jobs: [{name: work, run: 'true'}]\n"
        )
        started.append(server)
        servers.append(server)
    for server in servers:
        server.start()
    return servers[0], servers[1]


def _latencies(a: Server, store: SqlStore, runs: int) -> list[float]:
    found = []
    for _ in range(runs):
        time.sleep(random.uniform(0.3, 0.8))  # (at any point of the other replica's poll)
        run_id = _trigger(a, "quick")
        assert _done(a, run_id, timeout=30)["status"] == "succeeded"
        found.append(_claim_latency(store, run_id))
    return found


def test_a_run_triggered_on_one_replica_is_claimed_at_once_by_a_runner_on_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    started: list[Any] = []
    store = SqlStore(pg_url)
    try:
        a, b = _replicas(tmp_path, pg_url, started)
        runner = RemoteRunner(tmp_path, b, "eu-1", _tokens(pg_url, "eu-1")["eu-1"])
        started.append(runner.start())
        time.sleep(0.5)  # (its first claim is waiting on b now)

        before = _latencies(a, store, 4)
        print(f"claim latency across replicas: {', '.join(f'{s * 1000:.0f} ms' for s in before)}")
        assert max(before) < WITHIN_S, before  # polling alone: up to 5 s each

        # b's listening connection is killed: it reconnects and wakes its claims again
        assert b.proc is not None
        with store.engine.connect() as conn:
            killed = (
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :app"
                    ),
                    {"app": f"{APPLICATION}:{b.proc.pid}"},
                )
                .scalars()
                .all()
            )
        assert killed == [True]  # (the kill happened: b had exactly one listener, and it is gone)

        def listening_again() -> bool:
            with store.engine.connect() as conn:
                found = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app"),
                    {"app": f"{APPLICATION}:{b.proc.pid if b.proc else 0}"},
                ).scalar()
            return found == 1

        wait_until(listening_again, 10, what="b to listen again")
        after = _latencies(a, store, 3)
        print(f"after the listener was killed: {', '.join(f'{s * 1000:.0f} ms' for s in after)}")
        assert max(after) < WITHIN_S, after
        assert "reconnecting" in b.log.read_text()
    finally:
        for thing in reversed(started):
            thing.stop()
        store.dispose()
