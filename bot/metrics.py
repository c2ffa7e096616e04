"""Every Prometheus metric Shipyard exports, defined here and nowhere else (docs/operations.md
lists them).

Counters and histograms are kept as things happen, in this process: the store tells
``on_commit`` of each committed transaction's events (``SqlStore.observers``: the one place
every transition of every run passes), the orchestrator tells ``group_committed`` of each group
commit, and the Slack client, notifier, webhook sender and scheduler call the small functions
below. Nothing is computed by reading history, so a scrape costs the same with a million runs in
the database as with none. Each replica exports what it did; the documented queries sum them.

Gauges of what is going on right now (queues, deployments, jobs per runner) are global state:
``bot.metrics_http.Exporter`` reads them at scrape time with two indexed counts
(``storage.gauges``). The pure core never sees any of this (an import-linter contract).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

from core.engine import LEASE_EXPIRED
from core.events import NO_RUN, Event
from core.model import RunState
from core.states import RUN_TERMINAL, GateStatus, JobStatus, StageStatus

# no ``*_created`` series: Prometheus' text format gives them no meaning, and they double a scrape
disable_created_metrics()  # type: ignore[no-untyped-call]

#: the process's own metrics; the scrape-time gauges live in each server's ``Exporter``
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

#: seconds: a job's few hundred milliseconds up to a long rollout
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
#: seconds a gate waits for people: minutes to days
GATE_BUCKETS = (1, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400)
#: seconds something lags behind what it follows (an edit, a delivery, a schedule)
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# -- runs ----------------------------------------------------------------------------------------
RUNS_STARTED = Counter(
    "shipyard_runs_started", "Runs created (triggered, scheduled, retried)", ["pipeline"], registry=REGISTRY
)
RUNS_FINISHED = Counter(
    "shipyard_runs_finished", "Runs that ended, by how", ["pipeline", "status"], registry=REGISTRY
)
RUN_DURATION = Histogram(
    "shipyard_run_duration_seconds",
    "From a run's creation to its end (queueing and gates included)",
    ["pipeline", "status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "shipyard_stage_duration_seconds",
    "From a stage's start to its end",
    ["pipeline", "stage", "status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "shipyard_job_duration_seconds",
    "From a job attempt's claim by a runner to its end",
    ["pipeline", "status"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
GATE_WAIT = Histogram(
    "shipyard_gate_wait_seconds",
    "From a gate's opening to its decision",
    ["pipeline", "outcome"],
    buckets=GATE_BUCKETS,
    registry=REGISTRY,
)
LEASES_EXPIRED = Counter(
    "shipyard_job_leases_expired", "Job attempts declared lost because their lease ran out", registry=REGISTRY
)

# -- the engine's commits ------------------------------------------------------------------------
COMMIT_DURATION = Histogram(
    "shipyard_commit_duration_seconds",
    "One group commit: deciding and writing its requests in one transaction",
    buckets=COMMIT_BUCKETS,
    registry=REGISTRY,
)
GROUP_COMMIT_SIZE = Histogram(
    "shipyard_group_commit_requests",
    "Requests (commands and runners' claims) applied in one group commit",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)

# -- Slack ---------------------------------------------------------------------------------------
SLACK_CALLS = Counter(
    "shipyard_slack_api_calls",
    "Slack Web API requests (each retry counts), by method and outcome: ok, error (Slack said "
    "ok=false), rate_limited (HTTP 429), http_error, unreachable",
    ["method", "outcome"],
    registry=REGISTRY,
)
SLACK_EDIT_LAG = Histogram(
    "shipyard_slack_message_edit_lag_seconds",
    "From the first change a run's Slack message did not show yet to the edit that shows it",
    buckets=LAG_BUCKETS,
    registry=REGISTRY,
)

# -- webhooks and schedules ----------------------------------------------------------------------
WEBHOOK_ATTEMPTS = Counter(
    "shipyard_webhook_delivery_attempts",
    "Outgoing webhook delivery attempts, by outcome: delivered, http_error, unreachable",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_LAG = Histogram(
    "shipyard_webhook_delivery_lag_seconds",
    "From a delivery's entry in the outbox to the receiver's 2xx (retries included)",
    buckets=LAG_BUCKETS,
    registry=REGISTRY,
)
SCHEDULE_LATENESS = Histogram(
    "shipyard_schedule_lateness_seconds",
    "From a schedule's fire time to the creation of its run",
    buckets=LAG_BUCKETS,
    registry=REGISTRY,
)
SCHEDULE_MISSED = Counter(
    "shipyard_schedule_missed_fires",
    "Schedule occurrences skipped because they were found past their grace",
    registry=REGISTRY,
)

BUILD = Info("shipyard_build", "The running Shipyard", registry=REGISTRY)


def _version() -> str:
    try:
        return version("shipyard")
    except PackageNotFoundError:  # (run from a checkout that was never installed)
        return "unknown"


BUILD.info({"version": _version(), "python": platform.python_version()})


# -- what the engine committed -------------------------------------------------------------------
def on_commit(events: Sequence[Event], runs: Mapping[str, RunState]) -> None:
    """A committed transaction's events (``SqlStore.observers``); ``runs``: the runs it wrote,
    as they now stand."""
    for event in events:
        if event.run_id == NO_RUN:
            continue
        count = _COUNTERS.get(event.subject)
        if count is not None:
            count(event, runs.get(event.run_id))


def _seconds(end: datetime, start: datetime | None) -> float | None:
    return None if start is None else max(0.0, (end - start).total_seconds())


def _run(event: Event, state: RunState | None) -> None:
    if event.name == "run.created":
        RUNS_STARTED.labels(str(event.data.get("pipeline", ""))).inc()
        return
    if state is None or event.to_status not in RUN_TERMINAL:
        return
    pipeline, status = state.run.pipeline, str(event.to_status)
    RUNS_FINISHED.labels(pipeline, status).inc()
    if (took := _seconds(event.at, state.run.created_at)) is not None:
        RUN_DURATION.labels(pipeline, status).observe(took)


_STAGE_ENDS = frozenset(
    {StageStatus.SUCCEEDED, StageStatus.PARTIAL, StageStatus.FAILED, StageStatus.CANCELED}
)


def _stage(event: Event, state: RunState | None) -> None:
    if state is None or event.to_status not in _STAGE_ENDS:
        return
    stage = next((s for s in state.stages if s.id == event.subject_id), None)
    if stage is not None and (took := _seconds(event.at, stage.started_at)) is not None:
        STAGE_DURATION.labels(state.run.pipeline, stage.name, str(event.to_status)).observe(took)


_JOB_ENDS = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.LOST, JobStatus.CANCELED}
)


def _job(event: Event, state: RunState | None) -> None:
    if event.to_status == JobStatus.LOST and str(event.data.get("reason", "")).endswith(LEASE_EXPIRED):
        LEASES_EXPIRED.inc()
    if state is None or event.to_status not in _JOB_ENDS or event.from_status != JobStatus.RUNNING:
        return
    job = state.job(event.subject_id)
    if job is not None and (took := _seconds(event.at, job.started_at)) is not None:
        JOB_DURATION.labels(state.run.pipeline, str(event.to_status)).observe(took)


_GATE_ENDS = frozenset({GateStatus.APPROVED, GateStatus.REJECTED, GateStatus.TIMED_OUT, GateStatus.CANCELED})


def _gate(event: Event, state: RunState | None) -> None:
    if state is None or event.from_status != GateStatus.OPEN or event.to_status not in _GATE_ENDS:
        return
    gate = next((g for g in state.gates if g.id == event.subject_id), None)
    if gate is not None and (took := _seconds(event.at, gate.opened_at)) is not None:
        GATE_WAIT.labels(state.run.pipeline, str(event.to_status)).observe(took)


_COUNTERS = {"run": _run, "stage": _stage, "job": _job, "gate": _gate}


def group_committed(requests: int, seconds: float) -> None:
    """One group commit (``Orchestrator.on_commit``)."""
    GROUP_COMMIT_SIZE.observe(requests)
    COMMIT_DURATION.observe(seconds)


# -- the adapters --------------------------------------------------------------------------------
def slack_message_edited(lag_s: float) -> None:
    SLACK_EDIT_LAG.observe(max(0.0, lag_s))


def webhook_attempted(outcome: str, lag_s: float | None = None) -> None:
    WEBHOOK_ATTEMPTS.labels(outcome).inc()
    if lag_s is not None:
        WEBHOOK_LAG.observe(max(0.0, lag_s))


def schedule_fired(lateness_s: float | None, missed: int = 0) -> None:
    if lateness_s is not None:
        SCHEDULE_LATENESS.observe(max(0.0, lateness_s))
    if missed:
        SCHEDULE_MISSED.inc(missed)


class SlackCalls(AsyncRetryHandler):
    """Counts every Web API request a client sends (``SLACK_CALLS``); put first among the
    client's retry handlers, which slack_sdk asks after every response and every failure. It
    never retries anything itself: the handlers after it decide."""

    def __init__(self) -> None:
        super().__init__(max_retry_count=0)

    async def can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
        **_: Any,
    ) -> bool:
        method = urlsplit(request.url).path.rsplit("/", 1)[-1] or "unknown"
        SLACK_CALLS.labels(method, _outcome(response, error)).inc()
        return False


def _outcome(response: HttpResponse | None, error: Exception | None) -> str:
    if error is not None or response is None:
        return "unreachable"
    if response.status_code == 429:
        return "rate_limited"
    if response.status_code >= 300:
        return "http_error"
    body = response.body
    return "ok" if not isinstance(body, dict) or body.get("ok", True) else "error"
