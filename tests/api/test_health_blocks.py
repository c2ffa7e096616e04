"""An unhealthy environment that declares ``block_when_unhealthy``: a blocker of kind ``health``
in ``GET /environments/{env}/blockers``, deployments wait for it, a rollback goes on (it may fix
it). Health is measured for real by the server's own loop (a command check reading a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.api.conftest import Api, StartApi
from tests.api.test_deploys import SHOP, _release
from tests.api.test_health import until


async def _unhealthy_shop(start_api: StartApi, db_url: str, tmp_path: Path, block: bool) -> Api:
    (tmp_path / "smoke").write_text("0")
    smoke = {"command": ["sh", "-c", f"exit $(cat {tmp_path / 'smoke'})"], "interval": "1s", "timeout": "1s"}
    environments = {
        "staging": {},
        "production": {
            "checks": {"smoke": smoke},
            "health": {"checks": ["smoke"], "failure_limit": 1},
            "block_when_unhealthy": block,
        },
    }
    shop = SHOP.replace("{ledger}", str(tmp_path / "ledger"))
    return await start_api(db_url, {"shop": shop}, environments=environments)


async def _health(api: Api) -> dict[str, Any]:
    reply = await api.get("/environments/production")
    assert reply.status == 200, reply.text
    return reply.json["health"]  # type: ignore[no-any-return]


async def test_an_unhealthy_environment_holds_deployments_back_but_not_a_rollback(
    db_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await _unhealthy_shop(start_api, db_url, tmp_path, block=True)
    await until(lambda: _health(api), lambda h: h["state"] == "healthy")
    await _release(api, "1.0.0")
    await _release(api, "2.0.0")
    assert (await api.get("/environments/production/blockers")).json["clear"] is True

    (tmp_path / "smoke").write_text("1")
    sick = await until(lambda: _health(api), lambda h: h["state"] == "unhealthy")
    why = (await api.get("/environments/production/blockers")).json
    assert [b["kind"] for b in why["blockers"]] == ["health"]
    since = sick["since"][11:16]  # HH:MM of the ISO time, UTC
    assert why["blockers"][0]["what"] == f"production is unhealthy since {since}: smoke: exit 1 (1 in a row)"
    assert "rollback" in why["blockers"][0]["clears"]

    held = await api.trigger("shop", parameters={"version": "4.0.0"})
    waiting = await api.wait(held["id"], lambda r: r["status"] in ("queued", "failed", "succeeded"))
    assert waiting["status"] == "queued"
    assert (
        waiting["reason"]
        == f"waiting for production: production is unhealthy since {since}: smoke: exit 1 (1 in a row)"
    )
    assert (tmp_path / "ledger.production").read_text().split() == ["1.0.0", "2.0.0"]

    # a rollback goes on, ahead of the deployment held back
    started = await api.post("/environments/production/rollback", "deployer", json={})
    assert started.status == 202, started.text
    rolled = await api.wait(started.json["id"])
    assert rolled["status"] == "succeeded" and rolled["kind"] == "rollback", rolled["reason"]
    assert (tmp_path / "ledger.production").read_text().split() == ["1.0.0", "2.0.0", "1.0.0"]

    # healthy again: what holds 4.0.0 back now is the rollback's lock, not the health
    (tmp_path / "smoke").write_text("0")
    await until(lambda: _health(api), lambda h: h["state"] == "healthy")
    why = (await api.get("/environments/production/blockers")).json
    assert [b["kind"] for b in why["blockers"]] == ["lock", "queue"]
    moved = await api.wait(held["id"], lambda r: "rolled back" in r["reason"])
    assert moved["status"] == "queued"


async def test_unhealthy_holds_nothing_back_unless_the_environment_says_so(
    sqlite_url: str, start_api: StartApi, tmp_path: Path
) -> None:
    api = await _unhealthy_shop(start_api, sqlite_url, tmp_path, block=False)
    (tmp_path / "smoke").write_text("1")
    await until(lambda: _health(api), lambda h: h["state"] == "unhealthy")
    assert (await api.get("/environments/production/blockers")).json["clear"] is True
    await _release(api, "1.0.0")
