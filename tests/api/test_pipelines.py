"""Pipelines: list and read; admins create (YAML or JSON), change (a new immutable version) and
archive them; a pipeline loaded from a file belongs to the file."""

from __future__ import annotations

import json

import yaml

from tests.api.conftest import Api, assert_problem
from tests.pipelines import API_PIPELINES

API_PIPELINE = """\
name: api-made
description: created over HTTP
stages:
  - name: build
    jobs:
      - {name: compile, run: ["true"]}
"""
YAML = {"Content-Type": "application/yaml"}


def as_json(text: str) -> dict[str, object]:
    return yaml.safe_load(text)  # type: ignore[no-any-return]


async def test_pipelines_are_listed_by_name_in_pages_and_read_one_by_one(api: Api) -> None:
    names: list[str] = []
    cursor = None
    while True:
        reply = await api.get("/pipelines?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert reply.status == 200, reply.text
        assert len(reply.json["items"]) <= 2
        names += [p["name"] for p in reply.json["items"]]
        cursor = reply.json["next_cursor"]
        if cursor is None:
            break
    assert names == sorted(API_PIPELINES)

    web = await api.get("/pipelines/web")
    assert web.status == 200, web.text
    body = web.json
    assert body["id"] == body["name"] == "web"
    assert body["description"] == "Build and ship the web frontend"
    assert body["archived"] is False
    assert body["latest_version"]["version"] == 1
    assert body["latest_version"]["source_path"].endswith("web.yml")
    assert [s["name"] for s in body["definition"]["stages"]] == ["build", "staging"]
    assert_problem(await api.get("/pipelines/nope"), 404, "nope")


async def test_create_from_yaml_then_a_new_version_from_json(api: Api) -> None:
    created = await api.post("/pipelines", "admin", data=API_PIPELINE, headers=YAML)
    assert created.status == 201, created.text
    assert created.headers["Location"] == "/api/v1/pipelines/api-made"
    assert created.json["latest_version"]["version"] == 1
    assert created.json["latest_version"]["source_path"] is None
    assert_problem(await api.post("/pipelines", "admin", data=API_PIPELINE, headers=YAML), 409, "api-made")

    changed = as_json(API_PIPELINE)
    changed["description"] = "changed over HTTP"
    put = await api.call("PUT", "/pipelines/api-made", "admin", json=changed)
    assert put.status == 200, put.text
    assert put.json["latest_version"]["version"] == 2
    assert put.json["description"] == "changed over HTTP"

    same = await api.call("PUT", "/pipelines/api-made", "admin", json=changed)
    assert same.status == 200 and same.json["latest_version"]["version"] == 2  # same content, same version

    versions = await api.get("/pipelines/api-made/versions")
    assert versions.status == 200, versions.text
    items = versions.json["items"]
    assert [v["version"] for v in items] == [2, 1]
    assert items[0]["digest"] != items[1]["digest"]

    first = await api.get("/pipelines/api-made/versions?limit=1")
    second = await api.get(f"/pipelines/api-made/versions?limit=1&cursor={first.json['next_cursor']}")
    assert [v["version"] for v in first.json["items"] + second.json["items"]] == [2, 1]
    assert second.json["next_cursor"] is None

    run = await api.trigger("api-made", pipeline_version=1)
    assert run["pipeline_version"] == 1
    assert (await api.trigger("api-made"))["pipeline_version"] == 2


async def test_create_from_json_and_put_creates_a_new_pipeline(api: Api) -> None:
    body = as_json(API_PIPELINE)
    created = await api.post("/pipelines", "admin", json=body)
    assert created.status == 201, created.text
    other = {**body, "name": "put-made"}
    put = await api.call(
        "PUT",
        "/pipelines/put-made",
        "admin",
        data=json.dumps(other),
        headers={"Content-Type": "application/json"},
    )
    assert put.status == 201, put.text
    assert put.json["name"] == "put-made"


async def test_invalid_definitions_are_422_with_every_problem(lite: Api) -> None:
    bad = "name: Bad_Name\nstages: []\nsurprise: 1\n"
    reply = await lite.post("/pipelines", "admin", data=bad, headers=YAML)
    body = assert_problem(reply, 422, "name", "stages", "surprise")
    assert len(body["errors"]) >= 3
    assert_problem(await lite.post("/pipelines", "admin", data="name: [unclosed", headers=YAML), 422)
    assert_problem(await lite.post("/pipelines", "admin", data="", headers=YAML), 422)
    mismatch = await lite.call("PUT", "/pipelines/other-name", "admin", data=API_PIPELINE, headers=YAML)
    assert_problem(mismatch, 422, "api-made", "other-name")


async def test_a_file_defined_pipeline_refuses_put(api: Api) -> None:
    definition = as_json(API_PIPELINES["quick"])
    definition["description"] = "edited"
    reply = await api.call("PUT", "/pipelines/quick", "admin", json=definition)
    assert_problem(reply, 409, "quick.yml")
    assert (await api.get("/pipelines/quick")).json["latest_version"]["version"] == 1


async def test_an_archived_pipeline_refuses_triggers_but_stays_readable(api: Api) -> None:
    assert (await api.post("/pipelines", "admin", data=API_PIPELINE, headers=YAML)).status == 201
    run = await api.wait((await api.trigger("api-made"))["id"])

    archived = await api.call("DELETE", "/pipelines/api-made", "admin")
    assert archived.status == 200, archived.text
    assert archived.json["archived"] is True

    refused = await api.post("/pipelines/api-made/runs", "deployer", json={})
    assert refused.status in (404, 409), refused.text
    assert_problem(refused, refused.status, "api-made")

    assert (await api.get("/pipelines/api-made")).json["archived"] is True
    assert (await api.get("/pipelines/api-made/versions")).status == 200
    assert (await api.run(run["id"]))["status"] == "succeeded"
    listed = {p["name"] for p in (await api.get("/pipelines")).json["items"]}
    assert "api-made" not in listed
    everything = {p["name"] for p in (await api.get("/pipelines?archived=true")).json["items"]}
    assert "api-made" in everything
    assert_problem(await api.call("DELETE", "/pipelines/nope", "admin"), 404, "nope")

    changed = API_PIPELINE.replace("created over HTTP", "back again")
    revived = await api.post("/pipelines", "admin", data=changed, headers=YAML)
    assert revived.status == 201, revived.text
    assert revived.json["archived"] is False
    assert revived.json["latest_version"]["version"] == 2
    assert (await api.trigger("api-made"))["pipeline_version"] == 2


async def test_posting_an_archived_pipeline_again_brings_it_back(api: Api) -> None:
    assert (await api.post("/pipelines", "admin", data=API_PIPELINE, headers=YAML)).status == 201
    assert (await api.call("DELETE", "/pipelines/api-made", "admin")).status == 200
    again = await api.post("/pipelines", "admin", data=API_PIPELINE, headers=YAML)
    assert again.status == 201, again.text
    assert again.json["archived"] is False
    assert (await api.post("/pipelines/api-made/runs", "deployer", json={})).status == 202
