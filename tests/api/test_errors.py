"""Errors: every 4xx is an RFC 9457 problem document with its own clear status, and nothing a
client sends produces a 500."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from functools import partial
from urllib.parse import quote

import pytest

from core.access import Role
from storage.directory import Directory
from tests.api.conftest import MAX_BODY, Api, StartApi, assert_problem
from tests.pipelines import one_job

JSON = {"Content-Type": "application/json"}


def cursor(values: list[object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.fixture
async def pg(pg_url: str, start_api: StartApi) -> Api:
    """The API on PostgreSQL only (for what only PostgreSQL refuses)."""
    return await start_api(pg_url)


async def test_malformed_json_is_400(lite: Api) -> None:
    for raw in ('{"parameters": ', "{'single': 1}", "not json", b"\xff\xfe{}"):
        reply = await lite.post("/pipelines/quick/runs", "deployer", data=raw, headers=JSON)
        assert_problem(reply, 400, "not valid JSON")


async def test_nan_and_infinity_are_not_json_and_are_400(lite: Api) -> None:
    for constant in ("NaN", "Infinity", "-Infinity"):
        body = '{"parameters": {"n": ' + constant + "}}"
        reply = await lite.post("/pipelines/quick/runs", "deployer", data=body, headers=JSON)
        assert_problem(reply, 400, "not valid JSON", constant)
    assert (await lite.get("/runs")).json["items"] == []


async def test_a_number_parameter_must_be_finite(lite: Api) -> None:
    numbered = one_job("numbered", head="parameters: [{name: n, type: number}]")
    created = await lite.post(
        "/pipelines", "admin", data=numbered, headers={"Content-Type": "application/yaml"}
    )
    assert created.status == 201, created.text
    for value in ("1" * 4000, "-" + "9" * 400, "1e400", '"nan"', '"inf"', '"-Infinity"', '"1e999"'):
        body = '{"parameters": {"n": ' + value + "}}"
        reply = await lite.post("/pipelines/numbered/runs", "deployer", data=body, headers=JSON)
        assert_problem(reply, 422, "n must be a finite number")
    assert (await lite.get("/runs")).json["items"] == []
    for value, text in (("12.5", "12.5"), ('"-3"', "-3"), ("1e300", str(int(1e300)))):
        run = await lite.trigger("numbered", parameters={"n": json.loads(value)})
        assert run["parameters"]["n"] == text


async def test_wrong_types_and_unknown_fields_are_422_naming_the_field(lite: Api) -> None:
    cases = [
        ({"parameters": "ref=abc"}, "parameters"),
        ({"pipeline_version": "latest"}, "pipeline_version"),
        ({"pipeline_version": 0}, "pipeline_version"),
        ({"revision": 42}, "revision"),
        ({"parameters": {"ref": ["a", "b"]}}, "parameters.ref"),
        ({"paramters": {}}, "paramters"),
        ([], "body"),
        (None, "body"),
    ]
    for body, field in cases:
        reply = await lite.post("/pipelines/web/runs", "deployer", data=json.dumps(body), headers=JSON)
        problem = assert_problem(reply, 422, field)
        assert problem["errors"], problem
    unknown = await lite.post("/runs/web%231/cancel", "deployer", json={"reason": "x", "force": True})
    assert_problem(unknown, 422, "force")
    comment = await lite.post("/runs/web%231/gates/x/approve", "approver", json={"comment": 5})
    assert_problem(comment, 422, "comment")


async def test_a_missing_required_parameter_and_one_failing_its_pattern_are_422(lite: Api) -> None:
    missing = await lite.post("/pipelines/web/runs", "deployer", json={"parameters": {}})
    assert_problem(missing, 422, "ref", "required")
    bad = await lite.post("/pipelines/web/runs", "deployer", json={"parameters": {"ref": "main; rm -rf /"}})
    assert_problem(bad, 422, "ref", "does not match")
    boolean = await lite.post(
        "/pipelines/web/runs", "deployer", json={"parameters": {"ref": "abc1234", "dry_run": "perhaps"}}
    )
    assert_problem(boolean, 422, "dry_run")
    unknown = await lite.post(
        "/pipelines/web/runs", "deployer", json={"parameters": {"ref": "abc1234", "colour": "red"}}
    )
    assert_problem(unknown, 422, "colour")
    assert (await lite.get("/runs")).json["items"] == []


async def test_unknown_run_pipeline_gate_job_and_environment_are_404(api: Api) -> None:
    assert_problem(await api.get("/runs/no-such-run"), 404, "no-such-run")
    assert_problem(await api.get("/runs/web%2399"), 404, "web#99")
    assert_problem(await api.get("/runs/no-such-run/events"), 404)
    assert_problem(await api.get("/runs/no-such-run/jobs/a%2Fb/log"), 404)
    assert_problem(await api.get("/pipelines/no-such"), 404, "no-such")
    assert_problem(await api.get("/pipelines/no-such/versions"), 404, "no-such")
    assert_problem(await api.post("/pipelines/no-such/runs", "deployer"), 404, "no-such")
    assert_problem(await api.get("/environments/no-such"), 404, "no-such")
    assert_problem(await api.get("/environments/no-such/deployments"), 404, "no-such")
    run = await api.trigger("quick")
    assert_problem(await api.post(f"/runs/{run['id']}/gates/no-such/approve", "approver"), 404, "no-such")


async def test_an_oversized_body_is_413(lite: Api) -> None:
    big = json.dumps({"revision": "x" * (MAX_BODY + 100)})
    assert_problem(await lite.post("/pipelines/quick/runs", "deployer", data=big, headers=JSON), 413)
    definition = "name: huge\n# " + "x" * (MAX_BODY + 100) + "\nstages: []\n"
    headers = {"Content-Type": "application/yaml"}
    assert_problem(await lite.post("/pipelines", "admin", data=definition, headers=headers), 413)
    keyed = {**JSON, "Idempotency-Key": "big"}
    assert_problem(await lite.post("/pipelines/quick/runs", "deployer", data=big, headers=keyed), 413)
    assert (await lite.get("/runs")).json["items"] == []


async def test_a_wrong_content_type_is_415(lite: Api) -> None:
    for media in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        reply = await lite.post(
            "/pipelines/quick/runs", "deployer", data="{}", headers={"Content-Type": media}
        )
        assert_problem(reply, 415, "application/json")
    reply = await lite.post("/pipelines", "admin", data="name: x", headers={"Content-Type": "text/csv"})
    assert_problem(reply, 415, "application/yaml")


async def test_a_missing_or_invalid_token_is_401_with_www_authenticate(api: Api) -> None:
    directory = Directory(api.store)
    create = partial(directory.create_token, by="tests")
    revoked = await api.db(create, "gone", [Role.VIEWER], datetime.now(UTC))
    await api.db(directory.revoke_token, "gone", datetime.now(UTC))
    attempts = [
        {},
        {"Authorization": f"Basic {api.tokens['admin']}"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer shy_not-a-real-token"},
        {"Authorization": f"Bearer {revoked}"},
    ]
    for headers in attempts:
        for method, path in (("GET", "/runs"), ("POST", "/pipelines/quick/runs"), ("GET", "/audit")):
            reply = await api.call(method, path, None, headers=headers, json={} if method == "POST" else None)
            assert_problem(reply, 401)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await api.get("/runs", "admin")).json["items"] == []


async def test_an_unknown_endpoint_is_404_and_a_wrong_method_405(lite: Api) -> None:
    assert_problem(await lite.get("/nowhere"), 404, "/api/v1/nowhere")
    assert_problem(await lite.get("/runs/x/y/z"), 404)
    for method, path, allowed in (
        ("DELETE", "/runs", "GET"),
        ("PUT", "/runs/web%231", "GET"),
        ("GET", "/runs/x/cancel", "POST"),
        ("PATCH", "/pipelines/web", "GET"),
    ):
        reply = await lite.call(method, path, "admin")
        assert_problem(reply, 405, method)
        assert allowed in reply.headers["Allow"]


async def test_a_bad_query_is_400_naming_the_parameter(lite: Api) -> None:
    assert_problem(await lite.get("/runs?limit=abc"), 400, "limit")
    assert_problem(await lite.get("/runs?limit=0"), 400, "limit")
    assert_problem(await lite.get("/runs?limit=201"), 400, "limit")
    assert_problem(await lite.get("/runs?status=exploded"), 400, "status")
    assert_problem(await lite.get("/runs?colour=red"), 400, "colour")
    # operations without query parameters refuse unknown ones too, rather than ignore them
    for path in ("/environments", "/environments/staging", "/runs/web%231", "/pipelines/web"):
        problem = assert_problem(await lite.get(f"{path}?foo=1&bar="), 400, "'foo'", "'bar'")
        assert [e["field"] for e in problem["errors"]] == ["foo", "bar"]
    cancel = await lite.post("/runs/web%231/cancel?force=1", "deployer", json={})
    assert_problem(cancel, 400, "'force'", "takes no query parameters")
    lists = ("/runs", "/pipelines", "/pipelines/web/versions", "/environments/staging/deployments", "/audit")
    for path in lists:
        for bad in ("!!!", "-1", "x" * 300):
            assert_problem(await lite.get(f"{path}?cursor={bad}", "admin"), 400, "cursor")


async def test_a_tampered_cursor_never_causes_a_500(api: Api) -> None:
    """Cursors are opaque, but clients edit them anyway: whatever they send back is either a
    place to continue from or a 400."""
    for _ in range(2):
        await api.wait((await api.trigger("web", parameters={"ref": "abc1234"}))["id"])
    lists = ("/runs", "/pipelines", "/pipelines/web/versions", "/environments/staging/deployments", "/audit")
    forged = [
        cursor([True]),
        cursor([10**30]),
        cursor([-1]),
        cursor(["\x00"]),
        cursor(["9999-12-31T23:59:59.999999+00:00", "f" * 32]),
        "9" * 40,
        "0",
        "true",
        "999999999999999999.ffff",
        "0.0",
        "zzz",
    ]
    if not api.url.startswith("postgresql"):  # see test_a_cursor_beyond_32_bits_on_postgres
        forged.append("9" * 18)
    failures = []
    for path in lists:
        real = (await api.get(f"{path}?limit=1", "admin")).json["next_cursor"]
        for value in [*forged, *([real + "9" * 30, real[:-1], real.upper()] if real else [])]:
            reply = await api.get(f"{path}?limit=1&cursor={quote(value)}", "admin")
            if reply.status >= 500:
                failures.append((path, value))
            elif reply.status >= 400:
                assert_problem(reply, 400, "cursor")
    assert not failures, repr(failures)


async def test_an_invalid_last_event_id_is_400(lite: Api) -> None:
    run = await lite.trigger("quick")
    for value in ("abc", "-1", "1" * 19):
        reply = await lite.stream(f"/runs/{run['id']}/events", headers={"Last-Event-ID": value})
        assert_problem(reply, 400, "Last-Event-ID")


async def test_odd_but_harmless_inputs_get_a_clear_answer(api: Api) -> None:
    """A sweep of inputs a fuzzer would send: every answer is a 2xx or a problem document."""
    requests: list[tuple[str, str, dict[str, object]]] = [
        ("GET", "/runs/%20", {}),
        ("GET", "/runs/web%23", {}),
        ("GET", "/runs/web%23-1", {}),
        ("GET", "/runs/web%2399999999999999999999", {}),
        ("GET", "/runs/%E2%98%83", {}),
        ("GET", "/pipelines/%E2%98%83", {}),
        ("GET", "/pipelines/" + "a" * 300, {}),
        ("GET", "/runs?triggered_by=%E2%98%83&pipeline=x", {}),
        ("GET", "/runs?limit=1.5", {}),
        ("GET", f"/runs?cursor={cursor(['2020-01-01T00:00:00+00:00', 'x'])}", {}),
        ("GET", f"/pipelines?cursor={cursor([7])}", {}),
        ("POST", "/pipelines/quick/runs", {"data": '{"pipeline_version": 1e400}', "headers": JSON}),
        (
            "POST",
            "/pipelines/quick/runs",
            {"data": '{"pipeline_version": ' + "9" * 5000 + "}", "headers": JSON},
        ),
        ("POST", "/pipelines/quick/runs", {"data": '{"revision": ""}', "headers": JSON}),
        (
            "POST",
            "/pipelines",
            {"data": "a: &a [x]\nb: [*a, *a]\n", "headers": {"Content-Type": "text/yaml"}},
        ),
        ("POST", "/pipelines", {"data": "- just\n- a list\n", "headers": {"Content-Type": "text/yaml"}}),
        ("POST", "/pipelines", {"data": b"\xff\xfe", "headers": {"Content-Type": "text/yaml"}}),
        ("PUT", "/pipelines/%E2%98%83", {"data": "name: x\n", "headers": {"Content-Type": "text/yaml"}}),
        ("DELETE", "/pipelines/%E2%98%83", {}),
    ]
    for method, path, options in requests:
        reply = await api.call(method, path, "admin", **options)  # type: ignore[arg-type]
        assert reply.status < 500, (method, path, reply.text)
        if reply.status >= 400:
            assert_problem(reply, reply.status)


async def test_the_openapi_document_and_its_reference_page_are_served(lite: Api) -> None:
    document = await lite.get("/openapi.json", None)
    assert document.status == 200
    spec = document.json
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    for path in (
        "/api/v1/pipelines",
        "/api/v1/pipelines/{pipeline_id}/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/runs/{run_id}/gates/{gate_id}/approve",
        "/api/v1/environments/{env_id}/deployments",
        "/api/v1/audit",
    ):
        assert path in paths, path
    page = await lite.get("/docs", None)
    assert page.status == 200 and page.content_type == "text/html"
    assert "openapi.json" in page.text
    assert not re.search(r"""(src|href)=["']https?:""", page.text)  # nothing fetched from the internet


