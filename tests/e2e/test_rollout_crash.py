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
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from core.events import Event
from core.model import RunState
from core.rollout import Rollout
from core.runtime.routers import router_for
from core.runtime.service import Service
from core.states import RUN_TERMINAL, RunStatus
from tests.e2e.server import Server, wait_until
from tests.pipelines import canary
from tests.routing import Haproxy, Nginx, send

TOKEN = "rollout-admin-token"


def _canary(steps: list[str], count: Path) -> str:
    """A canary pipeline with ``steps``; its promote job adds a line to ``count`` each time it runs."""
    return canary("web", steps, promote=f'"echo promoted >> {count}"')


class Started(NamedTuple):
    """A served canary run: its server, a service on its database, the run and its promote count."""

    server: Server
    svc: Service
    run_id: str
    count: Path


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
    wrapper.write_text(f'#!/bin/sh\nhead -n 1 {include} >> {marker}\nsleep {delay}\nexec "$@"\n')
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


def _start(
    root: Path,
    url: str,
    environments: str,
    steps: list[str],
    servers: list[Server],
    make_service: Callable[..., Service],
) -> Started:
    """A server for ``environments`` with the canary of ``steps``, started, and a run of it."""
    count = root / "promoted"
    server = _server(root, url, environments)
    server.pipeline("web", _canary(steps, count))
    servers.append(server)
    server.start()
    return Started(server, make_service(url), _trigger(server, "web"), count)


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
    steps = ["set_weight: 20", "set_weight: 60", "pause: {duration: 3s}"]
    server, svc, run_id, count = _start(tmp_path, db_url, config, steps, servers, make_service)

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


# long enough that a slow restart and the traffic measured after it both fit in the pause
_PAUSE = ["set_weight: 30", "pause: {duration: 12s}", "set_weight: 70"]


def _paused(svc: Service, run_id: str) -> Rollout:
    return _rollout(
        svc, run_id, lambda r: r.step == 1 and r.step_until is not None, "the rollout to pause at 30"
    )


def test_a_kill_during_a_pause_keeps_its_deadline_and_the_router_its_weights(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, nginx: Nginx, servers: list[Server]
) -> None:
    config = _environments(_nginx_router(nginx))
    server, svc, run_id, count = _start(tmp_path, db_url, config, _PAUSE, servers, make_service)
    until = _paused(svc, run_id).step_until
    assert until is not None
    shown = _run_json(server, run_id)["rollout"]["step_until"]

    time.sleep(1)
    _kill(server)
    time.sleep(2)  # down for a while: the deadline does not move for it
    server = _restart(server, tmp_path, db_url, config, servers)
    assert _run_json(server, run_id)["rollout"]["step_until"] == shown
    assert datetime.now(until.tzinfo) < until  # still in the pause...
    assert abs(_share(nginx) - 30) <= 5  # ...and the router still at its weights
    assert datetime.now(until.tzinfo) < until, "the pause ended while its traffic was measured"

    _finished_once(svc, run_id, count)
    assert _applied(svc, run_id) == [30, 70, 0]
    # the step after the pause was taken at the original deadline: not later by the time the
    # server was down, nor a whole pause after the restart
    after = [e for e in _events(svc, run_id, "rollout.step") if e.data.get("step") == 3]
    assert len(after) == 1
    late = (after[0].at - until).total_seconds()
    assert 0 <= late < 2, late


def test_a_router_changed_by_hand_while_down_is_set_back_before_the_rollout_goes_on(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, nginx: Nginx, servers: list[Server]
) -> None:
    config = _environments(_nginx_router(nginx))
    server, svc, run_id, count = _start(tmp_path, db_url, config, _PAUSE, servers, make_service)
    until = _paused(svc, run_id).step_until
    assert until is not None
    _kill(server)

    # someone puts all traffic back on stable by hand while Shipyard is down
    by_hand = router_for("web", nginx.router())
    assert asyncio.run(by_hand.apply({"stable": 100, "canary": 0})) == {"stable": 100, "canary": 0}
    assert _share(nginx, 300) == 0
    workers = nginx.workers()

    _restart(server, tmp_path, db_url, config, servers)
    wait_until(
        lambda: asyncio.run(by_hand.read()) == {"stable": 70, "canary": 30},
        timeout=10,
        what="the router to be set back to the recorded weights",
    )
    asyncio.run(nginx.settled(workers))  # and nginx reloaded with them
    assert abs(_share(nginx) - 30) <= 5
    rollout = _rollout(svc, run_id, lambda r: True, "the rollout")
    assert rollout.step == 1 and datetime.now(until.tzinfo) < until  # before the rollout went on

    _finished_once(svc, run_id, count)
    assert _applied(svc, run_id) == [30, 70, 0]


