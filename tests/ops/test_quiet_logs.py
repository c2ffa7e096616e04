"""A real ``shipyard serve`` left idle writes nothing at the default level (health probes and
the scheduler's ticks included), and ``SHIPYARD_LOG_FORMAT=json`` writes JSON lines: a run's
carry its run, stage and job, and an access line its request's ``X-Request-Id`` (returned on
the answer, made up if none came). The idle window is a minute, as operators judge a quiet
server (``SHIPYARD_TEST_IDLE_SECONDS`` shortens it while working on this file)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.factory import cli_environment, write_pipelines
from tests.pipelines import API_PIPELINES

IDLE_S = float(os.environ.get("SHIPYARD_TEST_IDLE_SECONDS", "60"))
ADMIN = "admin-token-for-the-log-tests"


@contextmanager
def _serving(tmp_path: Path, **settings: str) -> Iterator[tuple[str, Path]]:
    """``shipyard serve`` on a free port, ready; its base URL and its log (stdout and stderr)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = cli_environment(
        database_url=f"sqlite:///{tmp_path}/serve.db",
        pipelines_dir=write_pipelines(tmp_path, {"quick": API_PIPELINES["quick"]}),
        work_dir=tmp_path / "work",
        **settings,
    )
    log = tmp_path / "serve.log"
    with (
        log.open("w") as out,
        subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        ) as server,
    ):
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    with urllib.request.urlopen(f"{base}/readyz", timeout=2) as ready:
                        if ready.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
                time.sleep(0.05)
            yield base, log
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


def _get(url: str, request_id: str | None = None) -> int:
    return _answer(url, request_id)[0]


def _answer(url: str, request_id: str | None = None) -> tuple[int, str | None]:
    """The status and the ``X-Request-Id`` of the answer to a GET."""
    headers = {"X-Request-Id": request_id} if request_id else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return int(r.status), r.headers.get("X-Request-Id")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers.get("X-Request-Id")


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _json_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_an_idle_server_probed_for_health_writes_nothing(tmp_path: Path) -> None:
    with _serving(tmp_path) as (base, log):
        time.sleep(0.5)  # (start-up lines, if any, are written by now)
        started = log.read_text()
        deadline = time.monotonic() + IDLE_S
        probes = 0
        while time.monotonic() < deadline:
            assert _get(f"{base}/healthz") == 200 and _get(f"{base}/readyz") == 200
            probes += 2
            time.sleep(0.25)
        idle = log.read_text()[len(started) :]
    assert probes >= 4 and idle == "", f"an idle server wrote:\n{idle}"


def test_json_lines_carry_the_request_id_of_their_request(tmp_path: Path) -> None:
    with _serving(tmp_path, log_format="json") as (base, log):
        assert _answer(f"{base}/api/v1/runs", "req-4711") == (401, "req-4711")  # refused, and logged
        status, made = _answer(f"{base}/api/v1/pipelines")  # without one, the server names it
        assert status == 401 and made and len(made) == 32
        time.sleep(0.3)
        lines = _json_lines(log)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    access = [line for line in lines if line.get("request_id") == "req-4711"]
    assert len(access) == 1 and "/api/v1/runs" in access[0]["message"] and " 401 " in access[0]["message"]
    assert next(line["message"] for line in lines if line.get("request_id") == made).endswith(" ms")


def test_json_lines_of_a_run_carry_its_run_stage_and_job(tmp_path: Path) -> None:
    with _serving(tmp_path, log_format="json", admin_token=ADMIN) as (base, log):
        run = _call("POST", f"{base}/api/v1/pipelines/quick/runs", {})
        deadline = time.monotonic() + 30
        while _call("GET", f"{base}/api/v1/runs/{run['id']}")["status"] != "succeeded":
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(0.3)
        lines = _json_lines(log)
    ours = [line for line in lines if line.get("run") == run["id"]]
    assert {"run.running", "run.succeeded", "job.succeeded"} <= {line["message"].split()[0] for line in ours}
    job = next(line for line in ours if line["message"].startswith("job.succeeded"))
    assert job["level"] == "INFO" and job["stage"] == "only" and job["job"] in job["message"]
    assert "running -> succeeded" in job["message"]
