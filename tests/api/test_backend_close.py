"""Shutting down waits for the reads in flight (a few seconds at most), on SQLite and PostgreSQL:
the store is disposed right after, and a read still holding one of its pooled connections then
left that connection to the garbage collector (psycopg's "connection deleted while still open",
which surfaced in whatever test ran next)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.backend import Backend
from bot.bootstrap import Shipyard
from storage.store import SqlStore
from tests.factory import make_shipyard


@asynccontextmanager
async def _running(url: str, tmp_path: Path) -> AsyncIterator[tuple[Shipyard, Backend]]:
    """The service (no runner) and a backend bound to it; the service stops on the way out."""
    shipyard = make_shipyard(url, tmp_path, with_runner=False, runner_capacity=0)
    await shipyard.start()
    backend = Backend()
    backend.bind(shipyard)
    try:
        yield shipyard, backend
    finally:
        await shipyard.stop()


async def test_close_waits_for_a_read_in_flight_so_no_connection_outlives_the_store(
    db_url: str, tmp_path: Path
) -> None:
    inside, ended = threading.Event(), threading.Event()

    def slow_read(store: SqlStore) -> None:  # (a page of a long log, a board of many environments)
        with store.reading() as tx:
            tx.conn.exec_driver_sql("SELECT 1")
            inside.set()
            time.sleep(0.5)
        ended.set()

    async with _running(db_url, tmp_path) as (shipyard, backend):
        asking = asyncio.ensure_future(backend.read(slow_read, shipyard.store))
        assert await asyncio.to_thread(inside.wait, 5), "the read never started"
        asking.cancel()  # the request that asked went away, as at shutdown
        assert not ended.is_set()  # (the read holds its connection for 0.5 s more)

        await backend.close()

        assert ended.is_set()  # its connection went back to the pool before the store is disposed


async def test_close_does_not_wait_for_ever_on_a_read_that_hangs(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inside, release = threading.Event(), threading.Event()

    def hangs() -> None:
        inside.set()
        release.wait(10)

    async with _running(sqlite_url, tmp_path) as (_, backend):
        try:
            asking = asyncio.ensure_future(backend.read(hangs))
            assert await asyncio.to_thread(inside.wait, 5), "the read never started"
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="bot.backend"):
                await backend.close(wait_s=0.2)
            assert time.monotonic() - started < 2
            assert "still running" in caplog.text
        finally:
            release.set()
            await asyncio.gather(asking, return_exceptions=True)