def _logging_router(root: Path) -> tuple[Path, Path]:
    """A command router that takes 0.3 s per change and adds a line per call to ``calls``:
    when it started and ended (epoch seconds), and the weights it was given."""
    calls = root / "calls"
    calls.touch()
    script = root / "router.sh"
    script.write_text(
        "#!/bin/sh\n"
        "start=$(date +%s.%N)\n"
        "sleep 0.3\n"
        f'echo "$start $(date +%s.%N) $SHIPYARD_ROUTER_WEIGHTS $PPID" >> {calls}\n'
    )
    script.chmod(0o755)
    return script, calls


@pytest.mark.postgres
def test_two_replicas_set_each_weight_once_one_change_at_a_time(
    pg_url: str, make_service: Callable[..., Service], tmp_path: Path, servers: list[Server]
) -> None:
    script, calls = _logging_router(tmp_path)
    router = {"command": [str(script)], "pools": {"stable": ["old"], "canary": ["new"]}, "timeout": "4s"}
    config = _environments(router)
    count = tmp_path / "promoted"
    steps = ["set_weight: 10", "pause: {duration: 1s}", "set_weight: 50", "set_weight: 100"]
    for name in ("east", "west"):
        servers.append(_server(tmp_path, pg_url, config, runner=name))
    servers[0].pipeline("web", _canary(steps, count))
    for server in servers:
        server.start()
    svc = make_service(pg_url)
    run_id = _trigger(servers[0], "web")
    _finished_once(svc, run_id, count)

    made = [line.split() for line in calls.read_text().splitlines()]
    assert [weights for _, _, weights, _ in made] == [
        "stable=90,canary=10",
        "stable=50,canary=50",
        "stable=0,canary=100",
        "stable=100,canary=0",
    ]
    spans = sorted((float(start), float(end)) for start, end, _, _ in made)
    for (_, ended), (started, _) in pairwise(spans):
        assert ended <= started, spans  # never two at once
    assert _applied(svc, run_id) == [10, 50, 100, 0]


def test_a_router_that_cannot_be_reached_fails_the_run_with_its_words_and_where_traffic_stays(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, haproxy: Haproxy, servers: list[Server]
) -> None:
    router = {**haproxy.router().model_dump(mode="json", exclude_none=True), "timeout": "2s"}
    config = _environments(router)
    steps = ["set_weight: 10", "pause: {duration: 2s}", "set_weight: 50"]
    server, svc, run_id, count = _start(tmp_path, db_url, config, steps, servers, make_service)
    _rollout(svc, run_id, lambda r: r.step == 1, "the canary at 10")
    assert abs(_share(haproxy) - 10) <= 5
    haproxy.stop()  # the router goes away during the pause

    failed = _ended(svc, run_id)
    assert failed.run.status is RunStatus.FAILED
    reason = failed.run.reason
    assert reason.startswith(f"router web failed: cannot connect to haproxy at {haproxy.socket}: "), reason
    assert reason.endswith("traffic stays at stable 90 / canary 10 (last confirmed)"), reason
    rollout = failed.stages[0].rollout
    assert rollout is not None and dict(rollout.applied or {}) == {"stable": 90, "canary": 10}
    assert not count.exists()  # nothing promoted
    assert _run_json(server, run_id)["rollout"]["status"] == "failed"


