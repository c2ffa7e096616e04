"""The audit log: admins read it; it holds every mutating request, allowed or refused; its hash
chain verifies and exposes an entry altered behind Shipyard's back."""

from __future__ import annotations

import re

import sqlalchemy as sa

from bot.api.spec import API
from core.audit import verify
from storage.reads import Reads
from tests.api.conftest import Api, assert_problem
from tests.pipelines import one_job

YAML = {"Content-Type": "application/yaml"}


async def audit(api: Api, query: str = "") -> list[dict[str, object]]:
    reply = await api.get("/audit?limit=200" + query, "admin")
    assert reply.status == 200, reply.text
    return reply.json["items"]  # type: ignore[no-any-return]


async def test_only_admins_read_the_audit_log(lite: Api) -> None:
    for who in ("viewer", "deployer", "approver"):
        assert_problem(await lite.get("/audit", who), 403, who, "manage")
    assert_problem(await lite.get("/audit", None), 401)
    assert (await lite.get("/audit", "admin")).status == 200


async def test_an_empty_actor_or_action_filter_is_refused_not_matched_against_nothing(lite: Api) -> None:
    """``?actor=$WHO`` with ``WHO`` unset asked for the entries of the actor "" and got an empty
    page, which reads as "nobody did anything"; the whole log would read as everyone's doing."""
    await lite.post("/pipelines/quick/runs", "viewer")  # one entry at least
    for name in ("actor", "action"):
        reply = await lite.get(f"/audit?{name}=", "admin")
        problem = assert_problem(reply, 400, name)
        assert problem["errors"][0]["field"] == name
    assert (await lite.get("/audit?actor=viewer", "admin")).json["items"]


async def test_the_log_holds_accepted_and_refused_requests_newest_first(api: Api) -> None:
    run = await api.trigger("gated", who="admin")
    await api.wait_status(run["id"], "waiting")
    await api.post("/pipelines/quick/runs", "viewer")  # refused by role
    await api.post("/pipelines/quick/runs", None)  # refused: no token
    await api.post(f"/runs/{run['id']}/gates/production/approve", "admin")  # refused: self-approval
    await api.get("/runs", "viewer")  # reads are not audited

    entries = await audit(api)
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True)

    def find(**match: object) -> dict[str, object]:
        found = [e for e in entries if all(e[k] == v for k, v in match.items())]
        assert found, (match, entries)
        return found[0]

    trigger = find(actor="admin", action="trigger_run", outcome="accepted")
    assert trigger["channel"] == "rest" and trigger["target"] == "gated#1"
    refused = find(actor="viewer", outcome="rejected")
    assert "viewer" in str(refused["reason"]) and refused["channel"] == "rest"
    assert refused["detail"]["status"] == 403  # type: ignore[index]
    find(actor="(unauthenticated)", outcome="rejected")
    self_approval = find(actor="admin", action="approve_gate", outcome="rejected")
    assert "own gate" in str(self_approval["reason"])
    assert not any(e["actor"] == "viewer" and e["outcome"] == "accepted" for e in entries)

    only_viewer = await audit(api, "&actor=viewer")
    assert only_viewer and {e["actor"] for e in only_viewer} == {"viewer"}
    first = await api.get("/audit?limit=2", "admin")
    second = await api.get(f"/audit?limit=2&cursor={first.json['next_cursor']}", "admin")
    assert [e["id"] for e in first.json["items"] + second.json["items"]] == ids[:4]


async def test_the_chain_verifies_and_detects_an_entry_altered_with_raw_sql(api: Api) -> None:
    run = await api.trigger("slow")
    await api.post(f"/runs/{run['id']}/cancel", "deployer2")
    await api.post(f"/runs/{run['id']}/cancel", "deployer", json={"reason": "done"})
    await api.post("/pipelines/quick/runs", "viewer")
    reads = Reads(api.store)

    verdict = await api.db(lambda: verify(reads.audit_chain()))
    assert verdict.ok, verdict
    assert verdict.checked >= 4
    entries = await audit(api)
    assert entries[0]["prev_hash"] == entries[1]["hash"]

    victim = entries[2]["id"]

    def tamper() -> None:
        with api.store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit SET reason = 'nothing to see' WHERE id = :id"), {"id": victim})

    await api.db(tamper)
    verdict = await api.db(lambda: verify(reads.audit_chain()))
    assert not verdict.ok
    assert verdict.entry_id == victim
    assert str(victim) in verdict.problem


