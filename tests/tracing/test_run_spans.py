"""A run's trace as the exporter builds it from the event log, caught by the SDK's in-memory
exporter: one root span for the run, a span per stage under it, a span per job attempt and the
gate under their stage, with the ids jobs were handed and the times the run recorded."""

from __future__ import annotations

from datetime import datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from slack_sdk.web.async_client import AsyncWebClient

from bot.api import GATEWAY
from core import tracing
from tests.api.conftest import StartApi
from tests.pipelines import API_PIPELINES, one_job

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bot.otel import RunTraces, command_span, provider, trace_slack


def _ns(at: str) -> int:
    return int(datetime.fromisoformat(at).timestamp() * 1e9)


async def test_a_gated_run_is_one_trace_of_stages_jobs_and_its_gate(db_url: str, start_api: StartApi) -> None:
    api = await start_api(db_url, API_PIPELINES)
    exporter = InMemorySpanExporter()
    gateway = api.client.app[GATEWAY]
    span_processor = SimpleSpanProcessor(exporter)
    traces = RunTraces(gateway, span_processor)
    gateway.traced = command_span(provider(span_processor).get_tracer("test"))
    run = await api.trigger("gated")
    await api.wait_status(run["id"], "waiting")
    assert (await api.post(f"/runs/{run['id']}/gates/production/approve", "approver")).status == 200
    done = await api.wait(run["id"])
    assert done["status"] == "succeeded"
    await traces.step()

    everything = exporter.get_finished_spans()
    commands = [s for s in everything if s.name.startswith("command ")]
    spans = [s for s in everything if s not in commands]
    approve = [s for s in commands if s.name == "command ApproveGate"]
    assert len(approve) == 1 and approve[0].parent is not None
    assert approve[0].context is not None
    assert approve[0].context.trace_id == int(tracing.trace_id(run["id"]), 16)
    assert approve[0].parent.span_id == int(tracing.run_span_id(run["id"]), 16)
    trace_id = int(tracing.trace_id(run["id"]), 16)
    assert {s.context.trace_id for s in spans if s.context} == {trace_id}
    by_id: dict[int, ReadableSpan] = {s.context.span_id: s for s in spans if s.context}
    assert len(by_id) == len(spans)  # no span exported twice

    root = by_id[int(tracing.run_span_id(run["id"]), 16)]
    assert root.parent is None and root.name == "run gated#1"
    assert root.attributes is not None and root.attributes["shipyard.status"] == "succeeded"
    for stage in done["stages"]:
        span = by_id[int(tracing.stage_span_id(stage["id"]), 16)]
        assert span.name == f"stage {stage['name']}"
        assert span.parent is not None and span.parent.span_id == root.context.span_id  # type: ignore[union-attr]
        assert span.attributes is not None and span.attributes["shipyard.stage.id"] == stage["id"]
        for job in stage["jobs"]:
            job_span = by_id[int(tracing.job_span_id(job["id"], 1), 16)]
            assert job_span.name == f"job {stage['name']}/{job['name']}"
            assert job_span.parent is not None and job_span.parent.span_id == span.context.span_id  # type: ignore[union-attr]
            assert job_span.attributes is not None and job_span.attributes["shipyard.job.id"] == job["id"]
            assert job_span.start_time == _ns(job["started_at"])
            assert job_span.end_time == _ns(job["finished_at"])
            assert span.start_time is not None and job_span.start_time >= span.start_time
    gates = [s for s in spans if s.name == "gate production"]
    assert len(gates) == 1 and gates[0].attributes is not None
    assert gates[0].attributes["shipyard.status"] == "approved"
    assert root.start_time is not None and root.end_time is not None
    assert all(root.start_time <= (s.start_time or 0) and (s.end_time or 0) <= root.end_time for s in spans)
    assert len(spans) == 1 + len(done["stages"]) + sum(len(s["jobs"]) for s in done["stages"]) + 1


async def test_a_retried_job_is_a_span_per_attempt(db_url: str, start_api: StartApi) -> None:
    flaky = one_job("flaky", """'test "$SHIPYARD_ATTEMPT" != 1'""", retries=1)
    api = await start_api(db_url, {**API_PIPELINES, "flaky": flaky})
    exporter = InMemorySpanExporter()
    traces = RunTraces(api.client.app[GATEWAY], SimpleSpanProcessor(exporter))
    run = await api.trigger("flaky")
    done = await api.wait(run["id"])
    assert done["status"] == "succeeded"
    await traces.step()

    job_id = done["stages"][0]["jobs"][0]["id"]
    jobs = {s.context.span_id: s for s in exporter.get_finished_spans() if s.name == "job s/j" and s.context}
    first, second = (jobs[int(tracing.job_span_id(job_id, attempt), 16)] for attempt in (1, 2))
    assert first.attributes is not None and first.attributes["shipyard.status"] == "failed"
    assert second.attributes is not None and second.attributes["shipyard.status"] == "succeeded"
    assert first.parent == second.parent  # siblings under the stage
    assert (first.end_time or 0) <= (second.start_time or 0) and len(jobs) == 2
    assert traces.started_at == {}  # forgotten once their attempts ended


async def test_a_slack_call_is_a_child_span_of_what_made_it() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "channel": "C1", "ts": "1.1"})

    app = web.Application()
    app.router.add_post("/api/chat.postMessage", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        exporter = InMemorySpanExporter()
        tracer = provider(SimpleSpanProcessor(exporter)).get_tracer("test")
        client = AsyncWebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{server.port}/api/")
        trace_slack(client, tracer)
        with tracer.start_as_current_span("command ApproveGate") as parent:
            reply = await client.chat_postMessage(channel="C1", text="hello")
        assert reply["ok"]
    finally:
        await server.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    call = spans["slack chat.postMessage"]
    assert call.parent is not None and call.parent.span_id == parent.get_span_context().span_id
    assert call.attributes is not None and call.attributes["http.response.status_code"] == 200
