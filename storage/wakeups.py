"""Wake-up hints between replicas on PostgreSQL: ``LISTEN``/``NOTIFY``, as procrastinate does.

The transaction that makes a job ready (``queued``) also sends ``NOTIFY shipyard_jobs``
(``SqlTx.flush_events``), so PostgreSQL delivers it when, and only if, that transaction
commits. Every replica listens on a connection of its own, in a thread, and wakes its claim
long polls and its built-in runner at once instead of at their next poll.

A notification is only a hint: the database stays the truth. A lost one (the listener was
reconnecting) costs a poll interval, never a job; so after every (re)connection the listener
wakes its replica once, which then looks for what it may have missed. SQLite has one process
and needs none of this.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import psycopg
import sqlalchemy as sa

log = logging.getLogger(__name__)

#: the channel ready jobs are announced on
CHANNEL = "shipyard_jobs"
#: how the listening connection shows in ``pg_stat_activity`` (with this process's id)
APPLICATION = "shipyard-wakeups"
#: how long the thread waits for a notification before it checks whether it should stop
STOP_CHECK_S = 0.25
#: a listener that heard nothing for this long asks the server something, so that a dead
#: connection is found (and replaced) rather than waited on forever
IDLE_PING_S = 10.0
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


def conninfo(url: str) -> str:
    """The libpq connection string of a SQLAlchemy PostgreSQL URL."""
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Wakeups:
    """Listens on ``CHANNEL`` in a thread and calls ``on_wake`` (from that thread) for every
    notification another process sent, and once after every (re)connection. Notifications whose
    payload is ``ignore`` (this process's own, already acted on in process) are skipped."""

    def __init__(self, url: str, on_wake: Callable[[], None], *, ignore: str = "") -> None:
        self.conninfo = conninfo(url)
        self.on_wake = on_wake
        self.ignore = ignore
        self.application = f"{APPLICATION}:{os.getpid()}"
        #: how many times the listener has connected (a reconnection adds one)
        self.connections = 0
        #: the listening connection's server process (``pg_backend_pid``), 0 when not connected
        self.backend_pid = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shipyard-wakeups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        delay = BACKOFF_FIRST_S
        failing = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.conninfo, autocommit=True, application_name=self.application, connect_timeout=5
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    self.connections += 1
                    if failing:
                        log.info("listening for ready jobs again (PostgreSQL NOTIFY)")
                    failing, delay = False, BACKOFF_FIRST_S
                    self._wake()  # (whatever was announced while we were away)
                    self._listen(conn)
            except psycopg.Error as exc:
                self.backend_pid = 0
                if self._stop.is_set():
                    return
                if not failing:
                    log.warning(
                        "lost the PostgreSQL connection that hears of ready jobs (%s); reconnecting, "
                        "claims poll meanwhile",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    )
                failing = True
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        self.backend_pid = 0

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        quiet_since = time.monotonic()
        while not self._stop.is_set():
            heard = False
            for notice in conn.notifies(timeout=STOP_CHECK_S):
                heard = True
                if notice.payload != self.ignore or not self.ignore:
                    self._wake()
            if heard:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= IDLE_PING_S:
                conn.execute("SELECT 1")  # (raises on a dead connection)
                quiet_since = time.monotonic()

    def _wake(self) -> None:
        try:
            self.on_wake()
        except Exception:  # (a wake-up must never stop the listener)
            log.exception("waking for ready jobs failed")