async def test_accepted_pipeline_changes_are_audited(api: Api) -> None:
    assert (await api.post("/pipelines", "admin", data=one_job("audited"), headers=YAML)).status == 201
    assert (await api.call("DELETE", "/pipelines/audited", "admin")).status == 200
    actions = {(e["action"], e["outcome"]) for e in await audit(api, "&actor=admin")}
    assert {("create_pipeline", "accepted"), ("archive_pipeline", "accepted")} <= actions


async def test_a_request_refused_before_it_became_a_command_is_audited(api: Api) -> None:
    assert (await api.post("/runs/nosuchrun/cancel", "deployer")).status == 404
    assert [(e["action"], e["outcome"]) for e in await audit(api, "&actor=deployer")] == [
        ("cancel_run", "rejected")
    ]


async def test_the_same_refusal_with_an_idempotency_key_is_audited_too(api: Api) -> None:
    keyed = {"Idempotency-Key": "c1"}
    assert (await api.post("/runs/nosuchrun/cancel", "deployer", headers=keyed)).status == 404
    assert [(e["action"], e["outcome"]) for e in await audit(api, "&actor=deployer")] == [
        ("cancel_run", "rejected")
    ]


async def test_a_mutating_request_no_operation_answers_is_audited_too(api: Api) -> None:
    """No such endpoint (404) or a wrong method (405): aiohttp answers before any operation
    runs, and the request is audited all the same; reads are not."""
    assert (await api.post("/nowhere", "deployer")).status == 404
    assert (await api.call("DELETE", "/runs", "deployer")).status == 405
    assert (await api.call("PUT", "/runs/x/cancel", None)).status == 405
    wrong = {"Authorization": "Bearer shy_not-a-real-token"}
    assert (await api.call("PATCH", "/api/elsewhere", None, headers=wrong)).status == 404
    assert (await api.get("/nowhere", "deployer")).status == 404
    assert (await api.call("HEAD", "/nowhere", "deployer")).status == 404

    entries = await audit(api)
    seen = [(e["actor"], e["action"], e["outcome"], e["target"], e["detail"]) for e in reversed(entries)]
    assert [s[:4] for s in seen] == [
        ("deployer", "no_such_endpoint", "rejected", "/nowhere"),
        ("deployer", "method_not_allowed", "rejected", "/runs"),
        ("(unauthenticated)", "method_not_allowed", "rejected", "/runs/x/cancel"),
        ("(unauthenticated)", "no_such_endpoint", "rejected", "/api/elsewhere"),
    ]
    assert [(d["method"], d["status"]) for *_, d in seen] == [
        ("POST", 404),
        ("DELETE", 405),
        ("PUT", 405),
        ("PATCH", 404),
    ]
    assert "no such endpoint" in str(entries[-1]["reason"])
    assert "DELETE is not allowed" in str(entries[-2]["reason"])


