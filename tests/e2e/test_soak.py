"""Soak: clients trigger runs over REST with idempotency keys while servers are SIGKILLed at
random moments (half of the kills right after a job ended) and started again; every job writes
a ledger line when it starts and when it finishes.

What must hold afterwards: every accepted key has exactly one run and every run succeeds
(nothing lost, nothing doubled); on one server, no job that finished ran again; on replicas,
every job that ran again after finishing says so on its run (a late result); a key answers
"still being processed" for no longer than its lease after a crash.

``SHIPYARD_SOAK_SECONDS`` sets how long servers are killed (CI: a short soak)."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.runtime.service import Service
from core.states import RUN_TERMINAL, RunStatus
from tests.e2e.server import Server, wait_until

pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("SHIPYARD_SOAK_SECONDS", "12"))
TOKEN = "soak-admin-token-0123456789"
#: the idempotency claim's lease in these servers
KEY_LEASE_S = 2
#: how long past the lease a key may answer 409 on this loaded machine
KEY_SLACK_S = 6


def _job(ledger: Path) -> str:
    # a line when it starts and when it finishes; the second names the job's process, so the
    # killer can tell a job that finished (its process exited) from one still on its way out
    line = "$SHIPYARD_JOB_ID $SHIPYARD_ATTEMPT"
    return f'"echo start {line} >> {ledger}; sleep 0.$((RANDOM % 4)); echo done {line} $$ >> {ledger}"'


def _pipeline(ledger: Path) -> str:
    return f"""
name: soak
stages:
  - name: build
    jobs: [{{name: compile, retries: 8, run: {_job(ledger)}}}]
  - name: production
    jobs: [{{name: deploy, retries: 8, run: {_job(ledger)}}}]
"""


@dataclass
class Cluster:
    root: Path
    url: str
    names: list[str]
    servers: list[Server] = field(default_factory=list)
    kills: int = 0

    def start(self) -> None:
        for name in self.names:
            self.servers.append(self._server(name))
            self.servers[-1].start()

    def _server(self, name: str, port: int | None = None) -> Server:
        s = Server(self.root, self.url, runner=name, port=port, capacity=4)
        s.env["SHIPYARD_ADMIN_TOKEN"] = TOKEN
        s.env["SHIPYARD_IDEMPOTENCY_LEASE_SECONDS"] = str(KEY_LEASE_S)
        return s

    def kill_and_restart(self, i: int) -> None:
        old = self.servers[i]
        old.signal(signal.SIGKILL)
        old.wait()
        self.kills += 1
        self.servers[i] = self._server(self.names[i], port=old.port)
        self.servers[i].start(timeout=60)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


@dataclass
class Keys:
    """What the clients saw: key -> run id, and each key's longest stretch of 409s."""

    runs: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _post(port: int, key: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/pipelines/soak/runs",
        data=b"{}",
        method="POST",
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}  # (the server is down: try again)


def _client(cluster: Cluster, keys: Keys, until: float) -> None:
    while time.monotonic() < until:
        key = uuid.uuid4().hex
        refused_since: float | None = None
        longest = 0.0
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:
            status, body = _post(random.choice(cluster.servers).port, key)
            if status in (200, 201, 202):
                with keys.lock:
                    keys.runs[key] = str(body["id"])
                    keys.blocked[key] = longest
                break
            if status == 409:
                refused_since = refused_since or time.monotonic()
                longest = max(longest, time.monotonic() - refused_since)
            else:
                refused_since = None
            time.sleep(0.1)
        else:
            raise AssertionError(f"key {key} was never accepted")


def _lines(ledger: Path) -> list[tuple[str, str, int]]:
    return [(kind, job, attempt) for kind, job, attempt, _ in _entries(ledger)]


def _entries(ledger: Path) -> list[tuple[str, str, int, int | None]]:
    """(kind, job id, attempt, the job's pid on a done line) for each whole line."""
    if not ledger.exists():
        return []
    found = []
    for line in ledger.read_text().splitlines():
        parts = line.split()
        if len(parts) in (3, 4):
            pid = int(parts[3]) if len(parts) == 4 else None
            found.append((parts[0], parts[1], int(parts[2]), pid))
    return found


