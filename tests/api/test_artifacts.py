"""Artifacts over real HTTP: registering (new, repeated, conflicting, mutable), reading by id or
name@version, paging, who may do what, and marking bad (audited, once)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.api.conftest import Api, assert_problem


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def body(name: str = "web", version: str = "1.4.2", n: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "digest": digest(n),
        "uri": f"oci://r.example/{name}:{version}",
        **extra,
    }


async def test_register_repeat_and_conflict(api: Api) -> None:
    made = await api.post("/artifacts", "deployer", json=body(metadata={"commit": "abc1234"}))
    assert made.status == 201, made.text
    artifact = made.json
    assert made.headers["Location"] == f"/api/v1/artifacts/{artifact['id']}"
    assert (artifact["ref"], artifact["status"], artifact["created_by"]) == (
        "web@1.4.2",
        "registered",
        "deployer",
    )
    assert artifact["metadata"] == {"commit": "abc1234"} and artifact["run_id"] is None

    assert (await api.get(made.headers["Location"])).json == artifact
    assert (await api.get("/artifacts/web@1.4.2")).json == artifact

    repeat = await api.post("/artifacts", "admin", json=body(uri="s3://mirror/web.tgz"))
    assert repeat.status == 200, repeat.text
    assert repeat.json == artifact  # the registered record, not the repeat's uri or caller

    conflict = assert_problem(
        await api.post("/artifacts", "deployer", json=body(n=2)),
        409,
        "web@1.4.2 is already registered with digest " + digest(1),
        digest(2),
    )
    assert conflict["registered_digest"] == digest(1) and conflict["artifact_id"] == artifact["id"]
    assert (await api.get("/artifacts/web@1.4.2")).json["digest"] == digest(1)


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("latest", "mutable reference"),
        ("main", "mutable reference"),
        ("feature/login", "looks like a branch name"),
        ("release", "has no digit"),
    ],
)
async def test_moving_tags_as_versions_are_refused_saying_why(lite: Api, version: str, why: str) -> None:
    reply = await lite.post("/artifacts", "deployer", json=body(version=version))
    assert_problem(reply, 422, why, "rolled back", "commit sha")
    assert (await lite.get("/artifacts")).json["items"] == []


async def test_malformed_fields_are_422_with_what_to_send(lite: Api) -> None:
    cases = [
        (body(digest="sha256:abc"), "exactly 64 hex digits"),
        (body(digest="md5:" + "a" * 32), "sha256:<64 hex digits>"),
        (body(uri="registry.example.com/web:1"), "with a scheme"),
        (body(name="Web"), "lowercase"),
        (body(metadata={"9x": "1"}), "metadata"),
        ({"name": "web", "version": "1.0.0"}, "digest"),
        ({**body(), "colour": "red"}, "colour"),
    ]
    for sent, fragment in cases:
        assert_problem(await lite.post("/artifacts", "deployer", json=sent), 422, fragment)


async def test_roles(lite: Api) -> None:
    for who in ("viewer", "approver"):
        assert_problem(await lite.post("/artifacts", who, json=body()), 403, "trigger needs one of")
    assert (await lite.post("/artifacts", "deployer", json=body())).status == 201
    assert (await lite.get("/artifacts/web@1.4.2", "viewer")).status == 200
    assert_problem(await lite.post("/artifacts", None, json=body(version="2.0.0")), 401)
    for who in ("viewer", "deployer"):
        assert_problem(
            await lite.post("/artifacts/web@1.4.2/mark-bad", who, json={"reason": "x"}),
            403,
            "approve needs one of",
        )
    assert (await lite.get("/artifacts/web@1.4.2")).json["status"] == "registered"


async def test_unknown_artifacts_are_404(lite: Api) -> None:
    for ref in ("web@9.9.9", "00000000-0000-0000-0000-000000000000", "web", "web@"):
        assert_problem(await lite.get(f"/artifacts/{ref}"), 404, "no artifact", "name@version")


async def test_lists_page_newest_first(api: Api) -> None:
    made = []
    for i in range(5):
        name = "api" if i == 2 else "web"
        reply = await api.post("/artifacts", "deployer", json=body(name, f"1.{i}.0", n=i))
        made.append(reply.json)
    newest_first = sorted(
        made, key=lambda a: (datetime.fromisoformat(a["created_at"]), a["id"]), reverse=True
    )
    seen: list[dict[str, Any]] = []
    path = "/artifacts?limit=2"
    while True:
        page = (await api.get(path)).json
        assert len(page["items"]) <= 2
        seen += page["items"]
        if page["next_cursor"] is None:
            break
        path = f"/artifacts?limit=2&cursor={page['next_cursor']}"
    assert seen == newest_first
    web = (await api.get("/artifacts?name=web")).json
    assert [a["ref"] for a in web["items"]] == [a["ref"] for a in newest_first if a["name"] == "web"]
    assert (await api.get("/artifacts?name=nothing")).json == {"next_cursor": None, "items": []}
    assert_problem(await api.get("/artifacts?cursor=yesterday"), 400, "cursor")
    assert_problem(await api.get("/artifacts?limit=0"), 400, "limit")


async def test_marking_bad_is_final_and_audited(api: Api) -> None:
    artifact = (await api.post("/artifacts", "deployer", json=body())).json
    marked = await api.post(
        f"/artifacts/{artifact['id']}/mark-bad", "approver", json={"reason": "500s on login"}
    )
    assert marked.status == 200, marked.text
    assert (marked.json["status"], marked.json["bad_by"], marked.json["bad_reason"]) == (
        "bad",
        "approver",
        "500s on login",
    )
    assert (await api.get("/artifacts/web@1.4.2")).json == marked.json

    again = await api.post("/artifacts/web@1.4.2/mark-bad", "admin", json={"reason": "also slow"})
    assert_problem(again, 409, "already marked bad by approver", "500s on login")
    assert_problem(await api.post("/artifacts/web@7.7.7/mark-bad", "admin", json={"reason": "x"}), 404)
    assert_problem(await api.post("/artifacts/web@1.4.2/mark-bad", "admin", json={"reason": "  "}), 422)
    assert_problem(await api.post("/artifacts/web@1.4.2/mark-bad", "deployer", json={"reason": "x"}), 403)

    entries = (await api.get("/audit?action=mark_artifact_bad", "admin")).json["items"]
    seen = [(e["actor"], e["outcome"], e["channel"]) for e in reversed(entries)]
    assert seen == [
        ("approver", "accepted", "rest"),
        ("admin", "rejected", "rest"),
        ("admin", "rejected", "rest"),
        ("admin", "rejected", "rest"),
        ("deployer", "rejected", "rest"),
    ]
    first = entries[-1]
    assert first["reason"] == "500s on login" and first["target"] == "artifact web@1.4.2"
    assert first["detail"]["digest"] == digest(1)
    assert "already marked bad" in entries[-2]["reason"]
    registered = (await api.get("/audit?action=register_artifact", "admin")).json["items"]
    assert [(e["actor"], e["outcome"]) for e in registered] == [("deployer", "accepted")]
