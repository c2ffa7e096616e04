"""Why can't I deploy? (``core.blockers``): every reason an environment (and a pipeline) would
make a deployment wait or be refused, and what a run waits for, each with what clears it, in
the words Slack's ``/deploy why`` and ``GET /environments/{env}/blockers`` show."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.admission import EnvironmentView
from core.blockers import Blocker, Facts, blockers, run_blockers
from core.environments import EnvironmentPolicy
from core.model import Approval, Gate, Job, Run, RunState, Stage
from core.states import GateStatus, RunStatus, StageStatus
from tests.helpers import pipeline
from tests.pipelines import one_job

T0 = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def policy(**fields: Any) -> EnvironmentPolicy:
    return EnvironmentPolicy.model_validate(fields)


def facts(view: EnvironmentView | None = None, **fields: Any) -> Facts:
    return Facts(
        environment="production",
        view=view or EnvironmentView("production"),
        policy=fields.pop("policy", policy()),
        **fields,
    )


def kinds(found: list[Blocker]) -> list[str]:
    return [b.kind for b in found]


# -- an environment --------------------------------------------------------------------------


def test_an_environment_with_nothing_in_the_way_has_no_blockers() -> None:
    assert blockers(facts()) == []
    assert blockers(facts(pipeline="web")) == []  # any pipeline, any branch, nothing to promote


def test_everything_that_holds_an_environment_is_listed_at_once_in_a_fixed_order() -> None:
    view = EnvironmentView(
        "production",
        busy_with="web#41",
        lock="locked by alice since 09:00: db migration",
        freeze="frozen until Mon 30 Nov 08:00 UTC (weekend)",
        unhealthy="production is unhealthy since 09:12: smoke: exit 1 (2 in a row)",
    )
    found = blockers(facts(view, queued=2, freeze_until=datetime(2026, 11, 30, 8, 0, tzinfo=UTC)))
    assert kinds(found) == ["lock", "freeze", "health", "busy", "queue"]
    lock, freeze, health, busy, queue = found
    assert lock == Blocker(
        "lock",
        "locked by alice since 09:00: db migration",
        "its holder or an admin unlocks it (`/deploy unlock production`)",
    )
    assert freeze.clears == "at Mon 30 Nov 08:00 UTC (or an admin's --break-glass)"
    assert health.what == view.unhealthy
    assert "`/deploy rollback production`" in health.clears and "--break-glass" in health.clears
    assert busy == Blocker("busy", "web#41 is deploying to production", "when it finishes")
    assert queue == Blocker(
        "queue", "2 run(s) wait in production's queue", "after they deploy (first come, first served)"
    )


def test_a_freeze_that_fails_runs_says_so_and_one_without_an_end_says_when_the_window_ends() -> None:
    frozen = EnvironmentView("production", freeze="frozen (holidays)")
    (waits,) = blockers(facts(frozen))
    assert waits.clears == "at the window ends (or an admin's --break-glass)"
    (fails,) = blockers(
        facts(frozen, policy=policy(on_freeze="fail"), freeze_until=datetime(2026, 12, 27, tzinfo=UTC))
    )
    assert fails.clears == (
        "at Sun 27 Dec 00:00 UTC; runs meeting it fail meanwhile (or an admin's --break-glass)"
    )


def test_required_approvals_name_how_many_and_from_whom() -> None:
    rule = {"from": ["release-managers", "role:approver"], "count": 2}
    (approvals,) = blockers(facts(policy=policy(approvals=rule)))
    assert approvals == Blocker(
        "approvals",
        "needs 2 approval(s) from release-managers, role:approver",
        "when they approve the run's gate",
    )


def test_pipeline_rules_apply_only_when_a_pipeline_is_asked_about() -> None:
    strict = policy(pipelines=["api-*"], branches=["main", "release/*"])
    assert blockers(facts(policy=strict)) == []  # the environment alone: no pipeline to judge
    found = blockers(facts(policy=strict, pipeline="web", archived=True))
    assert found == [
        Blocker("archived", "pipeline web is archived", "when an admin restores it"),
        Blocker(
            "pipeline",
            "pipeline web may not deploy to production (allowed pipelines: api-*)",
            "only an admin's configuration change",
        ),
        Blocker(
            "branch",
            "only branches main, release/* may deploy to production",
            "deploy from one of them",
        ),
    ]
    # an allowed pipeline is not refused; the branch rule still says where to deploy from
    assert kinds(blockers(facts(policy=strict, pipeline="api-orders"))) == ["branch"]


def test_an_artifact_not_yet_through_the_previous_environment_says_how_to_promote_it() -> None:
    (promotion,) = blockers(facts(pipeline="web", unpromoted=("web@1.4.2", "staging")))
    assert promotion == Blocker(
        "promotion",
        "web@1.4.2 has not been deployed successfully to staging",
        "when it succeeds in staging (`/deploy promote web@1.4.2 to staging`)",
    )
    # without a pipeline there is no artifact to speak of
    assert blockers(facts(unpromoted=("web@1.4.2", "staging"))) == []


# -- a run -----------------------------------------------------------------------------------

DEFINITION = pipeline(one_job("web", environment="production"))


def state(
    status: RunStatus = RunStatus.RUNNING,
    *,
    reason: str = "",
    stage: StageStatus = StageStatus.RUNNING,
    gates: tuple[Gate, ...] = (),
    labels: tuple[str, ...] = (),
) -> RunState:
    run = Run(
        id="r1",
        number=7,
        pipeline="web",
        pipeline_version=1,
        version_id="v1",
        status=status,
        parameters={},
        source_revision=None,
        triggered_by="alice",
        trigger_channel="cli",
        reason=reason,
        created_at=T0,
    )
    stages = (Stage(id="s0", run_id="r1", index=0, name="s", environment="production", status=stage),)
    jobs = (Job(id="j0", run_id="r1", stage_index=0, index=0, name="j", labels=labels),)
    return RunState(run, stages, jobs, gates, DEFINITION)


def gate(kind: Any = "manual", status: GateStatus = GateStatus.OPEN, **fields: Any) -> Gate:
    return Gate(id="g0", run_id="r1", stage_index=0, stage_name="s", kind=kind, status=status, **fields)


HELD = [
    Blocker("lock", "locked by alice", "unlock"),
    Blocker("approvals", "needs 2 approval(s)", "approve"),
    Blocker("pipeline", "not allowed", "config"),
    Blocker("queue", "1 run(s) wait", "later"),
]


def test_a_running_run_with_nothing_open_waits_for_nothing() -> None:
    assert run_blockers(state(), HELD) == []  # (not queued: what holds the environment is not its concern)


def test_a_paused_run_says_who_paused_it_why_and_how_to_resume() -> None:
    (paused,) = run_blockers(state(RunStatus.PAUSED, reason="paused by bob: checking the dashboards"))
    assert paused == Blocker(
        "paused",
        "web#7 is paused: paused by bob: checking the dashboards",
        "when someone resumes it (`/deploy resume web#7`)",
    )
    (bare,) = run_blockers(state(RunStatus.PAUSED))
    assert bare.what == "web#7 is paused"


def test_an_open_manual_gate_says_who_may_approve_and_how_many_have() -> None:
    named = gate(
        approvers=("U024BE7LH", "release-managers"), min_approvals=2, approvals=(Approval("carol", T0),)
    )
    (approvals,) = run_blockers(state(RunStatus.WAITING, gates=(named,)))
    assert approvals == Blocker(
        "approvals",
        "gate s needs 2 approval(s) from U024BE7LH, release-managers (1 so far)",
        "when they approve it (`/deploy approve web#7`)",
    )
    (anyone,) = run_blockers(state(RunStatus.WAITING, gates=(gate(),)))
    assert anyone.what == "gate s needs 1 approval(s) from anyone with the approver role (0 so far)"


def test_an_automated_or_external_gate_waits_for_its_check_and_a_decided_gate_for_nothing() -> None:
    for kind in ("automated", "external"):
        (check,) = run_blockers(state(RunStatus.WAITING, gates=(gate(kind),)))
        assert check == Blocker("check", f"gate s waits for its {kind} check", "when it passes")
    decided = tuple(gate(status=s) for s in (GateStatus.APPROVED, GateStatus.PENDING, GateStatus.REJECTED))
    assert run_blockers(state(gates=decided)) == []


def test_a_queued_run_waits_for_what_holds_its_environment_but_not_for_its_rules() -> None:
    """A queued run has passed admission: approvals and pipeline rules no longer hold it, only
    the lock, freeze, health, the deployment under way and the runs before it."""
    for queued in (state(RunStatus.QUEUED, stage=StageStatus.PENDING), state(stage=StageStatus.QUEUED)):
        assert kinds(run_blockers(queued, HELD)) == ["lock", "queue"]


def test_a_job_no_online_runner_can_take_says_how_to_start_one() -> None:
    waits = {"j0": "waiting for a runner with labels gpu, linux (none online)"}
    (labelled,) = run_blockers(state(labels=("gpu", "linux")), waits=waits)
    assert labelled == Blocker(
        "runner",
        "s/j is waiting for a runner with labels gpu, linux (none online)",
        "when one comes online (start one: `shipyard runner --labels gpu,linux`; docs/runners.md)",
    )
    (plain,) = run_blockers(state(), waits={"j0": "waiting for a runner (none online)"})
    assert "start one: `shipyard runner`;" in plain.clears
    assert run_blockers(state(), waits={"other-job": "waiting"}) == []  # only this run's jobs
