"""A canary's decisions, command by command, with no router driver running: the test plays the
driver and the analysis loop. Each command the rollout cannot take now is refused saying why
(a stale router report, a pause not over, an analysis it no longer runs, a promote while the
router is being set); an inconclusive analysis waits for a person; a promote job that fails
aborts the rollout; a router that then fails ends the run saying where traffic was left."""

from __future__ import annotations

from typing import Any

from core.commands import (
    AbortRollout,
    AdvanceRollout,
    ConfirmWeights,
    EndStepAnalysis,
    PromoteRollout,
)
from core.model import RunState
from core.rollout import Rollout
from core.states import RolloutStatus, RunStatus
from tests.engine.conftest import StartShipyard, send, trigger, wait_for
from tests.helpers import ALICE, CAROL
from tests.pipelines import canary

PIPELINE = canary(
    "shop",
    [
        "set_weight: 10",
        "pause: {duration: 30s}",
        "set_weight: 50",
        "analysis: {checks: [smoke], duration: 1m}",
        "set_weight: 100",
    ],
    promote='"echo broken >&2; exit 3"',
    abort=None,
    job="deploy",
)

ENVIRONMENTS: dict[str, Any] = {
    "production": {
        "routers": {"web": {"command": ["true"], "pools": {"stable": ["a"], "canary": ["b"]}}},
        "checks": {"smoke": {"command": ["true"], "interval": "1s"}},
    }
}


def rollout(state: RunState) -> Rollout:
    found = state.stages[0].rollout
    assert found is not None
    return found


def at(step: int, status: RolloutStatus = RolloutStatus.PROGRESSING) -> Any:
    return lambda s: (
        s.stages[0].rollout is not None
        and (s.stages[0].rollout.step, s.stages[0].rollout.status)
        == (
            step,
            status,
        )
    )


async def test_a_canary_takes_each_command_only_when_it_may_and_says_why_not(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": PIPELINE}, environments=ENVIRONMENTS)
    run_id = (await trigger(shipyard, "shop")).run.id
    state = await wait_for(shipyard, run_id, at(0))
    assert rollout(state).desired == {"stable": 90, "canary": 10} and rollout(state).applied is None

    refused = await send(shipyard, AdvanceRollout(run_id=run_id))
    assert not refused.accepted and "not in a timed pause" in refused.reason
    early = await send(shipyard, PromoteRollout(run_id=run_id, actor=CAROL))
    assert not early.accepted and "the router is being set to stable 90 / canary 10" in early.reason
    stale = await send(shipyard, ConfirmWeights(run_id=run_id, desired={"stable": 50, "canary": 50}))
    assert not stale.accepted and "stale router report" in stale.reason

    ten = {"stable": 90, "canary": 10}
    assert (await send(shipyard, ConfirmWeights(run_id=run_id, desired=ten, applied=ten))).accepted
    state = await wait_for(shipyard, run_id, at(1))
    assert rollout(state).step_until is not None
    waiting = await send(shipyard, AdvanceRollout(run_id=run_id))
    assert not waiting.accepted and "'s pause lasts until" in waiting.reason
    other = await send(shipyard, EndStepAnalysis(run_id=run_id, analysis_id="nope", verdict="passed"))
    assert not other.accepted and "no longer measures nope" in other.reason

    assert (await send(shipyard, PromoteRollout(run_id=run_id, actor=CAROL))).accepted  # past the pause
    half = {"stable": 50, "canary": 50}
    assert (await send(shipyard, ConfirmWeights(run_id=run_id, desired=half, applied=half))).accepted
    state = await wait_for(shipyard, run_id, at(3))
    measuring = rollout(state).analysis
    assert measuring is not None
    unsure = await send(
        shipyard,
        EndStepAnalysis(
            run_id=run_id, analysis_id=measuring, verdict="inconclusive", reason="smoke: no data"
        ),
    )
    assert unsure.accepted
    state = await wait_for(shipyard, run_id, at(3, RolloutStatus.WAITING))
    assert state.run.status is RunStatus.WAITING
    assert state.run.reason == (
        "analysis at step 4 (canary at 50%) inconclusive: smoke: no data; promote or abort"
    )
    own = await send(shipyard, PromoteRollout(run_id=run_id, actor=ALICE))
    assert not own.accepted and "separation of duties" in own.reason  # (alice triggered it)
    assert (await send(shipyard, PromoteRollout(run_id=run_id, actor=CAROL))).accepted

    full = {"stable": 0, "canary": 100}
    assert (await send(shipyard, ConfirmWeights(run_id=run_id, desired=full, applied=full))).accepted
    # the promote job fails: the rollout aborts, all traffic is to go back to stable
    state = await wait_for(
        shipyard, run_id, lambda s: rollout(s).status is RolloutStatus.ABORTING, timeout=30
    )
    assert rollout(state).desired == {"stable": 100, "canary": 0}
    assert rollout(state).reason.startswith("promote job production/promote exited with 3")
    again = await send(shipyard, AbortRollout(run_id=run_id, actor=CAROL))
    assert not again.accepted and "rollout is aborting: there is nothing to abort" in again.reason
    late = await send(shipyard, PromoteRollout(run_id=run_id, actor=CAROL))
    assert not late.accepted and "there is nothing to promote" in late.reason

    broken = await send(
        shipyard,
        ConfirmWeights(run_id=run_id, desired={"stable": 100, "canary": 0}, error="connection refused"),
    )
    assert broken.accepted
    done = await wait_for(shipyard, run_id)
    assert done.run.status is RunStatus.FAILED and rollout(done).status is RolloutStatus.FAILED
    assert done.run.reason.endswith(
        "; then router web failed: connection refused; "
        "traffic stays at stable 0 / canary 100 (last confirmed)"
    )


async def test_a_pipeline_file_whose_rollout_does_not_fit_the_configuration_is_not_loaded(
    db_url: str, start_shipyard: StartShipyard
) -> None:
    shipyard = await start_shipyard(db_url, {"shop": PIPELINE}, environments=ENVIRONMENTS)
    (shipyard.catalog.directory / "bad.yml").write_text(
        PIPELINE.replace("name: shop", "name: bad").replace("router: web", "router: nope")
    )
    report = await shipyard.orchestrator.db(shipyard.catalog.refresh)
    assert report.added == []
    assert [p.split(": ", 1)[1] for p in report.problems] == [
        "stages.0.strategy.canary.router: production has no router 'nope' (routers: web)"
    ]
