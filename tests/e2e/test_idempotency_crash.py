"""A ``shipyard serve`` killed while it handles a request carrying an ``Idempotency-Key``: the
retry with that key gets, within the claim's lease, either the first answer (the work had
committed) or a fresh execution (it had not), never five minutes of "still being processed";
and the key's work is done exactly once."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.api.gateway import CRASH_AFTER_KEYED_COMMAND, CRASH_EXIT_CODE, HOLD_KEYED_COMMAND
from core.commands import TriggerRun
from core.runtime.service import Service
from core.states import GateStatus
from storage.idempotency import ABANDONED_AFTER
from tests.e2e.server import Server, wait_until
from tests.helpers import ALICE

pytestmark = pytest.mark.slow

TOKEN = "e2e-admin-token-0123456789"
#: the claim's lease in these servers: a dead holder's claim frees the key this long after
LEASE_S = 2
#: how long a retry may keep hearing 409 before the test fails: many leases on a loaded
#: machine, far below the five minutes a key used to stay claimed
RETRY_WITHIN_S = 60
assert RETRY_WITHIN_S < ABANDONED_AFTER.total_seconds() / 2

QUICK = """
name: quick
stages:
  - name: build
    jobs: [{name: compile, run: "true"}]
"""
PARKED = """
name: parked
stages:
  - name: production
    gate: {approvers: [admin], timeout: 1h}
    jobs: [{name: deploy, run: "true"}]
