"""Incoming triggers over real HTTP: GitHub push events in GitHub's documented shape, signed as
GitHub signs them (HMAC-SHA256 of the body, computed here from GitHub's description), and generic
JSON signed with the ``standardwebhooks`` package. Accepted, filtered by branch, deduplicated,
and refused (with an audit entry) when unsigned, badly signed, stale or unknown."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import standardwebhooks

from storage.tables import T
from tests.api.conftest import Api, Reply, assert_problem
from tests.webhooks.conftest import StartHooks, settle

SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


def push_payload(ref: str = "refs/heads/main", after: str = SHA, **changes: Any) -> dict[str, Any]:
    """A push event as GitHub documents it (trimmed to what a push always carries)."""
    commit = {
        "id": after,
        "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
        "distinct": True,
        "message": "Fix the frobnicator",
        "timestamp": "2026-11-26T12:00:00-08:00",
        "url": f"https://github.com/acme/web/commit/{after}",
        "author": {"name": "Mona Octocat", "email": "mona@github.com", "username": "octocat"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": [],
        "removed": [],
        "modified": ["README.md"],
    }
    payload: dict[str, Any] = {
        "ref": ref,
        "before": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
        "after": after,
        "created": False,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": "https://github.com/acme/web/compare/0d1a26e67d8f...6dcb09b5b578",
        "commits": [commit],
        "head_commit": commit,
        "repository": {
            "id": 1296269,
            "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
            "name": "web",
            "full_name": "acme/web",
            "private": False,
            "owner": {"name": "acme", "login": "acme", "id": 1, "type": "Organization"},
            "html_url": "https://github.com/acme/web",
            "default_branch": "main",
        },
        "pusher": {"name": "octocat", "email": "mona@github.com"},
        "sender": {"login": "octocat", "id": 583231, "type": "User"},
    }
    payload.update(changes)
    return payload


async def github(
    api: Api,
    trigger: dict[str, Any],
    payload: Any,
    *,
    delivery: str | None = None,
    event: str = "push",
    secret: str | None = None,
    signature: str | None = None,
) -> Reply:
    body = json.dumps(payload).encode()
    digest = hmac.new((secret or trigger["secret"]).encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "292430182",
        "X-Hub-Signature-256": signature if signature is not None else f"sha256={digest}",
    }
    if signature == "":
        del headers["X-Hub-Signature-256"]
    return await api.call("POST", f"/hooks/{trigger['id']}", None, data=body, headers=headers)


async def generic(
    api: Api, trigger: dict[str, Any], payload: Any, *, msg_id: str | None = None, at: datetime | None = None
) -> Reply:
    text = json.dumps(payload)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": standardwebhooks.Webhook(trigger["secret"]).sign(msg_id, at, text),
    }
    return await api.call("POST", f"/hooks/{trigger['id']}", None, data=text, headers=headers)


async def make_trigger(api: Api, pipeline: str, kind: str) -> dict[str, Any]:
    made = await api.post("/triggers", json={"pipeline": pipeline, "kind": kind})
    assert made.status == 201, made.text
    return made.json  # type: ignore[no-any-return]


async def runs_of(api: Api, pipeline: str) -> list[dict[str, Any]]:
    return (await api.get(f"/runs?pipeline={pipeline}")).json["items"]  # type: ignore[no-any-return]


async def rejected(api: Api, action: str) -> list[dict[str, Any]]:
    items = (await api.get(f"/audit?action={action}", "admin")).json["items"]
    return [a for a in items if a["outcome"] == "rejected"]


async def test_a_signed_push_starts_one_run_of_the_pushed_commit_however_often_it_is_delivered(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "pushed", "github")
    assert trigger["url"].endswith(f"/api/v1/hooks/{trigger['id']}") and trigger["secret"]

    delivery = str(uuid.uuid4())
    first = await github(api, trigger, push_payload(), delivery=delivery)
    assert first.status == 202, first.text
    assert first.json["outcome"] == "started"
    run = first.json["run"]
    assert run["revision"] == SHA and run["parameters"] == {"sha": SHA, "branch": "main"}
    assert run["triggered_by"] == {"principal": f"trigger:{trigger['id']}", "channel": "webhook"}
    assert first.headers["Location"] == f"/api/v1/runs/{run['id']}"

    again = await github(api, trigger, push_payload(), delivery=delivery)  # GitHub's "Redeliver"
    assert again.status == 200 and again.json["outcome"] == "duplicate"
    assert again.json["run"]["id"] == run["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert [r["id"] for r in await runs_of(api, "pushed")] == [run["id"]]
    assert (await api.wait(run["id"]))["status"] == "succeeded"


async def test_pushes_are_filtered_by_branch_and_tags_and_deletions_start_nothing(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(sqlite_url)
    trigger = await make_trigger(api, "pushed", "github")
    other = "a" * 40
    cases = [
        (
            push_payload("refs/heads/feature/login"),
            "matches no push trigger of pushed (branches: main, release/*)",
        ),
        (push_payload("refs/tags/v1.2.0"), "is not a branch"),
        (push_payload(after="0" * 40, deleted=True), "deletion starts nothing"),
    ]
    for payload, why in cases:
        reply = await github(api, trigger, payload)
        assert reply.status == 200 and reply.json["outcome"] == "ignored", reply.text
        assert why in reply.json["reason"]
    assert await runs_of(api, "pushed") == []
    started = await github(api, trigger, push_payload("refs/heads/release/1.2", after=other))
    assert started.status == 202 and started.json["run"]["parameters"]["branch"] == "release/1.2"
    pong = await github(api, trigger, {"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping")
    assert pong.status == 200 and pong.json["outcome"] == "pong"
    issue = await github(api, trigger, {"action": "opened"}, event="issues")
    assert issue.status == 200 and issue.json["outcome"] == "ignored"


async def test_unsigned_badly_signed_and_unknown_pushes_are_refused_and_audited(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "pushed", "github")
    assert_problem(await github(api, trigger, push_payload(), signature=""), 401, "unsigned")
    assert_problem(await github(api, trigger, push_payload(), secret="not the secret"), 401, "does not match")
    tampered = await github(api, trigger, push_payload(), signature="sha256=" + "0" * 64)
    assert_problem(tampered, 401, "X-Hub-Signature-256 does not match")
    unknown = {**trigger, "id": "tr_nope"}
    assert_problem(await github(api, unknown, push_payload()), 404, "no trigger 'tr_nope'")
    assert_problem(await github(api, trigger, {"ref": "refs/heads/main"}), 422, "after")
    form = await api.call(
        "POST",
        f"/hooks/{trigger['id']}",
        None,
        data=b"payload=%7B%7D",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "d1",
            "X-Hub-Signature-256": "sha256="
            + hmac.new(trigger["secret"].encode(), b"payload=%7B%7D", hashlib.sha256).hexdigest(),
        },
    )
    assert_problem(form, 415, "application/json")
    assert await runs_of(api, "pushed") == []
    audit = await rejected(api, "hook_trigger")
    assert len(audit) == 6
    reasons = " | ".join(a["reason"] for a in audit)
    assert "unsigned" in reasons and "does not match" in reasons and "no trigger" in reasons
    assert {a["channel"] for a in audit} == {"webhook"}


async def test_a_trigger_for_a_pipeline_without_push_rules_says_what_to_add(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(sqlite_url)
    trigger = await make_trigger(api, "quick", "github")
    assert_problem(await github(api, trigger, push_payload()), 422, "no push trigger")


async def test_a_generic_trigger_is_signed_the_standard_webhooks_way_and_replays_are_refused(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "web", "generic")
    assert trigger["secret"].startswith("whsec_")
    body = {"parameters": {"ref": "abc1234"}, "revision": SHA}

    first = await generic(api, trigger, body, msg_id="msg_one")
    assert first.status == 202, first.text
    assert first.json["run"]["parameters"]["ref"] == "abc1234" and first.json["run"]["revision"] == SHA
    replayed = await generic(api, trigger, body, msg_id="msg_one")  # the same request again, in time
    assert replayed.status == 200 and replayed.json["outcome"] == "duplicate"
    assert replayed.json["run"]["id"] == first.json["run"]["id"]

    stale = datetime.now(UTC) - timedelta(minutes=10)
    assert_problem(await generic(api, trigger, body, msg_id="msg_two", at=stale), 401, "stale or replayed")
    assert_problem(
        await generic(api, {**trigger, "secret": "whsec_" + "B" * 44}, body), 401, "does not match"
    )
    unsigned = await api.call("POST", f"/hooks/{trigger['id']}", None, json=body)
    assert_problem(unsigned, 401, "unsigned")
    assert_problem(await generic(api, trigger, {"parameters": {}, "colour": "red"}), 422, "colour")
    assert_problem(await generic(api, trigger, {"parameters": {"ref": "not-a-sha"}}), 422, "ref")
    assert len(await runs_of(api, "web")) == 1
    assert len(await rejected(api, "hook_trigger")) == 4  # the engine audits the refused trigger itself


async def test_triggers_are_managed_by_admins_and_their_secret_is_shown_once(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(sqlite_url)
    assert_problem(await api.post("/triggers", "deployer", json={"pipeline": "web", "kind": "github"}), 403)
    assert_problem(await api.post("/triggers", json={"pipeline": "nope", "kind": "github"}), 404)
    assert_problem(await api.post("/triggers", json={"pipeline": "web", "kind": "svn"}), 422)
    trigger = await make_trigger(api, "pushed", "github")
    listed = (await api.get("/triggers", "admin")).json["items"]
    assert [t["id"] for t in listed] == [trigger["id"]] and "secret" not in listed[0]
    assert "secret" not in (await api.get(f"/triggers/{trigger['id']}", "admin")).json
    assert (await api.call("DELETE", f"/triggers/{trigger['id']}")).status == 200
    assert_problem(await github(api, trigger, push_payload()), 404, "no trigger")
    assert_problem(await api.get(f"/triggers/{trigger['id']}", "admin"), 404)


async def test_text_a_database_cannot_store_is_refused_not_a_500(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    assert_problem(await api.call("POST", "/hooks/tr_%00x", None, json={}), 400, "NUL")
    callback = "/runs/web%231/gates/production/callback?webhook=wh_%00"
    assert_problem(await api.call("POST", callback, None, json={}), 400, "NUL")


async def test_a_push_carries_its_branch_to_an_environment_that_takes_only_main(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url, environments={"production": {"branches": ["main"]}})
    trigger = await make_trigger(api, "released", "github")

    main = await github(api, trigger, push_payload("refs/heads/main"))
    assert main.status == 202, main.text
    assert main.json["run"]["branch"] == "main" and main.json["run"]["revision"] == SHA
    assert (await settle(api, main.json["run"]["id"]))["branch"] == "main"

    delivery, elsewhere = str(uuid.uuid4()), push_payload("refs/heads/release/1.2", after="b" * 40)
    release = await github(api, trigger, elsewhere, delivery=delivery)
    body = assert_problem(release, 403, "branch release/1.2 may not be deployed to production", "main")
    assert body["instance"] == f"/api/v1/hooks/{trigger['id']}"
    assert [r["branch"] for r in await runs_of(api, "released")] == ["main"]  # nothing half-made
    again = await github(api, trigger, elsewhere, delivery=delivery)
    assert_problem(again, 403, "release/1.2")  # a redelivery is refused again, not a duplicate
    audit = (await api.get(f"/audit?actor=trigger:{trigger['id']}", "admin")).json["items"]
    refused = [a for a in audit if a["outcome"] == "rejected"]
    assert len(refused) == 2 and all("release/1.2" in a["reason"] for a in refused), audit

    tag = await github(api, trigger, push_payload("refs/tags/v1.2.0"))
    assert tag.status == 200 and tag.json["outcome"] == "ignored" and "not a branch" in tag.json["reason"]
    assert len(await runs_of(api, "released")) == 1


async def test_a_generic_trigger_passes_the_branch_it_is_given(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(sqlite_url, environments={"production": {"branches": ["main"]}})
    trigger = await make_trigger(api, "released", "generic")
    main = await generic(api, trigger, {"revision": SHA, "branch": "main"})
    assert main.status == 202 and main.json["run"]["branch"] == "main", main.text
    assert_problem(await generic(api, trigger, {"revision": SHA, "branch": "feature/x"}), 403, "feature/x")
    assert_problem(await generic(api, trigger, {"revision": SHA}), 403, "names no branch")
    assert len(await runs_of(api, "released")) == 1


async def raw_post(api: Api, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any]:
    """POST with header bytes as given (an HTTP client would refuse to send what is not text);
    the status and the JSON answer."""
    assert api.client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.server.port)
    head = [f"POST /api/v1{path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines = [line.encode() for line in [*head, "Content-Type: application/json", "Connection: close"]]
    writer.write(b"\r\n".join(lines + [k + b": " + v for k, v in headers]) + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_signature_headers_that_are_not_text_are_refused_not_a_500(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    """Header bytes that are not UTF-8 reach the handler as surrogates, which cannot be signed."""
    api = await start_hooks(sqlite_url)
    pushed = await make_trigger(api, "pushed", "github")
    plain = await make_trigger(api, "web", "generic")
    stamp = str(int(time.time())).encode()
    cases = [
        (
            pushed,
            [(b"X-GitHub-Event", b"push"), (b"X-Hub-Signature-256", b"sha256=\xff\xfe")],
            "does not match",
        ),
        (
            plain,
            [(b"webhook-id", b"msg_\xff"), (b"webhook-timestamp", stamp), (b"webhook-signature", b"v1,x")],
            "ASCII",
        ),
        (
            plain,
            [(b"webhook-id", b"msg_1"), (b"webhook-timestamp", stamp), (b"webhook-signature", b"v1,\xff")],
            "ASCII",
        ),
    ]
    for trigger, headers, why in cases:
        status, problem = await raw_post(api, f"/hooks/{trigger['id']}", headers, b"{}")
        assert (status, problem["status"]) == (401, 401) and why in problem["detail"], problem
    assert len(await rejected(api, "hook_trigger")) == 3
    assert await runs_of(api, "pushed") == [] and await runs_of(api, "web") == []


async def test_a_push_to_a_branch_longer_than_a_run_stores_is_refused_not_a_500(
    db_url: str, start_hooks: StartHooks
) -> None:
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "pushed", "github")
    longest = "release/" + "é" * 247
    too_long = await github(api, trigger, push_payload(f"refs/heads/{longest}x"))
    assert_problem(too_long, 422, "256 characters", "at most 255")
    assert await runs_of(api, "pushed") == []
    assert "at most 255" in (await rejected(api, "hook_trigger"))[0]["reason"]
    started = await github(api, trigger, push_payload(f"refs/heads/{longest}"))
    assert started.status == 202 and started.json["run"]["parameters"]["branch"] == longest


async def test_a_captured_push_sent_again_under_a_new_delivery_id_starts_no_second_run(
    db_url: str, start_hooks: StartHooks
) -> None:
    """X-GitHub-Delivery is not signed: whoever captured a push can send its signed body again
    under any delivery id, and that must be the same push."""
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "pushed", "github")
    first = await github(api, trigger, push_payload(), delivery=str(uuid.uuid4()))
    assert first.status == 202, first.text
    replayed = await github(api, trigger, push_payload(), delivery=str(uuid.uuid4()))
    assert replayed.status == 200 and replayed.json["outcome"] == "duplicate", replayed.text
    assert replayed.json["run"]["id"] == first.json["run"]["id"]
    assert [r["id"] for r in await runs_of(api, "pushed")] == [first.json["run"]["id"]]
    later = await github(api, trigger, push_payload(after="c" * 40))  # another push still starts one
    assert later.status == 202 and later.json["run"]["revision"] == "c" * 40


async def test_a_redelivered_push_of_a_run_keyed_by_its_delivery_id_is_still_a_duplicate(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    """Runs started before pushes were keyed by their body carry ``github:<delivery>``."""
    api = await start_hooks(sqlite_url)
    trigger = await make_trigger(api, "pushed", "github")
    delivery = str(uuid.uuid4())
    first = await github(api, trigger, push_payload(), delivery=delivery)
    run_id = first.json["run"]["id"]

    with api.store.engine.begin() as conn:
        run = T["run"]
        conn.execute(sa.update(run).where(run.c.id == run_id).values(idempotency_key=f"github:{delivery}"))
    again = await github(api, trigger, push_payload(), delivery=delivery)
    assert again.status == 200 and again.json["outcome"] == "duplicate", again.text
    assert again.json["run"]["id"] == run_id and len(await runs_of(api, "pushed")) == 1


def _late(branches: str | None) -> str:
    """A pipeline made over the API (so a test can change its push rules), started by pushes to
    ``branches`` (none: it has no push trigger)."""
    rules = f"triggers:\n  - push: {{branches: [{branches}]}}\n" if branches else ""
    return f"name: late\n{rules}stages:\n  - name: build\n    jobs: [{{name: compile, run: ['true']}}]\n"


async def test_a_refused_push_sent_again_after_its_rules_changed_gets_the_first_answer_and_no_run(
    db_url: str, start_hooks: StartHooks
) -> None:
    """A captured push that was refused (no push trigger) or ignored (no rule for its branch)
    stays so: sent again once the rules take it, under any delivery id, it gets the answer it
    got the first time and starts no run of its old commit."""
    api = await start_hooks(db_url)
    yaml = {"Content-Type": "application/yaml"}
    made = await api.call("POST", "/pipelines", "admin", data=_late(None), headers=yaml)
    assert made.status == 201, made.text
    trigger = await make_trigger(api, "late", "github")

    unruled, hotfix = push_payload(after="d" * 40), push_payload("refs/heads/hotfix/1", after="e" * 40)
    first = await github(api, trigger, unruled)
    assert_problem(first, 422, "has no push trigger")
    changed = await api.call("PUT", "/pipelines/late", "admin", data=_late("main"), headers=yaml)
    assert changed.status == 200, changed.text
    ignored = await github(api, trigger, hotfix)
    assert ignored.status == 200 and ignored.json["outcome"] == "ignored", ignored.text
    changed = await api.call("PUT", "/pipelines/late", "admin", data=_late('main, "hotfix/*"'), headers=yaml)
    assert changed.status == 200, changed.text

    again = await github(api, trigger, unruled)  # GitHub's "Redeliver", or a capture sent again
    assert_problem(again, 422, "has no push trigger")
    assert again.headers["Idempotent-Replayed"] == "true"
    replayed = await github(api, trigger, hotfix)
    assert replayed.status == 200 and replayed.json == ignored.json, replayed.text
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert await runs_of(api, "late") == []
    refusals = [a for a in await rejected(api, "hook_trigger") if "no push trigger" in a["reason"]]
    assert len(refusals) == 2 and refusals[0]["detail"].get("replayed") == "true", refusals  # newest first

    fresh = await github(api, trigger, push_payload(after="f" * 40))  # a new push to main starts one
    assert fresh.status == 202, fresh.text
    assert [r["revision"] for r in await runs_of(api, "late")] == ["f" * 40]


async def test_a_push_older_than_shipyard_remembers_answers_is_refused_as_stale(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    """A refusal is remembered SHIPYARD_IDEMPOTENCY_HOURS; a captured push older than that
    (its signed ``repository.pushed_at``) could have been refused and forgotten, so it starts
    nothing. A recent one starts its run, and one that started a run stays a duplicate."""
    api = await start_hooks(sqlite_url)
    trigger = await make_trigger(api, "pushed", "github")

    def pushed(at: datetime, after: str) -> dict[str, Any]:
        payload = push_payload(after=after)
        payload["repository"] = {**payload["repository"], "pushed_at": int(at.timestamp())}
        return payload

    old = await github(api, trigger, pushed(datetime.now(UTC) - timedelta(hours=25), "a" * 40))
    assert_problem(old, 422, "longer ago than Shipyard remembers deliveries (24 hours)", "push again")
    assert await runs_of(api, "pushed") == []
    # by GitHub's clock, which may be a little ahead of ours: a minute short of the bound is
    # refused too, so a refusal is never forgotten before its push is refused as stale
    nearly = await github(api, trigger, pushed(datetime.now(UTC) - timedelta(hours=24, minutes=-1), "e" * 40))
    assert_problem(nearly, 422, "longer ago than Shipyard remembers deliveries")
    recent = pushed(datetime.now(UTC) - timedelta(minutes=5), "b" * 40)
    started = await github(api, trigger, recent)
    assert started.status == 202, started.text
    assert started.json["run"]["revision"] == "b" * 40

    # a push that did start a run, delivered again after that long, is still its duplicate
    stale = pushed(datetime.now(UTC) - timedelta(hours=30), "c" * 40)
    digest = hashlib.sha256(json.dumps(stale).encode()).hexdigest()
    run_id = started.json["run"]["id"]
    with api.store.engine.begin() as conn:
        run = T["run"]
        keyed = sa.update(run).where(run.c.id == run_id).values(idempotency_key=f"github:sha256:{digest}")
        conn.execute(keyed)
    again = await github(api, trigger, stale)
    assert again.status == 200 and again.json["outcome"] == "duplicate", again.text
    assert again.json["run"]["id"] == run_id and len(await runs_of(api, "pushed")) == 1


async def test_a_refused_generic_trigger_sent_again_after_the_pipeline_changed_starts_no_run(
    db_url: str, start_hooks: StartHooks
) -> None:
    """Within its five minutes, a captured request that was refused is answered as the first
    time, even once the pipeline would take it; the same webhook-id with another body is
    refused, and a new request starts its run."""
    api = await start_hooks(db_url)
    yaml = {"Content-Type": "application/yaml"}
    strict = "name: late\nparameters:\n  - {name: version, required: true}\n" + _late(None).removeprefix(
        "name: late\n"
    )
    assert (await api.call("POST", "/pipelines", "admin", data=strict, headers=yaml)).status == 201
    trigger = await make_trigger(api, "late", "generic")
    at = datetime.now(UTC)
    first = await generic(api, trigger, {"revision": SHA}, msg_id="msg_early", at=at)
    assert_problem(first, 422, "version")
    loose = strict.replace("required: true", 'default: "1"')
    assert (await api.call("PUT", "/pipelines/late", "admin", data=loose, headers=yaml)).status == 200

    again = await generic(api, trigger, {"revision": SHA}, msg_id="msg_early", at=at)
    assert_problem(again, 422, "version")
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await generic(api, trigger, {"revision": "a" * 40}, msg_id="msg_early")
    assert_problem(other, 409, "webhook-id msg_early was already used for another body")
    assert await runs_of(api, "late") == []
    fresh = await generic(api, trigger, {"revision": SHA}, msg_id="msg_later")
    assert fresh.status == 202, fresh.text


async def test_a_generic_webhook_id_sent_again_with_another_body_is_refused_not_a_duplicate(
    sqlite_url: str, start_hooks: StartHooks
) -> None:
    """The webhook-id names one message: the same one again is the run it started, another body
    under it is the sender's mistake, told as such, not answered with the first run."""
    api = await start_hooks(sqlite_url)
    trigger = await make_trigger(api, "web", "generic")
    first = await generic(
        api, trigger, {"parameters": {"ref": "abc1234"}, "revision": SHA}, msg_id="msg_reused"
    )
    assert first.status == 202, first.text
    again = await generic(
        api, trigger, {"parameters": {"ref": "abc1234"}, "revision": SHA}, msg_id="msg_reused"
    )
    assert again.status == 200 and again.json["outcome"] == "duplicate", again.text
    assert again.json["run"]["id"] == first.json["run"]["id"]
    assert again.headers["Location"] == first.headers["Location"]
    other = await generic(
        api, trigger, {"parameters": {"ref": "abc1234"}, "revision": "a" * 40}, msg_id="msg_reused"
    )
    assert_problem(other, 409, "webhook-id msg_reused was already used for another body")
    assert [r["id"] for r in await runs_of(api, "web")] == [first.json["run"]["id"]]


