"""``GET /metrics``: counters kept as runs move (real runs on SQLite and PostgreSQL), the gauges
of what is going on now, and who may read it (a bearer token on the main port, or a port of its
own)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bot.metrics_http import EXPORTER
from tests.api.conftest import Api, Reply, StartApi, assert_problem
from tests.e2e.server import free_port
from tests.metrics.scrape import TOKEN, Scrape, fetch
from tests.pipelines import gated, one_deploy, one_job

PIPELINES = {
    "ok": one_job("ok", stage="only", job="ok"),
    "bad": one_job("bad", '["sh", "-c", "exit 1"]', stage="build", job="fail"),
    "held": one_deploy("held", '["sleep", "30"]'),
    "ask": gated(name="ask"),
}


async def scrape(api: Api) -> Scrape:
    return await fetch(api.client)


async def until(api: Api, check: Callable[[Scrape], bool], timeout: float = 10.0) -> Scrape:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen = await scrape(api)
        if check(seen):
            return seen
        assert asyncio.get_running_loop().time() < deadline, "the metrics never got there"
        await asyncio.sleep(0.05)


async def test_runs_stages_jobs_and_gates_are_counted_as_they_happen(
    db_url: str, start_api: StartApi
) -> None:
    api = await start_api(db_url, PIPELINES, metrics_token=TOKEN)
    before = await scrape(api)

    ok = await api.trigger("ok")
    bad = await api.trigger("bad")
    ask = await api.trigger("ask")
    assert (await api.wait(ok["id"]))["status"] == "succeeded"
    assert (await api.wait(bad["id"]))["status"] == "failed"
    await api.wait_status(ask["id"], "waiting")
    await asyncio.sleep(0.3)  # (the gate waits a moment: its wait is measured)
    reply = await api.post(f"/runs/{ask['id']}/gates/production/approve", "approver")
    assert reply.status == 200, reply.text
    assert (await api.wait(ask["id"]))["status"] == "succeeded"

    after = await scrape(api)
    for pipeline in ("ok", "bad", "ask"):
        assert after.delta(before, "shipyard_runs_started_total", pipeline=pipeline) == 1
    assert after.delta(before, "shipyard_runs_finished_total", pipeline="ok", status="succeeded") == 1
    assert after.delta(before, "shipyard_runs_finished_total", pipeline="bad", status="failed") == 1
    assert after.delta(before, "shipyard_runs_finished_total", pipeline="ask", status="succeeded") == 1
    assert after.delta(before, "shipyard_runs_finished_total", pipeline="ok", status="failed") == 0
    ran = {"pipeline": "ok", "status": "succeeded"}
    assert after.delta(before, "shipyard_run_duration_seconds_count", **ran) == 1
    # (a run of ``true`` is over well within the 2.5 s bucket)
    assert after.delta(before, "shipyard_run_duration_seconds_bucket", **ran, le="2.5") == 1
    failed = {"pipeline": "bad", "stage": "build", "status": "failed"}
    assert after.delta(before, "shipyard_stage_duration_seconds_count", **failed) == 1
    shipped = {"pipeline": "ask", "stage": "production", "status": "succeeded"}
    assert after.delta(before, "shipyard_stage_duration_seconds_count", **shipped) == 1
    assert after.delta(before, "shipyard_job_duration_seconds_count", pipeline="ask", status="succeeded") == 2
    assert after.delta(before, "shipyard_job_duration_seconds_count", pipeline="bad", status="failed") == 1
    # the gate waited at least the pause above, and is counted once, as approved
    gate = {"pipeline": "ask", "outcome": "approved"}
    assert after.delta(before, "shipyard_gate_wait_seconds_count", **gate) == 1
    assert after.delta(before, "shipyard_gate_wait_seconds_sum", **gate) >= 0.3
    assert after.delta(before, "shipyard_gate_wait_seconds_bucket", **gate, le="10.0") == 1
    # every command went through a group commit
    assert after.delta(before, "shipyard_commit_duration_seconds_count") > 0
    assert after.delta(before, "shipyard_group_commit_requests_sum") >= after.delta(
        before, "shipyard_commit_duration_seconds_count"
    )
    (info,) = after.labelled("shipyard_build_info")
    assert dict(info)["version"] and dict(info)["python"]


async def test_gauges_show_what_deploys_and_what_queues_now(db_url: str, start_api: StartApi) -> None:
    api = await start_api(db_url, PIPELINES, metrics_token=TOKEN)
    idle = await scrape(api)
    # every configured environment is listed, at 0, before anything happens there
    assert ("shipyard_environment_running_deployments", (("environment", "production"),)) in idle.samples
    assert idle.value("shipyard_environment_queued_runs", environment="production") == 0

    first = await api.trigger("held")
    await api.wait(first["id"], lambda r: r["stages"][0]["jobs"][0]["status"] == "running")
    second = await api.trigger("held")
    await api.wait_status(second["id"], "queued")
    now = await scrape(api)
    assert now.value("shipyard_environment_running_deployments", environment="production") == 1
    assert now.value("shipyard_environment_queued_runs", environment="production") == 1
    assert now.value("shipyard_runner_running_jobs", runner="api-test") == 1

    for run in (second, first):
        assert (await api.post(f"/runs/{run['id']}/cancel", "admin")).status == 200
    await api.wait(first["id"])
    await api.wait(second["id"])
    done = await until(
        api, lambda s: s.value("shipyard_environment_running_deployments", environment="production") == 0
    )
    assert done.value("shipyard_environment_queued_runs", environment="production") == 0
    assert done.value("shipyard_runner_running_jobs", runner="api-test") == 0


async def test_a_lease_that_runs_out_is_counted(db_url: str, start_api: StartApi) -> None:
    # no built-in runner: a runner that claims the job and is never heard of again
    api = await start_api(db_url, PIPELINES, metrics_token=TOKEN, runner_capacity=0)
    before = await scrape(api)
    run = await api.trigger("ok")
    await api.wait(run["id"], lambda r: r["stages"][0]["jobs"][0]["status"] == "queued")
    claimed = await api.db(api.shipyard.service.claim_jobs, "vanished", 1, 0.2)
    assert [a.run_id for a in claimed] == [run["id"]]
    after = await until(api, lambda s: s.delta(before, "shipyard_job_leases_expired_total") >= 1)
    assert after.delta(before, "shipyard_job_leases_expired_total") == 1
    job = (await api.run(run["id"]))["stages"][0]["jobs"][0]
    assert "stopped renewing its lease" in str(job)


# -- who may read it -------------------------------------------------------------------------------
async def _get(api: Api, headers: dict[str, str] | None = None) -> Reply:
    async with api.client.get("/metrics", headers=headers or {}) as response:
        return Reply(response.status, response.headers, await response.text())


async def test_the_main_port_asks_for_the_metrics_token(sqlite_url: str, start_api: StartApi) -> None:
    api = await start_api(sqlite_url, PIPELINES, metrics_token=TOKEN)
    missing = await _get(api)
    assert_problem(missing, 401, "Authorization: Bearer")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(await _get(api, {"Authorization": "Bearer not-the-token"}), 401, "not valid")
    assert_problem(await _get(api, {"Authorization": f"Basic {TOKEN}"}), 401, "Bearer")
    # an API token is not the metrics token
    assert_problem(await _get(api, api.auth("admin")), 401, "not valid")
    assert (await scrape(api)).value("shipyard_environment_queued_runs", environment="production") == 0


async def test_a_token_that_is_not_utf8_is_refused_like_any_wrong_one(
    sqlite_url: str, start_api: StartApi
) -> None:
    """A scraper misconfigured with stray bytes is told its token is not valid, not a 500."""
    api = await start_api(sqlite_url, PIPELINES, metrics_token=TOKEN)
    assert api.client.port is not None
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    try:
        token = TOKEN.encode() + b"\xff"
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
        writer.write(b"Authorization: Bearer " + token + b"\r\n\r\n")
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ") and b"not valid" in body, answer


async def test_without_a_token_or_a_port_the_metrics_are_not_served(
    sqlite_url: str, start_api: StartApi
) -> None:
    api = await start_api(sqlite_url, PIPELINES)
    assert_problem(await _get(api), 404, "SHIPYARD_METRICS_TOKEN", "SHIPYARD_METRICS_PORT")


async def test_a_metrics_port_of_its_own(sqlite_url: str, start_api: StartApi) -> None:
    port = free_port()
    api = await start_api(sqlite_url, PIPELINES, metrics_port=port)
    assert_problem(await _get(api), 404, f"port {port}")
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        seen = Scrape.parse(await response.text())
    assert "shipyard_build_info" in seen.names()
    assert api.client.app[EXPORTER] is not None  # type: ignore[index]


async def test_a_metrics_port_with_a_token_asks_for_it_too(sqlite_url: str, start_api: StartApi) -> None:
    port = free_port()
    await start_api(sqlite_url, PIPELINES, metrics_port=port, metrics_token=TOKEN)
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 401
            assert response.content_type == "application/problem+json"
            assert (await response.json())["status"] == 401
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200


# -- the dashboard ---------------------------------------------------------------------------------
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
    "gauge": ("",),
}


async def test_every_metric_the_dashboard_queries_is_exported(sqlite_url: str, start_api: StartApi) -> None:
    api = await start_api(sqlite_url, PIPELINES, metrics_token=TOKEN)
    assert (await api.wait((await api.trigger("ok"))["id"]))["status"] == "succeeded"
    seen = await scrape(api)
    exported = seen.names() | {
        family + suffix for family, kind in seen.families.items() for suffix in SUFFIXES.get(kind, ("",))
    }
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 20
    used = set()
    for query in queries:
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", query)  # (label matchers, ranges, strings)
        used |= {
            word
            for word in re.findall(r"[a-z_][a-z0-9_]*", bare)
            if word.startswith(("shipyard_", "process_"))
        }
    assert used - exported == set(), "the dashboard queries metrics that do not exist"
    # and it covers every family Shipyard defines
    ours = {f for f in seen.families if f.startswith("shipyard_")}
    assert {f for f in ours if not any(u.startswith(f) for u in used)} == set()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "job"]
    assert "shipyard_build_info" in variable["query"]


async def test_doras_four_keys_are_gauges_per_environment(db_url: str, start_api: StartApi) -> None:
    """A good and a failed deployment to production: two changes, half of them failed, one
    success in 30 days; no commit time was sent, so no lead time is claimed."""
    pipelines = {"ship": one_deploy("ship"), "broken": one_deploy("broken", '["sh", "-c", "exit 1"]')}
    api = await start_api(db_url, pipelines, metrics_token=TOKEN)
    assert (await api.wait((await api.trigger("ship"))["id"]))["status"] == "succeeded"
    assert (await api.wait((await api.trigger("broken"))["id"]))["status"] == "failed"

    seen = await scrape(api)
    at = {"environment": "production", "window": "30d"}
    assert seen.value("shipyard_dora_changes", **at) == 2
    assert seen.value("shipyard_dora_change_failure_ratio", **at) == 0.5
    assert abs(seen.value("shipyard_dora_deployments_per_day", **at) - 1 / 30) < 1e-9
    assert seen.labelled("shipyard_dora_lead_time_seconds") == {}  # never guessed
    assert seen.labelled("shipyard_dora_time_to_restore_seconds") == {}  # not restored yet
