"""``storage.wakeups`` on a real PostgreSQL: the transaction that readies a job announces it when
it commits; a listener hears other processes' announcements (not its own), and one whose
connection is killed connects again and goes on hearing them."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from core.commands import TriggerRun
from core.runtime.service import Service
from storage.wakeups import Wakeups
from tests.e2e.server import wait_until
from tests.helpers import ALICE
from tests.pipelines import one_job

pytestmark = pytest.mark.postgres


def _listener(pg_url: str, ignore: str = "") -> tuple[Wakeups, queue.Queue[float]]:
    heard: queue.Queue[float] = queue.Queue()
    wakeups = Wakeups(pg_url, lambda: heard.put(time.monotonic()), ignore=ignore)
    wakeups.start()
    heard.get(timeout=10)  # (the wake-up every connection starts with)
    return wakeups, heard


def _trigger(svc: Service) -> float:
    began = time.monotonic()
    assert svc.handle(TriggerRun(pipeline="solo", actor=ALICE)).accepted
    return began


def test_a_job_made_ready_wakes_the_listeners_of_other_processes_not_its_own(
    pg_url: str, make_service: Callable[..., Service]
) -> None:
    svc = make_service(pg_url, one_job("solo"))
    other, heard = _listener(pg_url)
    own, own_heard = _listener(pg_url, ignore=svc.store.wakeup_id)
    try:
        began = _trigger(svc)
        woken = heard.get(timeout=2)
        print(f"notified {1000 * (woken - began):.1f} ms after the trigger began")
        time.sleep(0.5)
        assert own_heard.empty()  # its own process woke its runners itself
        assert heard.empty()  # one announcement per transaction
    finally:
        other.stop()
        own.stop()


def test_a_listener_whose_connection_is_killed_connects_again_and_hears_again(
    pg_url: str, make_service: Callable[..., Service]
) -> None:
    svc = make_service(pg_url, one_job("solo"))
    wakeups, heard = _listener(pg_url)
    try:
        first = wakeups.backend_pid
        with svc.store.engine.connect() as conn:
            killed = conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
        assert killed is True
        wait_until(lambda: wakeups.connections == 2, 10, what="the listener to connect again")
        assert wakeups.backend_pid not in (0, first)
        heard.get(timeout=2)  # (the wake-up after reconnecting: what was missed is looked for)
        _trigger(svc)
        heard.get(timeout=2)
    finally:
        wakeups.stop()
    assert wakeups.backend_pid == 0
