"""Environment health over REST: an environment's health with its checks' latest measurements,
and the history of its changes, from the analysis loop the server runs (command checks, real
processes, measured by the real ``measure``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.housekeeping import HOUSEKEEPING
from tests.api.conftest import Api, StartApi, assert_problem


async def until(
    get: Callable[[], Awaitable[Any]], holds: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen = await get()
        if holds(seen):
            return seen
        assert asyncio.get_running_loop().time() < deadline, f"timed out; last seen: {seen}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def watched(db_url: str, start_api: StartApi, tmp_path: Path) -> Api:
    (tmp_path / "smoke").write_text("0")
    smoke = {"command": ["sh", "-c", f"exit $(cat {tmp_path / 'smoke'})"], "interval": "1s", "timeout": "1s"}
    environments = {
        "staging": {},
        "disaster-recovery": {},  # declared, and no pipeline deploys there
        "production": {"checks": {"smoke": smoke}, "health": {"checks": ["smoke"], "failure_limit": 2}},
    }
    return await start_api(db_url, environments=environments)


async def test_an_environments_health_and_its_history(watched: Api, tmp_path: Path) -> None:
    async def health() -> dict[str, Any]:
        reply = await watched.get("/environments/production/health")
        assert reply.status == 200, reply.text
        return reply.json  # type: ignore[no-any-return]

    await until(health, lambda h: h["current"]["state"] == "healthy")
    (tmp_path / "smoke").write_text("1")
    seen = await until(health, lambda h: h["current"]["state"] == "unhealthy")
    assert seen["current"]["reason"] == "smoke: exit 1 (2 in a row)"
    assert [(c["from_state"], c["to_state"]) for c in seen["items"]] == [
        ("degraded", "unhealthy"),
        ("healthy", "degraded"),
        ("unknown", "healthy"),
    ]
    page = await watched.get("/environments/production/health?limit=2")
    assert [c["to_state"] for c in page.json["items"]] == ["unhealthy", "degraded"]
    rest = await watched.get(f"/environments/production/health?limit=2&cursor={page.json['next_cursor']}")
    assert [c["to_state"] for c in rest.json["items"]] == ["healthy"] and rest.json["next_cursor"] is None

    env = await watched.get("/environments/production")
    assert env.status == 200, env.text
    current = env.json["health"]
    assert current["state"] == "unhealthy" and current["since"] == seen["current"]["since"]
    (check,) = current["checks"]
    assert check["name"] == "smoke" and check["kind"] == "command"
    assert [m["result"] for m in check["last"][:2]] == ["failed", "failed"]
    assert check["last"][0]["detail"] == "exit 1" and check["last"][0]["at"] > check["last"][1]["at"]

    staging = await watched.get("/environments/staging")
    assert staging.json["health"] == {
        "state": "unknown",
        "since": None,
        "reason": "no health checks",
        "checks": [],
    }
    assert_problem(await watched.get("/environments/nowhere/health"), 404, "no environment 'nowhere'")
    declared = await watched.get("/environments/disaster-recovery/health")  # (declaring it is enough)
    assert declared.status == 200 and declared.json["current"]["state"] == "unknown", declared.text


async def test_the_hourly_housekeeping_drops_old_health_measurements_and_keeps_health(
    watched: Api,
) -> None:
    async def health() -> dict[str, Any]:
        return (await watched.get("/environments/production")).json["health"]  # type: ignore[no-any-return]

    await until(health, lambda h: h["state"] == "healthy" and len(h["checks"][0]["last"]) >= 2)
    keeping = watched.client.app[HOUSEKEEPING]
    assert (await keeping.sweep()).health_measurements == 0  # (all are fresh)

    later = datetime.now(UTC) + timedelta(days=15)  # past SHIPYARD_MEASUREMENT_KEEP_DAYS (14)
    swept = await keeping.sweep(later)
    assert swept.health_measurements >= 2
    after = await health()
    assert after["state"] == "healthy"  # the state and its history are not measurements
    assert all(
        datetime.fromisoformat(m["at"]) > later - timedelta(days=15) for m in after["checks"][0]["last"]
    )
