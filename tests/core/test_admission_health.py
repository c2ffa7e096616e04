"""Admission and an unhealthy environment that blocks: deployments wait, a rollback and break
glass go on, even past runs queued ahead that wait for the health."""

from __future__ import annotations

from datetime import UTC, datetime

from core.admission import EnvironmentView, admit
from core.model import Run
from core.states import RunStatus

SICK = "production is unhealthy since 12:03: error-rate = 0.2 > 0.05"


def _run(kind: str = "deploy", break_glass: str | None = None) -> Run:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return Run(
        id="r2", number=2, pipeline="web", pipeline_version=1, version_id="v", status=RunStatus.QUEUED,
        parameters={}, source_revision=None, triggered_by="alice", trigger_channel="api",
        created_at=at, kind=kind, break_glass=break_glass,
    )  # fmt: skip


def test_an_unhealthy_environment_holds_a_deployment_back() -> None:
    view = EnvironmentView("production", unhealthy=SICK)
    assert admit(view, _run()).outcome == "wait"
    assert admit(view, _run()).reason == f"waiting for production: {SICK}"


def test_a_rollback_and_break_glass_go_on_past_those_waiting_for_the_health() -> None:
    view = EnvironmentView("production", unhealthy=SICK, queue_head="r1", queue_head_ref="web#1")
    assert admit(view, _run("rollback")).outcome == "admit"
    assert admit(view, _run(break_glass="checkout is down")).outcome == "admit"
    healthy = EnvironmentView("production", queue_head="r1", queue_head_ref="web#1")
    assert admit(healthy, _run("rollback")).reason == "waiting for production: web#1 is ahead in the queue"


def test_a_lock_still_holds_a_rollback_back() -> None:
    view = EnvironmentView("production", unhealthy=SICK, lock="locked by bob since 12:00: migration")
    assert admit(view, _run("rollback")).outcome == "wait"
