"""Well-typed input the OpenAPI document allows in form but a database cannot hold: a time whose
offset carries it out of the years a datetime holds. Each is a 4xx problem naming what was
wrong, and nothing is changed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bot.webhooks import signing
from tests.api.conftest import Api, assert_problem

#: well-formed times with an offset that are out of range once in UTC, as they are stored
EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]


async def runs_of(api: Api, pipeline: str) -> list[dict[str, Any]]:
    reply = await api.get(f"/runs?pipeline={pipeline}")
    assert reply.status == 200, reply.text
    return reply.json["items"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("at", EDGE_TIMES)
async def test_a_revision_time_out_of_range_in_utc_is_422_and_starts_nothing(api: Api, at: str) -> None:
    body = {"parameters": {"ref": "abc1234"}, "revision_time": at}
    reply = await api.post("/pipelines/web/runs", "deployer", json=body)
    assert_problem(reply, 422, "revision_time", "out of range")
    assert await runs_of(api, "web") == []
    await api.wait((await api.trigger("web", parameters={"ref": "abc1234"}))["id"])  # (still serves)


async def test_a_generic_trigger_with_a_revision_time_out_of_range_is_422(api: Api) -> None:
    made = await api.post("/triggers", json={"pipeline": "web", "kind": "generic"})
    assert made.status == 201, made.text
    trigger = made.json
    raw = json.dumps({"parameters": {"ref": "abc1234"}, "revision_time": EDGE_TIMES[0]}).encode()
    headers = {
        **signing.headers(trigger["secret"], "msg_edge", int(time.time()), raw),
        "Content-Type": "application/json",
    }
    reply = await api.call("POST", f"/hooks/{trigger['id']}", None, data=raw, headers=headers)
    assert_problem(reply, 422, "revision_time", "out of range")
    assert await runs_of(api, "web") == []