# -- bugs: each of these answers 500 today ------------------------------------------------------


async def test_deeply_nested_json_is_400_not_500(lite: Api) -> None:
    reply = await lite.post("/pipelines/quick/runs", "deployer", data="[" * 12000, headers=JSON)
    assert_problem(reply, 400)


async def test_a_deeply_nested_yaml_definition_is_422_not_500(lite: Api) -> None:
    reply = await lite.post(
        "/pipelines", "admin", data="[" * 1000, headers={"Content-Type": "application/yaml"}
    )
    assert_problem(reply, 422)


async def test_a_non_ascii_digit_last_event_id_is_400_not_500(lite: Api) -> None:
    run = await lite.trigger("quick")
    reply = await lite.stream(f"/runs/{run['id']}/events", headers={"Last-Event-ID": "\u00b2"})
    assert_problem(reply, 400, "Last-Event-ID")


@pytest.mark.postgres
async def test_a_cursor_beyond_32_bits_on_postgres(pg: Api) -> None:
    for path in ("/pipelines/web/versions", "/audit", "/environments/staging/deployments"):
        reply = await pg.get(f"{path}?cursor={'9' * 18}", "admin")
        assert reply.status < 500, (path, reply.text)


@pytest.mark.postgres
async def test_a_nul_character_never_causes_a_500_on_postgres(pg: Api) -> None:
    await run_nul_requests(pg)


