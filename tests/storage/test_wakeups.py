"""``storage.wakeups`` on a real PostgreSQL: the transaction that readies a job announces it when
it commits; a listener hears other processes' announcements (not its own), and one whose
connection is killed connects again and goes on hearing them."""

from __future__ import annotations

import logging
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
from tests.tcp_proxy import TcpProxy

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


def test_a_listener_that_loses_the_server_says_so_once_and_listens_again_when_it_is_back(
    pg_url: str, make_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL goes away (a proxy cut between them): one warning however many attempts fail
    (claims poll meanwhile), then, once it is back, a line saying so, a wake-up for what was
    missed, and announcements heard again."""
    svc = make_service(pg_url, one_job("solo"))
    url = sa.engine.make_url(pg_url)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        through = url.set(port=proxy.port).render_as_string(hide_password=False)
        with caplog.at_level(logging.INFO, logger="storage.wakeups"):
            wakeups, heard = _listener(through)
            try:
                proxy.cut()
                wait_until(lambda: wakeups.backend_pid == 0, 10, what="the listener to notice")
                time.sleep(1.0)  # several reconnection attempts (0.1 s, 0.2 s, 0.4 s apart)
                assert heard.empty() and wakeups.connections == 1
                proxy.start()
                wait_until(lambda: wakeups.connections == 2, 10, what="the listener to connect again")
                heard.get(timeout=2)  # (what was missed is looked for)
                _trigger(svc)
                heard.get(timeout=2)
            finally:
                wakeups.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "storage.wakeups"]
    assert len(said) == 2, said
    assert said[0].startswith("lost the PostgreSQL connection that hears of ready jobs (")
    assert said[0].endswith("); reconnecting, claims poll meanwhile")
    assert said[1] == "listening for ready jobs again (PostgreSQL NOTIFY)"


def test_a_wake_up_that_fails_is_logged_and_the_listener_goes_on(
    pg_url: str, make_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    svc = make_service(pg_url, one_job("solo"))
    heard: queue.Queue[float] = queue.Queue()
    calls: list[int] = []

    def on_wake() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the claim poll is gone")
        heard.put(time.monotonic())

    wakeups = Wakeups(pg_url, on_wake)
    with caplog.at_level(logging.ERROR, logger="storage.wakeups"):
        wakeups.start()
        try:
            wait_until(lambda: len(calls) == 1, 10, what="the first wake-up")
            _trigger(svc)
            heard.get(timeout=2)
        finally:
            wakeups.stop()
    (failed,) = [r for r in caplog.records if r.name == "storage.wakeups"]
    assert failed.getMessage() == "waking for ready jobs failed"
    assert failed.exc_info is not None and str(failed.exc_info[1]) == "the claim poll is gone"
    assert wakeups.connections == 1  # the same connection throughout


def test_stopping_a_listener_that_never_started_does_nothing(pg_url: str) -> None:
    wakeups = Wakeups(pg_url, lambda: None)
    wakeups.stop()
    assert (wakeups.connections, wakeups.backend_pid) == (0, 0)