def test_a_router_that_fails_its_first_change_fails_the_run_with_its_words(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, servers: list[Server]
) -> None:
    script = tmp_path / "router.sh"
    script.write_text("#!/bin/sh\necho 'lb-api: 503 Service Unavailable' >&2\nexit 1\n")
    script.chmod(0o755)
    router = {"command": [str(script)], "pools": {"stable": ["old"], "canary": ["new"]}}
    _, svc, run_id, count = _start(
        tmp_path, db_url, _environments(router), ["set_weight: 10"], servers, make_service
    )

    failed = _ended(svc, run_id)
    assert failed.run.status is RunStatus.FAILED
    assert failed.run.reason == (
        f"router web failed: {script} exited with 1: lb-api: 503 Service Unavailable; "
        "no weights were confirmed yet: traffic stays as the router had it"
    ), failed.run.reason
    assert not count.exists()


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_a_router_restarted_with_shipyard_is_waited_for_and_the_rollout_goes_on(
    kind: str,
    request: pytest.FixtureRequest,
    db_url: str,
    make_service: Callable[..., Service],
    tmp_path: Path,
    servers: list[Server],
) -> None:
    """Shipyard and its router restart together: the router does not answer when the rollout is
    resumed (nginx not running, so its reload fails; haproxy's socket not up). Its weights were
    fine: the rollout says what it waits for, tries again, and goes on once the router is back
    (set again to the recorded weights), instead of failing."""
    router_process: Nginx | Haproxy = request.getfixturevalue(kind)
    if isinstance(router_process, Nginx):
        router = _nginx_router(router_process, timeout="2s")
    else:
        router = {**router_process.router().model_dump(mode="json", exclude_none=True), "timeout": "2s"}
    config = _environments({**router, "resume_wait": "60s"})
    steps = ["set_weight: 30", "pause: {duration: 20s}", "set_weight: 70"]
    server, svc, run_id, count = _start(tmp_path, db_url, config, steps, servers, make_service)
    _paused(svc, run_id)
    _kill(server)
    router_process.stop()

    server = _restart(server, tmp_path, db_url, config, servers)
    waiting = _rollout(
        svc, run_id, lambda r: r.router_wait != "", "the rollout to say it waits for its router"
    )
    assert waiting.router_wait.startswith("waiting for router web to answer before the rollout goes on"), (
        waiting
    )
    assert "up to 1m" in waiting.router_wait, waiting.router_wait
    shown = _run_json(server, run_id)
    assert shown["status"] == "running", shown["reason"]
    assert shown["rollout"]["router_wait"] == waiting.router_wait
    time.sleep(2)  # (tried again meanwhile: still waiting, not failed)
    assert svc.find_run(run_id).run.status is RunStatus.RUNNING  # type: ignore[union-attr]

    router_process.start()  # back, with its own configuration's weights (all on stable)
    back = _rollout(svc, run_id, lambda r: r.router_wait == "", "the rollout to stop waiting")
    assert back.step == 1 and dict(back.applied or {}) == {"stable": 70, "canary": 30}
    assert abs(_share(router_process) - 30) <= 5  # set again to the recorded weights
    _finished_once(svc, run_id, count)
    assert _applied(svc, run_id) == [30, 70, 0]


def test_a_router_that_stays_away_after_a_restart_fails_the_rollout_once_its_wait_is_over(
    db_url: str, make_service: Callable[..., Service], tmp_path: Path, servers: list[Server]
) -> None:
    down = tmp_path / "router-down"
    script = tmp_path / "router.sh"
    script.write_text(
        f"#!/bin/sh\nif [ -e {down} ]; then echo 'lb-api: connection refused' >&2; exit 1; fi\n"
    )
    script.chmod(0o755)
    router = {"command": [str(script)], "pools": {"stable": ["old"], "canary": ["new"]}, "resume_wait": "3s"}
    config = _environments(router)
    server, svc, run_id, count = _start(tmp_path, db_url, config, _PAUSE, servers, make_service)
    _paused(svc, run_id)
    _kill(server)
    down.touch()

    _restart(server, tmp_path, db_url, config, servers)
    failed = _ended(svc, run_id)
    assert failed.run.status is RunStatus.FAILED
    assert failed.run.reason == (
        f"router web failed: {script} exited with 1: lb-api: connection refused "
        "(waited 3s for it to answer after a restart); "
        "traffic stays at stable 70 / canary 30 (last confirmed)"
    ), failed.run.reason
    rollout = failed.stages[0].rollout
    assert rollout is not None and rollout.router_wait == ""
    assert not count.exists()