async def test_a_nul_character_never_causes_a_500_on_sqlite(lite: Api) -> None:
    await run_nul_requests(lite)


async def run_nul_requests(api: Api) -> None:
    requests: list[tuple[str, str, dict[str, object]]] = [
        ("GET", "/runs/%00", {}),
        ("GET", "/pipelines/%00", {}),
        ("GET", "/runs?pipeline=%00", {}),
        ("GET", "/audit?actor=%00", {}),
        ("GET", "/pipelines?cursor=" + cursor(["\x00"]), {}),
        ("POST", "/runs/%00/cancel", {"json": {}}),
        ("POST", "/pipelines/quick/runs", {"json": {"revision": "a\x00b"}}),
    ]
    answers = []
    for method, path, options in requests:
        reply = await api.call(method, path, "admin", **options)  # type: ignore[arg-type]
        answers.append((method, path, reply.status))
    assert all(status < 500 for *_, status in answers), answers


async def test_nul_and_unpaired_surrogate_escapes_are_stored_as_replacement_characters(api: Api) -> None:
    run = await api.trigger("web", parameters={"ref": "abc1234"})
    body = '{"reason": "bad\\u0000 char \\ud921 here"}'
    reply = await api.post(f"/runs/{run['id']}/cancel", "deployer", data=body, headers=JSON)
    assert reply.status == 200, reply.text
    assert "bad\ufffd char \ufffd here" in (await api.run(run["id"]))["reason"]
    stages = '[{"name": "s", "jobs": [{"name": "j", "run": "x"}]}]'
    definition = '{"name": "web2", "description": "\\ud921", "stages": ' + stages + "}"
    reply = await api.post("/pipelines", "admin", data=definition, headers=JSON)
    assert_problem(reply, 422, "not valid Unicode")


