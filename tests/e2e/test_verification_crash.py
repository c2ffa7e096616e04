"""Verification is durable: a server killed mid-verification resumes it on restart with the same
deadline and the counts so far, and two replicas measuring the same verification roll back
once. Real ``shipyard serve`` processes, real command checks, SIGKILL."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.analysis import AnalysisStatus
from core.model import RunState
from core.runtime.service import Service
from core.runtime.writes import analysis_id
from core.states import RunStatus
from storage.analyses import AnalysisStore
from tests.e2e.server import Server, wait_until
from tests.pipelines import built_and_deployed, one_deploy

SHOP = built_and_deployed()


TOKEN = "verify-admin-token"


def _probe(root: Path) -> tuple[Path, Path]:
    """A command check that passes or fails as the file ``state`` says."""
    state = root / "state"
    state.write_text("0")
    probe = root / "probe.sh"
    probe.write_text(f'#!/bin/sh\ncode=$(cat {state})\necho "probe says $code"\nexit "$code"\n')
    probe.chmod(0o755)
    return probe, state


def _set(state: Path, code: int) -> None:
    """What the probe answers from now on (replaced whole: the probe never reads half a file)."""
    part = state.with_suffix(".part")
    part.write_text(str(code))
    part.replace(state)


def _environments(probe: Path, verify_for: str) -> str:
    return json.dumps(
        {
            "production": {
                "checks": {"probe": {"command": [str(probe)], "interval": "1s"}},
                "verify": {
                    "checks": ["probe"],
                    "for": verify_for,
                    "failure_limit": 2,
                    "on_failure": "rollback",
                },
            }
        }
    )


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _trigger(server: Server, pipeline: str, **parameters: str) -> str:
    """Over REST, so the server's configuration (its environments) governs the run."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/v1/pipelines/{pipeline}/runs",
        data=json.dumps({"parameters": parameters}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["id"])


def _run(svc: Service, run_id: str, until: Callable[[RunState], bool], what: str) -> RunState:
    def found() -> RunState | None:
        state = svc.find_run(run_id)
        return state if state is not None and until(state) else None

    return wait_until(found, timeout=40, interval=0.1, what=what)  # type: ignore[no-any-return]


def _tally(svc: Service, run_id: str) -> Any:
    found = AnalysisStore(svc.store).analysis(analysis_id(run_id, 0))
    assert found is not None
    return found


def test_a_restart_mid_verification_resumes_with_the_same_deadline_and_counts(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, servers: list[Server]
) -> None:
    probe, state = _probe(tmp_path)
    config = _environments(probe, "30s")
    server = Server(tmp_path, db_url, runner="solo", environments=config, admin_token=TOKEN)
    server.pipeline("web", one_deploy("web"))
    servers.append(server)
    server.start()
    svc = make_service(db_url)
    run_id = _trigger(server, "web")
    verifying = _run(svc, run_id, lambda s: s.run.status is RunStatus.VERIFYING, "the run to verify")
    until = verifying.stages[0].verify_until

    _set(state, 1)  # one failed measurement before the crash...
    wait_until(lambda: _tally(svc, run_id)[1]["probe"].failed >= 1, timeout=10, what="a failed measurement")
    _set(state, 0)
    server.signal(signal.SIGKILL)
    server.wait()
    analysis, tallies = _tally(svc, run_id)
    assert tallies["probe"].failed == 1 and analysis.status is AnalysisStatus.RUNNING

    restarted = Server(
        tmp_path, db_url, runner="solo", port=server.port, environments=_environments(probe, "30s")
    )
    servers.append(restarted)
    restarted.start()
    _set(state, 1)  # ...and one after it: together they fail the verification
    failed = _run(svc, run_id, lambda s: s.run.status is RunStatus.FAILED, "the verification to fail")
    assert failed.stages[0].verify_until == until  # the same deadline
    assert failed.run.reason.startswith("verification of production failed: probe: ")
    assert "twice" in failed.run.reason, failed.run.reason
    analysis, tallies = _tally(svc, run_id)
    assert analysis.deadline == until and analysis.status is AnalysisStatus.FAILED
    assert tallies["probe"].failed == 2


@pytest.mark.postgres
def test_two_replicas_measure_a_verification_once_and_roll_back_once(
    pg_url: str, make_service: Callable[..., Service], tmp_path: Path, servers: list[Server]
) -> None:
    probe, state = _probe(tmp_path)
    config = _environments(probe, "3s")
    for name in ("east", "west"):
        servers.append(Server(tmp_path, pg_url, runner=name, environments=config, admin_token=TOKEN))
    servers[0].pipeline("shop", SHOP)
    for server in servers:
        server.start()
    svc = make_service(pg_url)
    good = _trigger(servers[0], "shop", version="1.0.0")
    _run(svc, good, lambda s: s.run.status is RunStatus.SUCCEEDED, "the good release to be verified")

    _set(state, 1)
    bad = _trigger(servers[1], "shop", version="2.0.0")
    failed = _run(svc, bad, lambda s: s.run.status is RunStatus.FAILED, "the bad release to fail")
    assert "twice" in failed.run.reason, failed.run.reason
    _set(state, 0)

    runs = svc.store.list_runs("shop", 20)
    rollbacks = [s for s in runs if s.run.kind == "rollback"]
    assert len(rollbacks) == 1
    _run(svc, rollbacks[0].run.id, lambda s: s.run.status is RunStatus.SUCCEEDED, "the rollback")
    assert [s.run.kind for s in svc.store.list_runs("shop", 20)].count("rollback") == 1

    # each due measurement was taken by one replica: none twice at the same due time
    measured = AnalysisStore(svc.store).measurements(analysis_id(bad, 1))
    assert len(measured) == 2, [(m.at, m.result) for m in measured]
