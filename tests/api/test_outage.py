"""The database goes away while the API serves (SQLite and PostgreSQL, ``tests.outage``): every
request that needs it is answered ``503`` with ``Retry-After``, never ``500``; the outage is
logged once when it starts and once when it ends; once it is back, everything works again."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from storage import db
from tests.api.conftest import Api, StartApi, assert_problem
from tests.outage import Outage

UNREACHABLE = "The database is unreachable; try again shortly."


def _health(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "core.runtime.health" and text in r.getMessage()]


async def _until_answered(api: Api, timeout: float = 30.0) -> dict[str, object]:
    """Trigger until the API takes it again (the first request after the outage finds it over)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        reply = await api.post("/pipelines/quick/runs", "deployer")
        if reply.status == 202:
            return reply.json  # type: ignore[no-any-return]
        assert reply.status == 503, reply.text
        assert asyncio.get_running_loop().time() < deadline, "the API never recovered"
        await asyncio.sleep(0.1)


async def test_requests_during_a_database_outage_get_503_with_retry_after(
    start_api: StartApi, outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await start_api(outage.url)
    before = await api.trigger("quick")
    await api.wait(before["id"])

    outage.begin(api.store)
    answers = [
        await api.post("/pipelines/quick/runs", "deployer"),  # a trigger: through the group commit
        await api.post("/pipelines/web/runs", "deployer2", json={"parameters": {"ref": "abc1234"}}),
        await api.get("/runs"),  # a read
        await api.post(  # a trigger whose Idempotency-Key cannot even be claimed
            "/pipelines/quick/runs", "deployer", headers={"Idempotency-Key": "during-the-outage"}
        ),
        await api.post(f"/runs/{before['id']}/cancel", "admin"),  # a command on an existing run
    ]
    for reply in answers:
        body = assert_problem(reply, 503, UNREACHABLE)
        assert body["title"] == "Service unavailable"
        assert int(reply.headers["Retry-After"]) > 0
    ready = await api.get("/readyz", None)
    assert ready.status == 503 and int(ready.headers["Retry-After"]) > 0
    assert "database unreachable for" in ready.json["reason"]
    assert outage.proxy is not None or outage.refused > 0  # the fault happened

    started = _health(caplog, "database unreachable:")
    assert len(started) == 1 and started[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"

    outage.end()
    after = await _until_answered(api)
    assert (await api.wait(after["id"]))["status"] == "succeeded"
    assert (await api.get("/readyz", None)).status == 200
    (ended,) = _health(caplog, "database reachable again after")
    assert ended.levelno == logging.WARNING
    assert len(_health(caplog, "database unreachable:")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "a traceback"
    # the key was never claimed: it works as new once the database is back
    key = {"Idempotency-Key": "during-the-outage"}
    keyed = await api.post("/pipelines/quick/runs", "deployer", headers=key)
    assert keyed.status == 202, keyed.text


async def test_a_sqlite_database_held_by_another_process_past_the_busy_timeout_answers_503(
    start_api: StartApi, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 300, raising=True)  # (30 s in service)
    caplog.set_level(logging.DEBUG)
    api = await start_api(sqlite_url)
    before = await api.trigger("quick")
    await api.wait(before["id"])

    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # e.g. `sqlite3 shipyard.db` left in a transaction
    try:
        refused = await api.post("/pipelines/quick/runs", "deployer")
        assert_problem(refused, 503, UNREACHABLE)
        assert int(refused.headers["Retry-After"]) > 0
        assert (await api.get(f"/runs/{before['id']}")).status == 200  # readers are not held up
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(_health(caplog, "database unreachable: database is locked")) == 1
    after = await _until_answered(api)
    assert (await api.wait(after["id"]))["status"] == "succeeded"
    assert len(_health(caplog, "database reachable again after")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"