def _exited(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie its spawner has not reaped yet, or gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def _done_jobs(ledger: Path) -> list[int | None]:
    return [pid for kind, _, _, pid in _entries(ledger) if kind == "done"]


def _killer(cluster: Cluster, ledger: Path, until: float) -> None:
    while time.monotonic() < until:
        time.sleep(random.uniform(0.3, 1.5))
        if random.random() < 0.5:  # right after a job ended, before its report may commit
            seen = len(_done_jobs(ledger))
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if len(done := _done_jobs(ledger)) > seen:
                    # ended means its process exited, not only that it wrote its last line: a
                    # job killed between the two had not finished and runs again (by design)
                    pid = done[-1]
                    while pid is not None and not _exited(pid) and time.monotonic() < deadline:
                        time.sleep(0.001)
                    break
                time.sleep(0.002)
        cluster.kill_and_restart(random.randrange(len(cluster.servers)))


def _soak(cluster: Cluster, ledger: Path) -> Keys:
    keys = Keys()
    until = time.monotonic() + SOAK_S
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # (reported by the test)
                errors.append(exc)

        return run

    threads = [threading.Thread(target=guarded(lambda: _client(cluster, keys, until))) for _ in range(2)]
    threads.append(threading.Thread(target=guarded(lambda: _killer(cluster, ledger, until))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SOAK_S + 240)
    assert not errors, errors
    return keys


def _settled(svc: Service, keys: Keys) -> list[object]:
    def done() -> list[object] | None:
        states = [svc.find_run(run_id) for run_id in set(keys.runs.values())]
        if all(s is not None and s.run.status in RUN_TERMINAL for s in states):
            return states  # type: ignore[return-value]
        return None

    return wait_until(done, timeout=180, interval=0.5, what="every accepted run to finish")  # type: ignore[no-any-return]


def _ran_again_after_finishing(ledger: Path) -> dict[str, list[int]]:
    """job id -> the finished attempts after which another attempt started."""
    done: dict[str, set[int]] = defaultdict(set)
    started: dict[str, set[int]] = defaultdict(set)
    for kind, job, attempt in _lines(ledger):
        (done if kind == "done" else started)[job].add(attempt)
    return {
        job: sorted(a for a in attempts if any(s > a for s in started[job]))
        for job, attempts in done.items()
        if any(s > a for a in attempts for s in started[job])
    }


def _check_keys(svc: Service, keys: Keys) -> list[object]:
    assert keys.runs, "no run was accepted"
    assert len(set(keys.runs.values())) == len(keys.runs)  # one run a key
    runs = svc.store.list_runs("soak", 10_000)
    assert sorted(s.run.id for s in runs) == sorted(keys.runs.values())  # none lost, none extra
    states = _settled(svc, keys)
    failed = [(s.run.ref, s.run.reason) for s in states if s.run.status is not RunStatus.SUCCEEDED]  # type: ignore[attr-defined]
    assert failed == []
    longest = max(keys.blocked.values())
    assert longest <= KEY_LEASE_S + KEY_SLACK_S, longest
    return states


@pytest.fixture
def cluster_for(tmp_path: Path) -> Iterator[Callable[[str, list[str]], Cluster]]:
    made: list[Cluster] = []

    def make(url: str, names: list[str]) -> Cluster:
        cluster = Cluster(tmp_path, url, names)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def test_soak_one_server_killed_at_random_loses_nothing_and_never_reruns_a_finished_job(
    sqlite_url: str, make_service: Callable[..., Service], tmp_path: Path, cluster_for: Callable[..., Cluster]
) -> None:
    ledger = tmp_path / "ledger"
    cluster = cluster_for(sqlite_url, ["solo"])
    Server(tmp_path, sqlite_url).pipeline("soak", _pipeline(ledger))
    cluster.start()
    keys = _soak(cluster, ledger)
    svc = make_service(sqlite_url)
    _check_keys(svc, keys)
    assert cluster.kills >= 3
    assert _ran_again_after_finishing(ledger) == {}


@pytest.mark.postgres
def test_soak_replicas_killed_at_random_report_every_job_that_ran_twice(
    pg_url: str, make_service: Callable[..., Service], tmp_path: Path, cluster_for: Callable[..., Cluster]
) -> None:
    ledger = tmp_path / "ledger"
    cluster = cluster_for(pg_url, ["east", "west"])
    Server(tmp_path, pg_url).pipeline("soak", _pipeline(ledger))
    cluster.start()
    keys = _soak(cluster, ledger)
    svc = make_service(pg_url)
    states = _check_keys(svc, keys)
    assert cluster.kills >= 3
    jobs = {j.id: j for s in states for j in s.jobs}  # type: ignore[attr-defined]
    for job_id, attempts in _ran_again_after_finishing(ledger).items():
        told = {a.attempt for a in jobs[job_id].lost if a.late_outcome == "succeeded"}
        assert set(attempts) <= told, (job_id, attempts, jobs[job_id].lost)
