"""A real Prometheus scrapes a real ``shipyard serve`` (its metrics port) while the test
triggers runs over REST; PromQL through Prometheus' HTTP API returns the runs the test made."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.server import Server, free_port, wait_until
from tests.pipelines import one_job
from tests.prometheus import Prometheus

ADMIN = "e2e-admin-token-for-metrics"

pytestmark = pytest.mark.slow


def _trigger(server: Server, pipeline: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/v1/pipelines/{pipeline}/runs",
        data=b"{}",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.loads(response.read())["id"])


def _status(server: Server, run_id: str) -> str:
    code, body = server.get(f"/api/v1/runs/{run_id}", ADMIN)
    assert code == 200, body
    return str(json.loads(body)["status"])


def test_prometheus_scrapes_the_runs_the_test_made(db_url: str, tmp_path: Path) -> None:
    metrics_port = free_port()
    server = Server(tmp_path, db_url, admin_token=ADMIN, metrics_port=metrics_port)
    server.pipeline("fine", one_job("fine"))
    server.pipeline("broke", one_job("broke", '["sh", "-c", "exit 1"]'))
    server.start()
    try:
        with Prometheus(tmp_path / "prometheus") as prometheus:
            target = f"127.0.0.1:{metrics_port}"
            prometheus.scrape(target)
            runs = [_trigger(server, name) for name in ("fine", "fine", "fine", "broke", "broke")]
            wait_until(
                lambda: all(_status(server, r) in ("succeeded", "failed") for r in runs), what="the runs"
            )
            finished = "sum by (pipeline, status) (shipyard_runs_finished_total)"
            prometheus.wait_for(f'{finished[:-1]}{{pipeline="fine", status="succeeded"}})', lambda v: v == 3)
            got = {
                (r["metric"]["pipeline"], r["metric"]["status"]): float(r["value"][1])
                for r in prometheus.query(finished)["result"]
            }
            assert got == {("fine", "succeeded"): 3.0, ("broke", "failed"): 2.0}
            started = prometheus.value("sum(shipyard_runs_started_total)")
            assert started == 5
            p50 = prometheus.value(
                'histogram_quantile(0.5, sum by (le) (shipyard_run_duration_seconds_bucket{pipeline="fine"}))'
            )
            assert p50 is not None and 0 < p50 <= 10
            build = prometheus.query("shipyard_build_info")["result"]
            assert len(build) == 1 and build[0]["metric"]["instance"] == target
    finally:
        server.stop()
