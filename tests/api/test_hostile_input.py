"""Well-typed input the OpenAPI document allows in form but a database cannot hold: a time whose
offset carries it out of the years a datetime holds, integers beyond the database's columns,
a header digit that is not ASCII, a NUL in a refused request's path, a cron expression that
never fires, a time zone name that is a directory of the zone database. Each is a 4xx problem
naming what was wrong, nothing is changed, and the refusal is on the record."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.webhooks import signing
from core.access import Role
from storage.directory import Directory
from tests.api.conftest import Api, StartApi, assert_problem

#: well-formed times with an offset that are out of range once in UTC, as they are stored
EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]
#: integers beyond a 32-bit column (PostgreSQL) and beyond a 64-bit one (SQLite)
TOO_BIG = [2**31, 2**63, -(2**63) - 1]
PROTOCOL = {"Shipyard-Runner-Protocol": "1"}


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


@pytest.mark.parametrize(
    ("cron", "timezone", "problem"),
    [
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 0 31 4 *", "UTC", "never fires"),
        ("0 2 * * *", "Europe", "unknown time zone 'Europe'"),
        ("0 2 * * *", "America", "unknown time zone 'America'"),
    ],
)
async def test_a_schedule_that_could_never_fire_is_422_and_not_added(
    lite: Api, cron: str, timezone: str, problem: str
) -> None:
    body = {"pipeline": "quick", "cron": cron, "timezone": timezone}
    assert_problem(await lite.post("/schedules", "deployer", json=body), 422, problem)
    assert (await lite.get("/schedules")).json["items"] == []


# -- the runner protocol -----------------------------------------------------------------------
async def held_job(db_url: str, start_api: StartApi) -> tuple[Api, dict[str, Any]]:
    """The API without a built-in runner, and the assignment of a ``quick`` job that runner
    ``eu-1`` (token ``runner``) claimed over HTTP."""
    api = await start_api(db_url, runner_capacity=0)
    api.tokens["runner"] = await api.db(
        lambda: Directory(api.store).create_token("eu-1", [Role.RUNNER], datetime.now(UTC), by="tests")
    )
    await api.trigger("quick")
    claim = {"runner": "eu-1", "limit": 1, "lease_s": 30.0, "wait_s": 5.0}
    reply = await api.post("/runner/claim", "runner", json=claim, headers=PROTOCOL)
    assert reply.status == 200, reply.text
    (assignment,) = reply.json["assignments"]
    return api, assignment


async def test_a_protocol_version_of_non_ascii_digits_is_409_naming_the_header(lite: Api) -> None:
    """Also one of more digits than ``int()`` converts (4300): refused, not a 500."""
    lite.tokens["runner"] = await lite.db(
        lambda: Directory(lite.store).create_token("eu-1", [Role.RUNNER], datetime.now(UTC), by="tests")
    )
    claim = {"runner": "eu-1", "limit": 1, "lease_s": 30.0}
    for version in ("²", "\uff11", "1" * 5000):  # (isdigit says yes to all; int() to none or to 1)
        reply = await lite.post(
            "/runner/claim", "runner", json=claim, headers={"Shipyard-Runner-Protocol": version}
        )
        assert_problem(reply, 409, "Shipyard-Runner-Protocol")


@pytest.mark.parametrize("number", TOO_BIG)
async def test_attempt_numbers_and_exit_codes_beyond_the_database_are_422(
    db_url: str, start_api: StartApi, number: int
) -> None:
    """A runner's log, lease renewal and report naming an attempt, or an exit code, no column
    holds: refused naming the field, and the job is still held and its report still taken."""
    api, a = await held_job(db_url, start_api)
    job = {"runner": "eu-1", "job_id": a["job_id"]}
    log = {**job, "attempt": number, "chunks": [{"stream": "stdout", "text": "x"}]}
    renew = {"runner": "eu-1", "held": [{"job_id": a["job_id"], "attempt": number}]}
    report = {**job, "kind": "complete", "run_id": a["run_id"], "attempt": a["attempt"], "exit_code": 0}
    requests = [
        ("/runner/log", log, "attempt"),
        ("/runner/renew", renew, "attempt"),
        ("/runner/still-held", renew, "attempt"),
        ("/runner/report", {**report, "attempt": number}, "attempt"),
        ("/runner/report", {**report, "outcome": "failed", "exit_code": number}, "exit_code"),
        ("/runner/report", {**report, "kind": "late", "exit_code": number}, "exit_code"),
    ]
    for path, body, field in requests:
        assert_problem(await api.post(path, "runner", json=body, headers=PROTOCOL), 422, field)
    reply = await api.post("/runner/report", "runner", json=report, headers=PROTOCOL)
    assert reply.status == 200 and reply.json["accepted"], reply.text
    assert (await api.wait(a["run_id"]))["status"] == "succeeded"


# -- the audit log -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("DELETE", "/environments/st%00ag/lock", "unlock_environment"),
        ("POST", "/runs/%00/cancel", "cancel_run"),
        ("POST", "/nowhere%00", "no_such_endpoint"),
    ],
)
async def test_a_request_refused_for_a_nul_in_its_path_is_still_audited(
    api: Api, method: str, path: str, action: str
) -> None:
    """PostgreSQL stores no NUL in text: the entry records the path with U+FFFD in its place
    instead of being lost."""
    reply = await api.call(method, path, "deployer", json={})
    assert 400 <= reply.status < 500
    assert_problem(reply, reply.status)
    entries = (await api.get("/audit", "admin")).json["items"]
    assert [(e["action"], e["outcome"]) for e in entries] == [(action, "rejected")]
    assert "\ufffd" in entries[0]["target"] and "\x00" not in json.dumps(entries[0])


async def test_a_bearer_token_that_is_not_utf8_is_refused_like_any_unknown_one(api: Api) -> None:
    """A client sending stray bytes in its token is told the token is unknown, not a 500 (the
    audit of a refused write names no caller for it either)."""
    assert api.client.port is not None
    for method, path, body in [
        (b"GET", b"/api/v1/runs", b""),
        (b"POST", b"/api/v1/pipelines/quick/runs", b"{}"),
    ]:
        reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
        try:
            writer.write(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
            writer.write(b"Authorization: Bearer shy_\xff\xfe\r\nContent-Type: application/json\r\n")
            writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = await reader.read()
        finally:
            writer.close()
        head, _, text = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), answer
        assert b"unknown or revoked token" in text, answer


@pytest.mark.parametrize(
    ("value", "named"),
    [("1" * 5000, "an integer of more than 4300 digits"), ("2026-02-30", "day is out of range for month")],
)
async def test_a_pipeline_whose_yaml_holds_a_value_python_cannot_make_is_422(
    lite: Api, value: str, named: str
) -> None:
    """YAML reads an integer of any length and a date of any day: one Python cannot make is a
    mistake in the definition, told with its line, not a 500."""
    text = f"name: odd\ndescription: x\nstages:\n  - name: build\n    jobs: [{{name: c, run: {value}}}]\n"
    for method, path in (("POST", "/pipelines"), ("PUT", "/pipelines/odd")):
        reply = await lite.call(
            method, path, "admin", data=text, headers={"Content-Type": "application/yaml"}
        )
        body = assert_problem(reply, 422, "body:5: not valid YAML", named)
        assert body["errors"] == [{"problem": body["detail"].removeprefix("invalid pipeline definition: ")}]
    assert (await lite.get("/pipelines/odd")).status == 404
