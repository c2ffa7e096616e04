"""Exports a run's trace over OTLP: finished stages, job attempts and gates become spans with
their recorded times, the run's root span when it ends, and each HTTP request a span of its own.

Runs outlive processes, so no span is held open for them: the follower reads the event log by
sequence number (as the Slack notifier does) and builds each span when its subject finishes,
with ids from ``core.tracing``, the same ids jobs were handed as ``TRACEPARENT``. Imported only
when ``bot.tracing.wanted()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.backend import Backend
from core import tracing
from core.commands import Command
from core.events import Event
from core.model import Gate, Job, RunState, Stage
from core.states import GATE_DONE, JOB_DONE, RUN_TERMINAL, STAGE_DONE, JobStatus

log = logging.getLogger(__name__)
SCOPE = InstrumentationScope("shipyard")
FAILED = {"failed", "timed_out", "lost", "canceled", "rejected", "expired"}
#: health probes arrive every few seconds and say nothing about runs
UNTRACED = frozenset({"/healthz", "/readyz"})
Timed = tuple[datetime | None, datetime | None]


def _ns(at: datetime | None, fallback: datetime) -> int:
    return int((at or fallback).timestamp() * 1e9)


def _context(trace_id: str, span_id: str) -> SpanContext:
    return SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=TraceFlags(1))


def _span(
    state: RunState, name: str, span_id: str, parent: str | None, times: Timed, at: datetime, **attrs: str
) -> ReadableSpan:
    run = state.run
    trace_id = tracing.trace_id(run.id)
    status = attrs.get("shipyard.status", "")
    start, end = _ns(times[0], at), _ns(times[1], at)
    return ReadableSpan(
        name,
        context=_context(trace_id, span_id),
        parent=_context(trace_id, parent) if parent else None,
        resource=Resource.create({"service.name": "shipyard"}),
        attributes={"shipyard.run.id": run.id, "shipyard.pipeline": run.pipeline, **attrs},
        status=Status(StatusCode.ERROR if status in FAILED else StatusCode.OK),
        start_time=min(start, end),
        end_time=end,
        instrumentation_scope=SCOPE,
    )


def spans_for(
    state: RunState, event: Event, started_at: dict[tuple[str, int], datetime] | None = None
) -> list[ReadableSpan]:
    """The span ``event`` finished, if it finished one (else none). ``started_at``: when job
    attempts started, for an attempt the run's state has moved past."""
    if event.to_status is None:
        return []
    run, at, root = state.run, event.at, tracing.run_span_id(state.run.id)
    if event.subject == "run" and event.to_status in RUN_TERMINAL:
        times = (run.started_at or run.created_at, run.finished_at)
        return [_span(state, f"run {run.ref}", root, None, times, at, **{"shipyard.status": run.status})]
    if event.subject == "stage" and event.to_status in STAGE_DONE:
        stage = next((s for s in state.stages if s.id == event.subject_id), None)
        return [] if stage is None else [_stage_span(state, stage, at)]
    if event.subject == "job" and event.to_status in JOB_DONE:
        job = state.job(event.subject_id)
        if job is None:
            return []
        attempt = int(str(event.data.get("attempt", job.attempt)))
        if attempt != job.attempt:  # retried since: this attempt's times are the events'
            started = (started_at or {}).get((job.id, attempt), at)
            job = replace(
                job, attempt=attempt, status=JobStatus(event.to_status), started_at=started, finished_at=at
            )
        return [] if job.started_at is None else [_job_span(state, job, at)]
    if event.subject == "gate" and event.to_status in GATE_DONE:
        gate = next((g for g in state.gates if g.id == event.subject_id), None)
        return [] if gate is None else [_gate_span(state, gate, at)]
    return []


def _stage_span(state: RunState, stage: Stage, at: datetime) -> ReadableSpan:
    attrs = {"shipyard.stage.id": stage.id, "shipyard.stage": stage.name, "shipyard.status": stage.status}
    times = (stage.queued_at or stage.started_at, stage.finished_at)
    root = tracing.run_span_id(state.run.id)
    return _span(state, f"stage {stage.name}", tracing.stage_span_id(stage.id), root, times, at, **attrs)


def _job_span(state: RunState, job: Job, at: datetime) -> ReadableSpan:
    stage = state.stages[job.stage_index]
    attrs = {
        "shipyard.stage.id": stage.id,
        "shipyard.job.id": job.id,
        "shipyard.job": job.name,
        "shipyard.attempt": str(job.attempt),
        "shipyard.status": job.status,
    }
    span_id = tracing.job_span_id(job.id, job.attempt)
    parent = tracing.stage_span_id(stage.id)
    return _span(
        state, f"job {stage.name}/{job.name}", span_id, parent, (job.started_at, job.finished_at), at, **attrs
    )


