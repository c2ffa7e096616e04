"""PostgreSQL goes away under load and comes back: the server answers ``503`` meanwhile, says so
in its log once when the outage starts and once when it ends, and every run finishes after."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.runtime.service import Service
from core.states import RUN_TERMINAL, RunStatus
from tests.e2e.server import Server, wait_until
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TOKEN = "outage-admin-token"
STARTED = r"WARNING core\.runtime\.health: database unreachable: "
ENDED = r"WARNING core\.runtime\.health: database reachable again after ([\d.]+) s$"
WORK = """
name: work
stages:
  - {name: build, jobs: [{name: a, run: "sleep 0.5"}, {name: b, run: "sleep 1"}]}
  - {name: ship, jobs: [{name: c, run: "sleep 0.3"}]}
"""


@dataclass
class Load:
    """Triggers a run every ``every`` seconds through the REST API, keeping every answer."""

    port: int
    every: float = 0.15
    answers: list[tuple[float, int, str, dict[str, str]]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.is_set():
            self.answers.append((time.monotonic(), *self.trigger()))
            self.stopping.wait(self.every)

    def trigger(self) -> tuple[int, str, dict[str, str]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/v1/pipelines/work/runs",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def since(self, at: float) -> list[tuple[int, str, dict[str, str]]]:
        return [(status, body, headers) for t, status, body, headers in list(self.answers) if t >= at]


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    url = sa.engine.make_url(pg_url)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as running:
        yield running


@pytest.fixture
def server(tmp_path: Path, pg_url: str, proxy: TcpProxy) -> Iterator[Server]:
    through = sa.engine.make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    s = Server(tmp_path, through.render_as_string(hide_password=False), capacity=4)
    s.env["SHIPYARD_ADMIN_TOKEN"] = TOKEN
    s.env["SHIPYARD_LEASE_SECONDS"] = "60"  # the outage is shorter: no job is declared lost for it
    s.pipeline("work", WORK)
    try:
        yield s
    finally:
        s.stop()


def _lines(log: Path, pattern: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if re.search(pattern, line)]


def test_a_database_outage_answers_503_logs_twice_and_loses_no_run(
    server: Server, proxy: TcpProxy, pg_url: str, make_service: Callable[..., Service]
) -> None:
    server.start()
    load = Load(server.port)
    loader = threading.Thread(target=load.run, daemon=True)
    loader.start()
    try:
        wait_until(lambda: sum(a[1] == 202 for a in load.answers) >= 5, what="runs to be triggered")
        before = server.log.read_text()

        proxy.cut()
        cut_at = time.monotonic()
        wait_until(lambda: _lines(server.log, STARTED), what="the outage to be logged")
        wait_until(
            lambda: sum(a[0] == 503 for a in load.since(cut_at)) >= 5 and time.monotonic() - cut_at > 4,
            what="triggers answered 503 during the outage",
        )
        proxy.restore()
        restored_at = time.monotonic()
        wait_until(lambda: _lines(server.log, ENDED), what="the recovery to be logged")
        wait_until(
            lambda: any(a[0] == 202 for a in load.since(restored_at + 1)), what="triggers to work again"
        )
    finally:
        load.stopping.set()
        loader.join(60)

    during = load.since(cut_at)
    refused = [(s, b, h) for s, b, h in during if s == 503]
    assert refused and all(int(h["Retry-After"]) > 0 for _, _, h in refused)
    assert all(
        json.loads(b)["detail"] == "The database is unreachable; try again shortly." for _, b, _ in refused
    )
    assert {s for s, _, _ in during} <= {202, 503}, [a[:2] for a in during if a[0] not in (202, 503)]

    log = server.log.read_text()[len(before) :]
    assert len(_lines(server.log, STARTED)) == 1, log
    (back,) = _lines(server.log, ENDED)
    lasted = float(re.findall(ENDED, back)[0])
    assert 0 < lasted < time.monotonic() - cut_at + 1, back
    assert "Traceback" not in log and " ERROR " not in log, log

    svc = make_service(pg_url)  # straight to the database
    triggered = {json.loads(b)["id"] for s, b, _ in load.since(0) if s == 202}

    def finished() -> bool:
        return all((s := svc.find_run(r)) is not None and s.run.status in RUN_TERMINAL for r in triggered)

    wait_until(finished, timeout=120, interval=0.3, what="every run triggered to finish")
    for run_id in triggered:
        state = svc.find_run(run_id)
        assert state is not None and state.run.status is RunStatus.SUCCEEDED, (
            state.run.reason if state else run_id
        )
