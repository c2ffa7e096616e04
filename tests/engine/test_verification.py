"""Post-deploy verification in the engine, with real runs: a deploy stage to an environment that
declares ``verify`` keeps its run ``verifying`` (and its environment) until a verdict; a pass
goes on, a failure fails the run and, with ``on_failure: rollback``, starts the rollback run in
the same transaction, once, however often the verdict is sent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bot.bootstrap import Shipyard
from core.commands import EndVerification
from core.model import Actor
from core.ports import Deployment
from core.runtime.verification import rollback_key
from core.states import RunStatus, StageStatus
from tests.engine.conftest import StartShipyard, send, trigger, wait_for
from tests.helpers import ALICE, CAROL
from tests.pipelines import built_and_deployed

SHOP = built_and_deployed()


def _environments(on_failure: str = "rollback") -> dict[str, Any]:
    return {
        "production": {
            "checks": {"smoke": {"command": ["true"], "interval": "1s"}},
            "verify": {"checks": ["smoke"], "for": "10m", "on_failure": on_failure},
        }
    }


def _history(shipyard: Shipyard) -> list[Deployment]:
    with shipyard.service.store.reading() as tx:
        return tx.deployments_to("production", 5)


def _verifying(state: Any) -> bool:
    return bool(state.run.status is RunStatus.VERIFYING)


async def test_a_verified_deployment_holds_its_environment_until_it_passes(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": SHOP}, environments=_environments())
    first = await trigger(shipyard, "shop", version="1.0.0")
    state = await wait_for(shipyard, first.run.id, _verifying)
    stage = state.stages[1]
    assert stage.status is StageStatus.VERIFYING
    assert stage.verify_until is not None and stage.started_at is not None
    assert timedelta(minutes=10) <= stage.verify_until - stage.started_at < timedelta(minutes=11)
    assert state.run.reason == "verifying production for 10m"

    second = await trigger(shipyard, "shop", version="1.0.1")
    waiting = await wait_for(shipyard, second.run.id, lambda s: s.run.status is RunStatus.QUEUED)
    assert waiting.run.reason == f"waiting for production: {first.run.ref} is deploying there"

    passed = await send(
        shipyard, EndVerification(run_id=first.run.id, verdict="passed", reason="smoke passed 600 times")
    )
    assert passed.accepted, passed.reason
    done = await wait_for(shipyard, first.run.id)
    assert done.run.status is RunStatus.SUCCEEDED
    assert done.stages[1].reason == "verified: smoke passed 600 times"
    history = await shipyard.orchestrator.db(_history, shipyard)
    assert [(d.artifact, d.status, d.verification) for d in history] == [
        ("shop@1.0.0", "succeeded", "verified")
    ]
    await wait_for(shipyard, second.run.id, _verifying)  # the next one went in once verification ended


async def test_a_failed_verification_fails_the_run_and_rolls_back_once(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": SHOP}, environments=_environments())
    good = await trigger(shipyard, "shop", version="1.0.0")
    await wait_for(shipyard, good.run.id, _verifying)
    assert (await send(shipyard, EndVerification(run_id=good.run.id, verdict="passed"))).accepted
    await wait_for(shipyard, good.run.id)

    bad = await trigger(shipyard, "shop", version="2.0.0")
    await wait_for(shipyard, bad.run.id, _verifying)
    why = "error-rate = 0.034 > 0.01 at 12:04:10, twice"
    failed = await send(shipyard, EndVerification(run_id=bad.run.id, verdict="failed", reason=why))
    assert failed.accepted, failed.reason
    rollback = failed.extra["rollback"].state
    assert rollback.run.kind == "rollback" and rollback.run.idempotency_key == rollback_key(bad.run.id)

    again = await send(shipyard, EndVerification(run_id=bad.run.id, verdict="failed", reason=why))
    assert not again.accepted and "nothing is being verified" in again.reason

    done = await wait_for(shipyard, bad.run.id)
    assert done.run.status is RunStatus.FAILED
    assert done.run.reason == f"verification of production failed: {why}"
    rolled = await wait_for(shipyard, rollback.run.id, _verifying)  # the rollback is verified too
    assert rolled.run.artifact_id is not None
    runs = await shipyard.orchestrator.db(shipyard.service.store.list_runs, "shop", 10)
    assert sum(1 for s in runs if s.run.kind == "rollback") == 1


async def test_people_end_verification_early_within_separation_of_duties(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": SHOP}, environments=_environments(on_failure="fail"))
    run = await trigger(shipyard, "shop", version="1.0.0")
    await wait_for(shipyard, run.run.id, _verifying)

    inconclusive = await send(
        shipyard, EndVerification(run_id=run.run.id, verdict="inconclusive", reason="smoke: no data")
    )
    assert inconclusive.accepted
    paused = await wait_for(shipyard, run.run.id, lambda s: "inconclusive" in s.run.reason)
    assert paused.run.status is RunStatus.VERIFYING
    assert paused.run.reason == "verification of production inconclusive: smoke: no data; an approver decides"
    assert paused.stages[1].verify_until is None  # (no deadline any more: a person decides)
    again = await send(
        shipyard, EndVerification(run_id=run.run.id, verdict="inconclusive", reason="still none")
    )
    assert not again.accepted and "already waits for an approver" in again.reason

    own = await send(shipyard, EndVerification(run_id=run.run.id, verdict="passed", actor=ALICE))
    assert not own.accepted and "separation of duties" in own.reason
    by_carol = await send(shipyard, EndVerification(run_id=run.run.id, verdict="passed", actor=CAROL))
    assert by_carol.accepted, by_carol.reason
    done = await wait_for(shipyard, run.run.id)
    assert done.run.status is RunStatus.SUCCEEDED and done.stages[1].reason == "verified by carol"


async def test_a_person_rolls_back_even_where_failures_only_fail(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": SHOP}, environments=_environments(on_failure="fail"))
    good = await trigger(shipyard, "shop", version="1.0.0")
    await wait_for(shipyard, good.run.id, _verifying)
    await send(shipyard, EndVerification(run_id=good.run.id, verdict="passed"))
    bad = await trigger(shipyard, "shop", version="2.0.0")
    await wait_for(shipyard, bad.run.id, _verifying)
    # a failure from the analysis alone would only fail the run here; a person's "Roll back" rolls back
    decision = await send(
        shipyard,
        EndVerification(run_id=bad.run.id, verdict="failed", rollback=True, actor=Actor("carol", "slack")),
    )
    assert decision.accepted
    assert decision.extra["rollback"].state.run.kind == "rollback"
    done = await wait_for(shipyard, bad.run.id)
    assert done.run.reason == "verification of production failed by carol"


async def test_an_environment_without_verify_is_not_verified(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": SHOP})
    run = await trigger(shipyard, "shop", version="1.0.0")
    done = await wait_for(shipyard, run.run.id)
    assert done.run.status is RunStatus.SUCCEEDED
    refused = await send(shipyard, EndVerification(run_id=run.run.id, verdict="passed"))
    assert not refused.accepted and "nothing is being verified" in refused.reason


async def test_the_first_deployment_failing_verification_has_nothing_to_roll_back_to(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": SHOP}, environments=_environments())
    run = await trigger(shipyard, "shop", version="1.0.0")
    await wait_for(shipyard, run.run.id, _verifying)
    decision = await send(
        shipyard, EndVerification(run_id=run.run.id, verdict="failed", reason="smoke failed")
    )
    assert decision.accepted and "rollback" not in decision.extra
    entries = await shipyard.orchestrator.db(shipyard.service.store.audit_entries, 20)
    refused = [e for e in entries if e.action == "rollback"]
    assert refused and refused[0].outcome == "rejected"
    assert refused[0].reason.endswith("no rollback: no earlier good deployment to production to roll back to")


async def test_a_late_verdict_on_one_stage_never_ends_the_next_stages_verification(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    """Staging's analysis judged its verification failed while a person passed it; by the time
    its verdict arrives production verifies. The verdict is about staging, which ended already:
    it is refused, and production is neither failed nor rolled back by it."""
    from core.analysis import Analysis, AnalysisKind, AnalysisStatus
    from core.runtime.verification import verdicts_to
    from core.runtime.writes import analysis_id
    from tests.pipelines import SHOP as STAGED_SHOP

    verify = {"checks": ["smoke"], "for": "10m", "on_failure": "rollback"}
    smoke = {"smoke": {"command": ["true"], "interval": "1s"}}
    envs = {env: {"checks": smoke, "verify": verify} for env in ("staging", "production")}
    shipyard = await start_shipyard(db_url, {"shop": STAGED_SHOP}, environments=envs)
    run = await trigger(shipyard, "shop", version="1.0.0")
    state = await wait_for(shipyard, run.run.id, _verifying)
    staging = next(s for s in state.stages if s.status is StageStatus.VERIFYING)
    assert staging.environment == "staging"
    judged = Analysis(
        id=analysis_id(run.run.id, staging.index),
        environment="staging",
        kind=AnalysisKind.VERIFY,
        checks=("smoke",),
        started_at=state.run.created_at,
        run_id=run.run.id,
        stage_index=staging.index,
    )
    assert (await send(shipyard, EndVerification(run_id=run.run.id, verdict="passed", actor=CAROL))).accepted
    production = await wait_for(
        shipyard,
        run.run.id,
        lambda s: any(x.environment == "production" and x.status is StageStatus.VERIFYING for x in s.stages),
    )
    decisions: list[Any] = []
    ended: list[tuple[str, AnalysisStatus, str]] = []

    async def handle(command: Any) -> Any:
        decisions.append(await send(shipyard, command))
        return decisions[-1]

    async def end(ident: str, status: AnalysisStatus, reason: str) -> bool:
        ended.append((ident, status, reason))
        return True

    await verdicts_to(handle, end)(judged, AnalysisStatus.FAILED, "smoke: exit 1 at 12:04:10, twice")
    assert [d.accepted for d in decisions] == [False]
    assert "verification of staging ended already" in decisions[0].reason
    assert [(i, s) for i, s, _ in ended] == [(judged.id, AnalysisStatus.CANCELED)]  # (judged no more)
    after = await shipyard.orchestrator.db(shipyard.service.find_run, run.run.id)
    assert after.run.status is RunStatus.VERIFYING
    assert [s.status for s in after.stages] == [s.status for s in production.stages]
    runs = await shipyard.orchestrator.db(shipyard.service.store.list_runs, "shop", 10)
    assert [s.run.kind for s in runs] == ["deploy"]  # no rollback started
