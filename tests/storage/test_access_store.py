"""Tokens, grants, approver eligibility, deployments, idempotency keys and the audit chain on
real SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from core.access import Role
from core.audit import verify
from core.commands import ApproveGate, CancelRun, CompleteJob, RetryRun, TriggerRun
from core.errors import Conflict
from core.model import Actor
from core.runtime.service import Service
from storage.directory import Directory
from storage.idempotency import IdempotencyStore
from storage.reads import Reads
from tests.helpers import ALICE
from tests.pipelines import gated

MakeService = Callable[..., Service]


def now() -> datetime:
    return datetime.now(UTC)


def finish_all(svc: Service) -> None:
    for job in svc.claim_jobs("r1", 10, 30):
        done = svc.handle(
            CompleteJob(
                run_id=job.run_id,
                job_id=job.job_id,
                attempt=job.attempt,
                runner="r1",
                outcome="succeeded",
                exit_code=0,
            )
        )
        assert done.accepted, done.reason


def test_a_token_authenticates_until_revoked_and_only_its_hash_is_stored(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url)
    directory = Directory(svc.store)  # type: ignore[arg-type]
    secret = directory.create_token("ci", [Role.DEPLOYER], now(), by="test")
    found = directory.authenticate(secret, now())
    assert found is not None and found.name == "ci" and found.roles == {Role.DEPLOYER}
    assert directory.authenticate(secret + "x", now()) is None
    with svc.store.engine.connect() as conn:  # type: ignore[attr-defined]
        stored = conn.execute(sa.text("SELECT token_hash FROM access_token")).scalars().all()
    assert secret not in stored and len(stored[0]) == 64
    directory.revoke_token("ci", now())
    assert directory.authenticate(secret, now()) is None


def test_an_approver_through_slack_must_have_held_the_role_and_group_when_the_gate_opened(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, gated(name="ship"))
    directory = Directory(svc.store)  # type: ignore[arg-type]
    early = now() - timedelta(minutes=1)
    directory.grant("bob", "role", "approver", early)
    directory.grant("bob", "group", "release-managers", early)
    directory.grant("carol", "role", "approver", early)  # not in the group
    run = svc.handle(TriggerRun(pipeline="ship", actor=ALICE)).state
    assert run is not None
    finish_all(svc)
    directory.grant("carol", "group", "release-managers", now())  # after the gate opened: too late
    refused = svc.handle(ApproveGate(run_id=run.run.id, gate="production", actor=Actor("carol", "slack")))
    assert not refused.accepted and refused.refusal == "forbidden"
    assert "carol was not one of them when it opened" in refused.reason
    directory.revoke_grant("bob", "role", "approver", now())  # revoked after it opened: still counts
    approved = svc.handle(ApproveGate(run_id=run.run.id, gate="production", actor=Actor("bob", "slack")))
    assert approved.accepted, approved.reason


def test_a_finished_deploy_stage_is_recorded_as_a_deployment(db_url: str, make_service: MakeService) -> None:
    svc = make_service(db_url, gated(name="ship"))
    run = svc.handle(TriggerRun(pipeline="ship", actor=ALICE, source_revision="abc1234")).state
    assert run is not None
    finish_all(svc)
    assert svc.handle(ApproveGate(run_id=run.run.id, gate="production", actor=Actor("bob", "cli"))).accepted
    finish_all(svc)
    reads = Reads(svc.store)  # type: ignore[arg-type]
    (deployment,) = reads.deployments("production", None, 10)
    assert (deployment.pipeline, deployment.run_id, deployment.stage, deployment.status) == (
        "ship",
        run.run.id,
        "production",
        "succeeded",
    )
    assert deployment.revision == "abc1234" and deployment.triggered_by == "alice"
    assert reads.current_deployment("production") == deployment
    assert reads.environment_names() == ["production"]


def test_one_of_many_concurrent_claims_of_an_idempotency_key_wins(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url)
    keys = IdempotencyStore(svc.store, timedelta(hours=24))  # type: ignore[arg-type]
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda _: keys.claim("ci", "k1", "fp", now()), range(16)))
    outcomes = [c.outcome for c in claims]
    assert outcomes.count("new") == 1 and set(outcomes) <= {"new", "in_progress"}
    (won,) = [c for c in claims if c.outcome == "new"]
    assert keys.claim("ci", "k1", "other", now()).outcome == "mismatch"
    assert keys.claim("someone-else", "k1", "other", now()).outcome == "new"
    assert not keys.finish("ci", "k1", "not-the-holder", 500, {"body": "no"})
    assert keys.finish("ci", "k1", won.holder, 202, {"body": "{}"})
    replay = keys.claim("ci", "k1", "fp", now())
    assert (replay.outcome, replay.status_code, replay.response) == ("replay", 202, {"body": "{}"})
    assert keys.claim("ci", "k1", "fp", now() + timedelta(hours=25)).outcome == "new"  # expired


def test_the_audit_chain_holds_under_concurrent_writers_and_catches_an_edit(
    db_url: str, make_service: MakeService
) -> None:
    one = make_service(db_url, gated(name="ship"))
    two = make_service(db_url)
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda i: (one if i % 2 else two).handle(TriggerRun(pipeline="ship", actor=ALICE)), range(20)
            )
        )
    reads = Reads(one.store)  # type: ignore[arg-type]
    verdict = verify(reads.audit_chain())
    assert verdict.ok and verdict.checked == 20
    with one.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(sa.text("UPDATE audit SET actor = 'mallory' WHERE id = 7"))
    broken = verify(reads.audit_chain())
    assert not broken.ok and broken.entry_id == 7


def test_whoever_asked_for_a_run_cannot_approve_its_retry_either(
    db_url: str, make_service: MakeService
) -> None:
    svc = make_service(db_url, gated(name="ship"))
    first = svc.handle(TriggerRun(pipeline="ship", actor=ALICE)).state
    assert first is not None
    finish_all(svc)
    assert svc.handle(CancelRun(run_id=first.run.id, actor=ALICE)).accepted
    retry = svc.handle(RetryRun(run_id=first.run.id, actor=Actor("bob", "cli"))).state
    assert retry is not None and retry.run.requested_by == ("alice", "bob")
    waiting = svc.find_run(retry.run.id)
    assert waiting is not None and waiting.gates[0].status == "open"
    for who in ("alice", "bob"):
        refused = svc.handle(ApproveGate(run_id=retry.run.id, gate="production", actor=Actor(who, "cli")))
        assert refused.refusal == "forbidden" and "cannot approve its own gate" in refused.reason
    assert svc.handle(
        ApproveGate(run_id=retry.run.id, gate="production", actor=Actor("carol", "cli"))
    ).accepted


def test_a_role_granted_while_also_held_through_a_group_outlasts_the_membership(
    db_url: str, make_service: MakeService
) -> None:
    directory = Directory(make_service(db_url).store)  # type: ignore[arg-type]
    directory.grant("release-managers", "role", "approver", now())
    directory.grant("alice", "group", "release-managers", now())
    directory.grant("alice", "role", "approver", now())
    assert directory.revoke_grant("alice", "group", "release-managers", now())
    assert directory.principal("alice", now()).roles == {Role.APPROVER}


def test_a_revoked_tokens_name_is_refused_as_revoked_not_as_one_to_revoke(
    db_url: str, make_service: MakeService
) -> None:
    directory = Directory(make_service(db_url).store)  # type: ignore[arg-type]
    directory.create_token("ci", [Role.DEPLOYER], now(), by="test")
    directory.revoke_token("ci", now())
    with pytest.raises(Conflict) as refused:
        directory.create_token("ci", [Role.DEPLOYER], now(), by="test")
    assert refused.value.message == (
        "a token named 'ci' was revoked; token names are not reused: pick another name"
    )