def _text_filters() -> list[tuple[str, str]]:
    """Every GET list's text filter (the query parameters that take any text; ``cursor`` is
    left out: empty is its first page)."""
    from bot.api.spec import API

    found: list[tuple[str, str]] = []
    for op in API.operations:
        if op.method != "GET" or op.query is None:
            continue
        path = re.sub(r"\{[^}]+\}", "staging", op.path)
        for name, info in op.query.model_fields.items():
            if name != "cursor" and "str" in repr(info.annotation):
                found.append((path, name))
    return found


async def test_an_empty_text_filter_on_any_list_is_refused_naming_it_not_matched(lite: Api) -> None:
    """``?pipeline=$P`` with P unset asked for the runs of the pipeline "" and got an empty page
    (as ``?actor=`` on the audit log once did): every text filter refuses empty with a 400."""
    filters = _text_filters()
    assert ("/runs", "pipeline") in filters and ("/runs", "triggered_by") in filters
    await lite.post("/pipelines/quick/runs", "admin")
    for path, name in filters:
        problem = assert_problem(await lite.get(f"{path}?{name}=", "admin"), 400, name)
        assert problem.get("errors", [{"field": name}])[0]["field"] == name, (path, problem)
    assert (await lite.get("/runs?pipeline=quick", "admin")).json["items"]