def _gate_span(state: RunState, gate: Gate, at: datetime) -> ReadableSpan:
    stage = state.stages[gate.stage_index]
    attrs = {"shipyard.stage.id": stage.id, "shipyard.gate.id": gate.id, "shipyard.status": gate.status}
    parent = tracing.stage_span_id(stage.id)
    times = (gate.opened_at, gate.decided_at)
    return _span(state, f"gate {gate.stage_name}", tracing.gate_span_id(gate.id), parent, times, at, **attrs)


class RunTraces:
    """Follows the event log from where it stood at start and hands finished spans to
    ``processor``. Each replica exports what it reads: run one exporter per deployment."""

    def __init__(self, backend: Backend, processor: SpanProcessor, interval_s: float = 1.0) -> None:
        self.backend = backend
        self.processor = processor
        self.interval_s = interval_s
        self.cursor = 0
        #: when job attempts started, as their events said (for attempts retried since)
        self.started_at: dict[tuple[str, int], datetime] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.cursor = await self.backend.read(self.backend.shipyard.store.last_event_seq)
        self._task = asyncio.create_task(self._loop(), name="shipyard-traces")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.step()
        self.processor.force_flush()

    async def step(self) -> int:
        """Export the spans of events after the cursor; how many spans."""
        events = await self.backend.read(self.backend.shipyard.store.events_after, self.cursor, 500)
        exported = 0
        states: dict[str, RunState | None] = {}
        for event in events:
            if event.subject == "job" and event.to_status == "running":
                key = (event.subject_id, int(str(event.data.get("attempt", 0))))
                self.started_at[key] = event.at
            if event.run_id and event.subject in ("run", "stage", "job", "gate") and event.to_status:
                if event.run_id not in states:
                    states[event.run_id] = await self.backend.read(self.backend.reads.run, event.run_id)
                state = states[event.run_id]
                for span in spans_for(state, event, self.started_at) if state is not None else []:
                    self.processor.on_end(span)
                    exported += 1
                if event.subject == "job" and event.to_status in JOB_DONE:
                    self.started_at.pop((event.subject_id, int(str(event.data.get("attempt", 0)))), None)
        if events:
            self.cursor = events[-1].seq
        return exported

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.warning("could not export run spans; trying again", exc_info=True)
            await asyncio.sleep(self.interval_s)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_middleware(tracer: trace.Tracer) -> Middleware:
    """A server span per request, a child of the caller's ``traceparent`` when it sends one."""
    propagator = TraceContextTextMapPropagator()

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNTRACED:
            return await handler(request)
        parent = propagator.extract(dict(request.headers))
        route = request.match_info.route.resource
        name = f"{request.method} {route.canonical if route is not None else request.path}"
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("url.path", request.path)
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            return response

    return traced


def command_span(tracer: trace.Tracer) -> Callable[[Command], AbstractContextManager[object]]:
    """A span per command handled, a child of its run's root span (a new run's own command,
    which names no run yet, starts a trace of its own)."""

    def span(command: Command) -> AbstractContextManager[object]:
        run_id = getattr(command, "run_id", "")
        parent = None
        if run_id:
            root = _context(tracing.trace_id(run_id), tracing.run_span_id(run_id))
            parent = trace.set_span_in_context(trace.NonRecordingSpan(root))
        attrs = {"shipyard.run.id": run_id} if run_id else {}
        return tracer.start_as_current_span(
            f"command {type(command).__name__}", context=parent, attributes=attrs
        )

    return span


def trace_slack(client: AsyncWebClient, tracer: trace.Tracer) -> None:
    """Each Web API call of ``client`` a client span, a child of the span current when it is made
    (the command or request that caused it)."""
    call = client.api_call

    async def traced(api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        with tracer.start_as_current_span(f"slack {api_method}", kind=SpanKind.CLIENT) as span:
            span.set_attribute("slack.method", api_method)
            reply = await call(api_method, **kwargs)
            span.set_attribute("http.response.status_code", reply.status_code)
            return reply

    client.api_call = traced  # type: ignore[method-assign]


def trace_slack_globally(client: AsyncWebClient) -> None:
    """``trace_slack`` with the process's tracer provider (``provider`` installs it), for the
    Slack client, which is built before the application knows its provider."""
    trace_slack(client, trace.get_tracer("shipyard"))


def processor() -> SpanProcessor:
    """Batches spans to the OTLP/HTTP endpoint the standard ``OTEL_EXPORTER_OTLP_*`` variables name."""
    return BatchSpanProcessor(OTLPSpanExporter())


def provider(span_processor: SpanProcessor) -> TracerProvider:
    made = TracerProvider(resource=Resource.create({"service.name": "shipyard"}))
    made.add_span_processor(span_processor)
    return made


def install(made: TracerProvider) -> None:
    """The process's provider: what ``trace_slack_globally`` finds."""
    trace.set_tracer_provider(made)


__all__: Sequence[str] = (
    "RunTraces",
    "command_span",
    "http_middleware",
    "install",
    "processor",
    "provider",
    "spans_for",
    "trace_slack",
    "trace_slack_globally",
)
