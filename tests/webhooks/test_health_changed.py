"""``environment.health_changed`` over webhooks: an environment's health measured for real by
the server's loop (a command check reading a file) reaches a signed receiver, in order, with
what changed; subscriptions narrowed to another environment or to a pipeline hear nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.api.test_health import until
from tests.webhooks.conftest import Receiver, StartHooks, drain, subscribe

HEALTH = "environment.health_changed"


async def test_health_changes_are_delivered_with_what_changed(
    db_url: str,
    start_hooks: StartHooks,
    receivers: Callable[[], Awaitable[Receiver]],
    tmp_path: Path,
) -> None:
    (tmp_path / "smoke").write_text("0")
    smoke = {"command": ["sh", "-c", f"exit $(cat {tmp_path / 'smoke'})"], "interval": "1s", "timeout": "1s"}
    environments = {
        "staging": {},
        "production": {"checks": {"smoke": smoke}, "health": {"checks": ["smoke"], "failure_limit": 1}},
    }
    api = await start_hooks(db_url, environments=environments)
    everyone, production, staging, web = [await receivers() for _ in range(4)]

    async def changes() -> list[Any]:
        found = await api.get("/environments/production/health")
        return found.json["items"]  # type: ignore[no-any-return]

    await until(changes, lambda c: [x["to_state"] for x in c] == ["healthy"])
    # (subscriptions hear what happens from when they are made)
    await subscribe(api, everyone, [HEALTH])
    await subscribe(api, production, [HEALTH, "run.finished"], environment="production")
    await subscribe(api, staging, [HEALTH], environment="staging")
    await subscribe(api, web, [HEALTH], pipeline="web")
    (tmp_path / "smoke").write_text("1")
    await until(changes, lambda c: c[0]["to_state"] == "unhealthy")
    (tmp_path / "smoke").write_text("0")
    await until(changes, lambda c: c[0]["to_state"] == "healthy")
    await drain(api)
    for receiver in (everyone, production):
        got = [r.payload for r in await receiver.wait_for(2)]
        assert [r.type for r in receiver.delivered] == [HEALTH, HEALTH]
        first, second = (p["data"] for p in got)
        assert (first["environment"], first["from"], first["to"]) == ("production", "healthy", "unhealthy")
        assert first["reason"] == "smoke: exit 1 (1 in a row)"
        assert (second["from"], second["to"], second["reason"]) == (
            "unhealthy",
            "healthy",
            "the check passes",
        )
        assert first["at"] == got[0]["timestamp"] and first["at"] < second["at"]
    assert staging.received == [] and web.received == []
    assert everyone.delivered[1].msg_id == production.delivered[1].msg_id  # one message, two subscribers