async def test_a_push_refused_for_its_branch_stays_refused_once_the_pipeline_would_take_it(
    db_url: str, start_hooks: StartHooks
) -> None:
    """A push refused 403 because its run would deploy its branch where that branch may not go,
    sent again once the pipeline deploys elsewhere, gets the same 403 and starts no run."""
    api = await start_hooks(db_url, environments={"production": {"branches": ["main"]}})
    yaml = {"Content-Type": "application/yaml"}

    def late(environment: str) -> str:
        return (
            _late('main, "release/*"')
            + f"  - name: ship\n    environment: {environment}\n    jobs: [{{name: go, run: ['true']}}]\n"
        )

    assert (
        await api.call("POST", "/pipelines", "admin", data=late("production"), headers=yaml)
    ).status == 201
    trigger = await make_trigger(api, "late", "github")
    release = push_payload("refs/heads/release/1.2", after="b" * 40)
    assert_problem(await github(api, trigger, release), 403, "branch release/1.2 may not be deployed")
    assert (
        await api.call("PUT", "/pipelines/late", "admin", data=late("staging"), headers=yaml)
    ).status == 200

    again = await github(api, trigger, release)
    assert_problem(again, 403, "branch release/1.2 may not be deployed to production")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await runs_of(api, "late") == []
    fresh = await github(api, trigger, push_payload("refs/heads/release/1.2", after="c" * 40))
    assert fresh.status == 202, fresh.text


async def test_the_same_push_delivered_many_times_at_once_starts_one_run(
    db_url: str, start_hooks: StartHooks
) -> None:
    """Concurrent deliveries of one push (a capture sent again while GitHub's is in flight):
    one run; the others are its duplicate, or told the first is still being processed."""
    api = await start_hooks(db_url)
    trigger = await make_trigger(api, "pushed", "github")
    replies = await asyncio.gather(*(github(api, trigger, push_payload()) for _ in range(8)))
    started = [r for r in replies if r.status == 202]
    assert len(started) == 1, [r.text for r in replies]
    for r in replies:
        if r.status == 200:
            assert r.json["outcome"] == "duplicate" and r.json["run"]["id"] == started[0].json["run"]["id"]
        elif r.status != 202:
            assert_problem(r, 409, "a delivery of this push", "is still being processed")
    assert [r["id"] for r in await runs_of(api, "pushed")] == [started[0].json["run"]["id"]]
