"""Canary rollouts are durable: a server SIGKILLed while it sets a router, or while a rollout
pauses, is restarted and the router ends at the weights the database recorded, a pause keeps its
deadline, a router changed by hand while Shipyard was down is put back before the rollout goes
on, and the run finishes once. Two replicas on one PostgreSQL database drive one router one
change at a time, each change once; a router that cannot be reached fails the run with its own
words and where traffic was last confirmed.

Real ``shipyard serve`` processes, a real nginx (and haproxy) in front of two real versions of a
service (``tests/routing.py``), SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.events import Event
from core.model import RunState
from core.rollout import Rollout
from core.runtime.routers import router_for
from core.runtime.service import Service
from core.states import RUN_TERMINAL, RunStatus
from tests.e2e.server import Server, wait_until
from tests.routing import Haproxy, Nginx, send

TOKEN = "rollout-admin-token"


def _canary(steps: str, count: Path) -> str:
    """A canary pipeline with ``steps``; its promote job adds a line to ``count`` each time it runs."""
    return f"""name: web
stages:
  - name: production
    environment: production
    strategy:
      canary:
        router: web
        steps:
{steps}
        promote: [{{name: promote, run: "echo promoted >> {count}"}}]
        abort: [{{name: remove-canary, run: "true"}}]
    jobs:
      - {{name: deploy-canary, run: "true"}}
"""


def _environments(router: dict[str, Any]) -> str:
    return json.dumps({"production": {"routers": {"web": router}}})


def _nginx_router(nginx: Nginx, **options: Any) -> dict[str, Any]:
    """``nginx.router()`` as the server's configuration takes it; ``options`` go in ``nginx:``,
    ``timeout`` beside it."""
    timeout = options.pop("timeout", "4s")
    router = nginx.router(**options).model_dump(mode="json", exclude_none=True)
    return {**router, "timeout": timeout}


def _slow(root: Path, include: Path, delay: float) -> tuple[Path, Path]:
    """A wrapper that notes the weights ``include`` holds (its first line) in ``marker``, sleeps
    ``delay`` seconds, then runs the real command: a change slow enough to be killed in."""
    marker = root / "changes"
    marker.touch()
    wrapper = root / "slow.sh"
    wrapper.write_text(f"#!/bin/sh\nhead -n 1 {include} >> {marker}\nsleep {delay}\nexec \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper, marker


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _server(root: Path, url: str, environments: str, **settings: object) -> Server:
    return Server(root, url, environments=environments, admin_token=TOKEN, **settings)


def _trigger(server: Server, pipeline: str) -> str:
    """Over REST, so the server's configuration (its routers) governs the run."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/v1/pipelines/{pipeline}/runs",
        data=json.dumps({"parameters": {}}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["id"])


def _run_json(server: Server, run_id: str) -> dict[str, Any]:
    status, body = server.get(f"/api/v1/runs/{run_id}", TOKEN)
    assert status == 200, (status, body)
    return dict(json.loads(body))


def _rollout(svc: Service, run_id: str, until: Callable[[Rollout], bool], what: str) -> Rollout:
    def found() -> Rollout | None:
        state = svc.find_run(run_id)
        if state is None:
            return None
        rollout = state.stages[0].rollout
        return rollout if rollout is not None and until(rollout) else None

    return wait_until(found, timeout=40, interval=0.05, what=what)  # type: ignore[no-any-return]


def _ended(svc: Service, run_id: str) -> RunState:
    def found() -> RunState | None:
        state = svc.find_run(run_id)
        return state if state is not None and state.run.status in RUN_TERMINAL else None

    return wait_until(found, timeout=40, interval=0.1, what="the run to end")  # type: ignore[no-any-return]


def _events(svc: Service, run_id: str, name: str) -> list[Event]:
    return [e for e in svc.store.events_after(0, limit=5000, run_id=run_id) if e.name == name]


def _share(nginx: Nginx | Haproxy, count: int = 1000) -> float:
    tally = asyncio.run(send(nginx.port, count))
    assert tally.failures == [], tally.failures[:3]
    return tally.share("canary")


def _kill(server: Server) -> None:
    server.signal(signal.SIGKILL)
    server.wait()


def _restart(server: Server, root: Path, url: str, environments: str, servers: list[Server]) -> Server:
    again = _server(root, url, environments, port=server.port)
    servers.append(again)
    again.start()
    return again


def _finished_once(svc: Service, run_id: str, count: Path) -> RunState:
    done = _ended(svc, run_id)
    assert done.run.status is RunStatus.SUCCEEDED, done.run.reason
    assert count.read_text().splitlines() == ["promoted"]  # the promote job ran once
    assert len(_events(svc, run_id, "rollout.promoted")) == 1
    return done


def _applied(svc: Service, run_id: str) -> list[int]:
    """The canary's weight at each confirmed change, in order."""
    return [int(str(e.data["canary"])) for e in _events(svc, run_id, "rollout.weights_applied")]


def test_a_kill_during_a_weight_change_ends_at_the_recorded_weights_and_finishes_once(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, nginx: Nginx, servers: list[Server]
) -> None:
    wrapper, marker = _slow(tmp_path, nginx.include, 1.5)
    router = _nginx_router(nginx, test=[str(wrapper), *nginx.argv("-t")])
    config = _environments(router)
    count = tmp_path / "promoted"
    steps = """\
          - set_weight: 20
          - set_weight: 60
          - pause: {duration: 3s}
"""
    server = _server(tmp_path, db_url, config)
    server.pipeline("web", _canary(steps, count))
    servers.append(server)
    server.start()
    svc = make_service(db_url)
    run_id = _trigger(server, "web")

    # the change to 60 is under way: its weights are recorded and the include file written,
    # nginx is not yet tested nor reloaded
    wait_until(lambda: "canary=60" in marker.read_text(), timeout=30, what="the change to 60")
    _kill(server)
    rollout = _rollout(svc, run_id, lambda r: True, "the rollout")
    assert (dict(rollout.desired), dict(rollout.applied or {})) == (
        {"stable": 40, "canary": 60},
        {"stable": 80, "canary": 20},
    )
    assert abs(_share(nginx) - 20) <= 5  # traffic stays where it was last confirmed

    _restart(server, tmp_path, db_url, config, servers)
    paused = _rollout(svc, run_id, lambda r: r.step == 2, "the change to 60 to be confirmed")
    assert dict(paused.applied or {}) == {"stable": 40, "canary": 60}
    assert abs(_share(nginx) - 60) <= 5

    _finished_once(svc, run_id, count)
    assert _applied(svc, run_id) == [20, 60, 0]  # each change confirmed once, none skipped
    assert _share(nginx) == 0  # promoted: the new version is stable, the canary takes nothing
