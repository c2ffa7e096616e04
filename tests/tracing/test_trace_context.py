"""The W3C trace context a run hands on: a job's ``TRACEPARENT`` names the run's trace and the
job attempt's own span, and webhook deliveries carry the run's ``traceparent``, so a team's own
scripts and receivers join the run's trace, with or without OpenTelemetry installed."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from core import tracing
from tests.api.conftest import Api, StartApi
from tests.pipelines import WEBHOOK_PIPELINES
from tests.webhooks.conftest import Receiver, drain, settle, subscribe

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")
ECHO = """
    name: echo
    stages:
      - name: build
        jobs: [{name: show, run: ["sh", "-c", "echo tp=$TRACEPARENT"]}]
"""


def test_ids_are_stable_distinct_and_well_formed() -> None:
    assert tracing.trace_id("r1") == tracing.trace_id("r1") != tracing.trace_id("r2")
    assert len(tracing.trace_id("r1")) == 32 and len(tracing.job_span_id("j", 1)) == 16
    spans = {
        tracing.run_span_id("x"),
        tracing.stage_span_id("x"),
        tracing.gate_span_id("x"),
        tracing.job_span_id("x", 1),
        tracing.job_span_id("x", 2),  # a retry is its own span
    }
    assert len(spans) == 5
    header = tracing.job_traceparent("r1", "j", 1)
    match = TRACEPARENT.match(header)
    assert match is not None and match.groups() == (tracing.trace_id("r1"), tracing.job_span_id("j", 1))


async def test_a_job_sees_its_traceparent_and_a_webhook_receives_the_runs(
    db_url: str, start_api: StartApi, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    pipelines = {**WEBHOOK_PIPELINES, "echo": ECHO}
    api: Api = await start_api(db_url, pipelines, webhook_allow=["127.0.0.1"], webhook_deliver=False)
    receiver = await receivers()
    await subscribe(api, receiver, ["run.started", "run.finished"])
    run = await api.trigger("echo")
    done = await settle(api, run["id"])
    await drain(api)

    job = done["stages"][0]["jobs"][0]
    log = await api.get(f"/runs/{run['id']}/jobs/{job['id']}/log")
    assert log.status == 200, log.text
    seen = TRACEPARENT.match(log.text.strip().removeprefix("tp="))
    assert seen is not None, log.text
    assert seen.group(1) == tracing.trace_id(run["id"])
    assert seen.group(2) == tracing.job_span_id(job["id"], 1)  # its first attempt

    assert [r.type for r in receiver.delivered] == ["run.started", "run.finished"]
    for received in receiver.delivered:
        assert received.headers["traceparent"] == tracing.run_traceparent(run["id"])