"""

Reply = tuple[int, dict[str, str], Any]


@pytest.fixture
def servers(tmp_path: Path, db_url: str) -> Iterator[Callable[[], Server]]:
    made: list[Server] = []

    def make() -> Server:
        s = Server(tmp_path, db_url)
        s.pipeline("quick", QUICK)
        s.pipeline("parked", PARKED)
        s.env["SHIPYARD_ADMIN_TOKEN"] = TOKEN
        s.env["SHIPYARD_IDEMPOTENCY_LEASE_SECONDS"] = str(LEASE_S)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def post(server: Server, path: str, key: str, body: dict[str, Any], timeout: float = 10) -> Reply:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/v1{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")
    except OSError:
        return 0, {}, None


def retry_until_answered(server: Server, path: str, key: str, body: dict[str, Any]) -> Reply:
    """Retry as a client would, once a second, while the key is "still being processed"."""
    replies: list[Reply] = []

    def answered() -> Reply | None:
        reply = post(server, path, key, body)
        replies.append(reply)
        return None if reply[0] == 409 and "still being processed" in str(reply[2]) else reply

    try:
        return wait_until(answered, timeout=RETRY_WITHIN_S, interval=1.0, what="an answer to the retry")  # type: ignore[no-any-return]
    except TimeoutError:
        pytest.fail(f"{len(replies)} retries over {RETRY_WITHIN_S}s; the last: {replies[-1]}")


def claims(db_url: str) -> list[tuple[str, str]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT key, state FROM idempotency WHERE caller = 'admin'"))
            return [(r[0], r[1]) for r in rows]
    finally:
        engine.dispose()


def kill_in_flight(server: Server, db_url: str, send: Callable[[], Reply]) -> None:
    """Send a request the server holds (``HOLD_KEYED_COMMAND``), SIGKILL the server once the
    request has claimed its key, and check the client got no answer."""
    with ThreadPoolExecutor(1) as pool:
        pending: Future[Reply] = pool.submit(send)
        wait_until(lambda: ("k1", "processing") in claims(db_url), what="the request to claim its key")
        server.signal(signal.SIGKILL)
        assert server.wait() == -signal.SIGKILL
        assert pending.result(timeout=30)[0] == 0  # the connection died: the client never heard


def gate_status(svc: Service, run_id: str) -> GateStatus:
    state = svc.find_run(run_id)
    assert state is not None
    return state.gates[0].status


def quick_runs(svc: Service) -> list[str]:
    return [s.run.id for s in svc.store.list_runs("quick", 100)]


def test_a_keyed_trigger_killed_in_flight_runs_once_when_retried_after_a_restart(
    servers: Callable[[], Server], db_url: str, make_service: Callable[..., Service]
) -> None:
    first = servers()
    first.env[HOLD_KEYED_COMMAND] = "600"
    first.start()
    svc = make_service(db_url)
    path, body = "/pipelines/quick/runs", {"revision": "abc"}

    kill_in_flight(first, db_url, lambda: post(first, path, "k1", body, timeout=120))
    assert quick_runs(svc) == []  # it was held before the engine saw it
    second = servers()
    second.start()

    status, headers, run = retry_until_answered(second, path, "k1", body)
    assert status == 202 and "Idempotent-Replayed" not in headers  # a fresh execution
    assert quick_runs(svc) == [run["id"]]
    status, headers, again = post(second, path, "k1", body)
    assert (status, headers.get("Idempotent-Replayed"), again["id"]) == (202, "true", run["id"])
    assert quick_runs(svc) == [run["id"]]


def test_a_keyed_trigger_that_committed_before_the_crash_is_answered_on_retry(
    servers: Callable[[], Server], db_url: str, make_service: Callable[..., Service]
) -> None:
    first = servers()
    first.env[CRASH_AFTER_KEYED_COMMAND] = "1"
    first.start()
    svc = make_service(db_url)
    path, body = "/pipelines/quick/runs", {"revision": "abc"}

    assert post(first, path, "k1", body)[0] == 0  # the server died before it answered
    assert first.wait() == CRASH_EXIT_CODE
    (committed,) = quick_runs(svc)
    second = servers()
    second.start()

    started = time.monotonic()
    status, headers, run = post(second, path, "k1", body)
    assert (status, headers.get("Idempotent-Replayed")) == (202, "true"), run  # no lease to wait for
    assert time.monotonic() - started < RETRY_WITHIN_S
    assert run["id"] == committed and headers["Location"] == f"/api/v1/runs/{committed}"
    assert quick_runs(svc) == [committed]


@pytest.mark.parametrize("crash", ["in flight", "after the commit"])
def test_a_keyed_gate_approval_cut_by_a_crash_is_approved_once_on_retry(
    servers: Callable[[], Server], db_url: str, make_service: Callable[..., Service], crash: str
) -> None:
    first = servers()
    first.env.update(
        {HOLD_KEYED_COMMAND: "600"} if crash == "in flight" else {CRASH_AFTER_KEYED_COMMAND: "1"}
    )
    first.start()  # (the admin, who approves, is made before the gate opens)
    svc = make_service(db_url)
    parked = svc.handle(TriggerRun(pipeline="parked", actor=ALICE)).state
    assert parked is not None and parked.gates[0].status is GateStatus.OPEN
    path, body = f"/runs/{parked.run.id}/gates/production/approve", {"comment": "ship it"}

    if crash == "in flight":
        kill_in_flight(first, db_url, lambda: post(first, path, "k1", body, timeout=120))
        assert gate_status(svc, parked.run.id) is GateStatus.OPEN
    else:
        assert post(first, path, "k1", body)[0] == 0
        assert first.wait() == CRASH_EXIT_CODE
        assert gate_status(svc, parked.run.id) is GateStatus.APPROVED
    second = servers()
    second.start()

    status, headers, run = retry_until_answered(second, path, "k1", body)
    assert status == 200, run
    assert headers.get("Idempotent-Replayed") == ("true" if crash == "after the commit" else None)
    (gate,) = [s["gate"] for s in run["stages"] if s["name"] == "production"]
    assert (gate["status"], gate["decided_by"]) == ("approved", "admin")
    events = svc.store.events_after(0, 1000, parked.run.id)
    assert [e.data["by"] for e in events if e.name == "gate.approval_added"] == ["admin"]


def test_a_keyed_trigger_working_longer_than_its_lease_keeps_its_key(
    servers: Callable[[], Server], db_url: str, make_service: Callable[..., Service]
) -> None:
    server = servers()
    server.env[HOLD_KEYED_COMMAND] = str(LEASE_S * 3)  # the live process renews its claim meanwhile
    server.start()
    svc = make_service(db_url)
    path, body = "/pipelines/quick/runs", {"revision": "abc"}

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, server, path, "k1", body, 120)
        wait_until(lambda: ("k1", "processing") in claims(db_url), what="the request to claim its key")
        time.sleep(LEASE_S * 2)  # past the lease it started with
        assert not first.done()
        status, _, problem = post(server, path, "k1", body)
        assert status == 409 and "still being processed" in problem["detail"], problem
        status, headers, run = first.result(timeout=60)
    assert status == 202 and "Idempotent-Replayed" not in headers
    assert quick_runs(svc) == [run["id"]]


def test_a_keyed_trigger_killed_in_flight_is_run_by_another_replica_on_retry(
    servers: Callable[[], Server], db_url: str, make_service: Callable[..., Service]
) -> None:
    dying, other = servers(), servers()
    dying.env[HOLD_KEYED_COMMAND] = "600"
    dying.start()
    other.start()
    svc = make_service(db_url)
    path, body = "/pipelines/quick/runs", {"revision": "abc"}

    kill_in_flight(dying, db_url, lambda: post(dying, path, "k1", body, timeout=120))
    status, headers, run = retry_until_answered(other, path, "k1", body)
    assert status == 202 and "Idempotent-Replayed" not in headers
    assert quick_runs(svc) == [run["id"]]
