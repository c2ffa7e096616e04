"""End to end: a real ``shipyard serve`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at an
OTLP/HTTP receiver on loopback sends the run's spans (decoded with ``opentelemetry-proto``), and
a process without the endpoint imports nothing of OpenTelemetry."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core import tracing
from tests.e2e.server import Server, wait_until
from tests.factory import ROOT, cli_environment
from tests.pipelines import three_by_two

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ADMIN = "otel-admin-token"
pytestmark = pytest.mark.slow


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span it is sent, with the path it came to."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Any] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            self.server.paths.append(self.path)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.server.spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _trigger(server: Server, pipeline: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/v1/pipelines/{pipeline}/runs",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_a_served_run_reaches_an_otlp_receiver_as_one_trace(
    tmp_path: Path, db_url: str, collector: Collector
) -> None:
    server = Server(tmp_path, db_url, admin_token=ADMIN)
    server.pipeline("three", three_by_two())
    server.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
    server.env["OTEL_BSP_SCHEDULE_DELAY"] = "100"
    server.start()
    try:
        run = _trigger(server, "three")

        def finished() -> dict[str, Any] | None:
            status, body = server.get(f"/api/v1/runs/{run['id']}", ADMIN)
            done = json.loads(body) if status == 200 else None
            return done if done is not None and done["status"] == "succeeded" else None

        done = wait_until(finished, what="the run to succeed")
        trace_id = bytes.fromhex(tracing.trace_id(run["id"]))
        root_id = bytes.fromhex(tracing.run_span_id(run["id"]))

        def run_spans() -> list[Any]:
            with collector.lock:
                return [s for s in collector.spans if s.trace_id == trace_id]

        wait_until(lambda: any(s.span_id == root_id for s in run_spans()), what="the run's root span")
    finally:
        server.stop()
    spans = run_spans()
    names = sorted(s.name for s in spans)
    stages = [st["name"] for st in done["stages"]]
    jobs = [f"job {st['name']}/{j['name']}" for st in done["stages"] for j in st["jobs"]]
    assert len(stages) == 3 and len(jobs) == 6
    assert names == sorted(["run three#1", *(f"stage {name}" for name in stages), *jobs])
    stage_ids = {s.span_id for s in spans if s.name.startswith("stage ")}
    assert all(s.parent_span_id == root_id for s in spans if s.name.startswith("stage "))
    assert all(s.parent_span_id in stage_ids for s in spans if s.name.startswith("job "))
    assert set(collector.paths) == {"/v1/traces"}
    # the requests the test made are spans too
    served = {s.name for s in collector.spans if s.kind == s.SPAN_KIND_SERVER}
    assert {"POST /api/v1/pipelines/{pipeline_id}/runs", "GET /api/v1/runs/{run_id}"} <= served
    assert "GET /readyz" not in served  # health probes are not traced


PROBE = """
import sys
from bot.app import create_app
from bot.config import Settings
create_app(Settings())
print(sorted({m.split(".")[0] for m in sys.modules if m.startswith("opentelemetry")}))
"""


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9"])
def test_opentelemetry_is_imported_only_with_an_endpoint(tmp_path: Path, endpoint: str | None) -> None:
    env = cli_environment(database_url=f"sqlite:///{tmp_path}/db.sqlite", pipelines_dir=tmp_path)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    if endpoint is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == ("['opentelemetry']" if endpoint else "[]")