#: a body each mutating operation accepts as well-formed, so the request reaches the handler
#: (an empty one is refused by validation before, and audited there: that proves less)
SWEEP_BODIES: dict[str, object] = {
    "register_artifact": {
        "name": "web",
        "version": "1.0.0",
        "digest": "sha256:" + "0" * 64,
        "uri": "s3://b/k",
    },
    "mark_artifact_bad": {"reason": "corrupt"},
    "promote": {"environment": "staging"},
    "move_to_front": {"reason": "hotfix"},
    "lock_environment": {"reason": "incident 4711"},
    "extend_lock": {"duration": "1h"},
    "create_pipeline": {"name": "web", "stages": [{"name": "s", "jobs": [{"name": "j", "run": ["true"]}]}]},
    "put_pipeline": {"name": "nosuch", "stages": [{"name": "s", "jobs": [{"name": "j", "run": ["true"]}]}]},
    "create_schedule": {"pipeline": "nosuch", "cron": "0 * * * *"},
    "create_webhook": {"url": "http://127.0.0.1:9/hook", "events": ["run.started"]},
    "create_trigger": {"pipeline": "nosuch", "kind": "github"},
}
#: what else an operation's entry may be called (locking what you hold already relocks it)
SWEEP_ALIASES = {"lock_environment": ("relock_environment",)}
#: path parameters: environments that exist (so lock operations get past the lookup), and
#: otherwise things that do not
SWEEP_PARAMS = {"env_id": "staging"}


async def test_every_mutating_operation_leaves_an_audit_entry_whatever_it_answers(lite: Api) -> None:
    """Each mutating operation of the API, asked by an admin about things that mostly do not
    exist, without and with an Idempotency-Key: whatever it answers, the log holds it under the
    operation's name, accepted or rejected."""
    missing = []
    for op in (o for o in API.operations if o.mutating):
        path = re.sub(r"\{(\w+)\}", lambda m: SWEEP_PARAMS.get(m[1], "nosuch"), op.path)
        body = SWEEP_BODIES.get(op.operation_id, {}) if op.body is not None else None
        for keyed in ({}, {"Idempotency-Key": f"sweep-{op.operation_id}"}):
            before = max((int(str(e["id"])) for e in await audit(lite)), default=0)
            reply = await lite.call(op.method, path, "admin", json=body, headers=keyed)
            entries = [e for e in await audit(lite) if int(str(e["id"])) > before]
            outcome = "rejected" if reply.status >= 400 else "accepted"
            names = {op.operation_id, *SWEEP_ALIASES.get(op.operation_id, ())}
            if not any(
                (e["actor"], e["outcome"]) == ("admin", outcome) and e["action"] in names for e in entries
            ):
                got = [(e["action"], e["outcome"]) for e in entries]
                missing.append(f"{op.method} {path} {keyed} -> {reply.status}: {got}")
    assert missing == []


async def test_acknowledging_a_review_a_run_never_opened_is_audited(api: Api) -> None:
    run = await api.trigger("quick")
    await api.wait(run["id"])
    refused = await api.post(f"/runs/{run['id']}/review/acknowledge", "approver")
    assert_problem(refused, 404, "did not break the glass")
    assert [
        (e["action"], e["target"], e["outcome"], e["reason"]) for e in await audit(api, "&actor=approver")
    ] == [
        (
            "acknowledge_review",
            "quick#1",
            "rejected",
            "quick#1 did not break the glass: there is no review to acknowledge",
        )
    ]


async def test_a_lock_reason_of_nothing_but_wide_spaces_is_refused_and_audited(api: Api) -> None:
    """The API's pattern lets through spaces beyond ASCII (U+3000); the lock store finds nothing
    in them, and its refusal is audited like its others."""
    refused = await api.post("/environments/staging/lock", "deployer", json={"reason": "\u3000\u2003"})
    assert_problem(refused, 422, "say why the environment is locked")
    assert [(e["action"], e["target"], e["outcome"]) for e in await audit(api, "&actor=deployer")] == [
        ("lock_environment", "environment staging", "rejected")
    ]
    assert (await api.get("/environments/staging/lock")).status == 404


async def test_an_entry_for_a_request_that_made_something_names_what_it_made(api: Api) -> None:
    made = await api.post("/schedules", "admin", json={"pipeline": "quick", "cron": "0 2 * * *"})
    assert made.status == 201, made.text
    (entry,) = [e for e in await audit(api) if e["action"] == "create_schedule"]
    assert entry["target"] == "/schedules" and entry["outcome"] == "accepted"
    assert entry["detail"]["location"] == f"/schedules/{made.json['id']}"  # type: ignore[index]
