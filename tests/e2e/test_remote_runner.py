"""Remote runners for real: ``shipyard runner`` processes talking HTTP to a ``shipyard serve``
that runs no job itself. Every job runs exactly once across runners; a runner SIGKILLed mid-job
loses it and another runner retries it; SIGTERM drains a runner (its job finishes, nothing new is
claimed); a runner of another protocol version, or a token without the runner role, is refused
with words that say why, and a runner token can do nothing else."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.access import Role
from core.labels import parse_labels
from storage.directory import Directory
from storage.secrets import SecretBox, SecretStore, generate_key
from storage.store import SqlStore
from tests.e2e.server import Server, wait_until
from tests.tcp_proxy import TcpProxy

ADMIN = "remote-admin-token"


class RemoteRunner:
    """One ``shipyard runner`` process."""

    def __init__(
        self,
        root: Path,
        server: Server,
        name: str,
        token: str,
        capacity: int = 2,
        port: int | None = None,
        labels: str = "",
        poll: float = 0.2,
    ) -> None:
        self.name = name
        self.log = root / f"runner-{name}.log"
        self.argv = [
            sys.executable, "-m", "bot.cli", "runner", "--url", f"http://127.0.0.1:{port or server.port}",
            "--name", name, "--capacity", str(capacity), "--workdir", str(root / f"runner-{name}"),
            "--lease", "3", "--poll", str(poll), "--labels", labels,
        ]  # fmt: skip
        self.env = {**os.environ, "SHIPYARD_RUNNER_TOKEN": token}
        self.env.pop("SHIPYARD_DATABASE_URL", None)  # (a runner has no database)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RemoteRunner:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: "working for" in self.log.read_text(), 20, what=f"runner {self.name} to start")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _tokens(
    db_url: str, *names: str, role: Role = Role.RUNNER, labels: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A token for each of ``names``; ``labels``: those each runner is granted (``a,b``)."""
    store = SqlStore(db_url)
    try:
        directory = Directory(store)
        now = datetime.now(UTC)
        granted = {n: parse_labels((labels or {}).get(n, "")) for n in names}
        return {n: directory.create_token(n, [role], now, by="tests", labels=granted[n]) for n in names}
    finally:
        store.dispose()


def _call(
    server: Server, method: str, path: str, token: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/v1{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    for key, value in headers.items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode() or "null")


def _trigger(server: Server, pipeline: str) -> str:
    status, run = _call(server, "POST", f"/pipelines/{pipeline}/runs", ADMIN, {})
    assert status == 202, run
    return str(run["id"])


def _run(server: Server, run_id: str) -> dict[str, Any]:
    status, run = _call(server, "GET", f"/runs/{run_id}", ADMIN)
    assert status == 200, run
    return dict(run)


def _done(server: Server, run_id: str, timeout: float = 60) -> dict[str, Any]:
    finished = ("succeeded", "failed", "canceled")
    return wait_until(
        lambda: (r := _run(server, run_id))["status"] in finished and r, timeout, 0.1, what=f"run {run_id}"
    )


@pytest.fixture
def started(tmp_path: Path) -> Any:
    running: list[Any] = []
    yield running
    for thing in reversed(running):
        thing.stop()


def _server(
    tmp_path: Path, db_url: str, started: list[Any], pipelines: dict[str, str], **settings: object
) -> Server:
    server = Server(tmp_path, db_url, capacity=0, admin_token=ADMIN, **settings)
    for name, text in pipelines.items():
        server.pipeline(name, text)
    started.append(server)
    server.start()
    return server


def _ledger_pipeline(ledger: Path) -> str:
    step = f'echo "$SHIPYARD_JOB_ID $SHIPYARD_ATTEMPT $(hostname)" | tee -a {ledger}'
    jobs = ", ".join(f"{{name: j{k}, run: '{step}'}}" for k in range(3))
    return "name: fanout\nstages:\n" + "".join(f"  - name: s{i}\n    jobs: [{jobs}]\n" for i in range(3))


def test_remote_runners_run_every_job_exactly_once(tmp_path: Path, db_url: str, started: list[Any]) -> None:
    ledger = tmp_path / "ledger.txt"
    server = _server(tmp_path, db_url, started, {"fanout": _ledger_pipeline(ledger)})
    tokens = _tokens(db_url, "eu-1", "eu-2")
    for name, token in tokens.items():
        started.append(RemoteRunner(tmp_path, server, name, token).start())
    runs = [_trigger(server, "fanout") for _ in range(8)]
    for run_id in runs:
        assert _done(server, run_id)["status"] == "succeeded"
    lines = ledger.read_text().splitlines()
    assert len(lines) == 8 * 9 and len({line.split()[0] for line in lines}) == 8 * 9  # once each
    runners = {j["runner"] for run_id in runs for s in _run(server, run_id)["stages"] for j in s["jobs"]}
    assert runners == {"eu-1", "eu-2"}  # both took work; none ran in the server
    job = _run(server, runs[0])["stages"][0]["jobs"][0]
    status, text = server.get(f"/api/v1/runs/{runs[0]}/jobs/{job['id']}/log", ADMIN)
    assert status == 200 and text.startswith(f"{job['id']} 1 "), text  # its output came over HTTP


def test_a_runner_killed_mid_job_loses_it_and_another_runner_runs_it_again(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    marker = tmp_path / "first-attempt"
    slow = f"if [ -e {marker} ]; then echo again; else touch {marker}; sleep 60; fi"
    pipeline = f"name: slow\nstages:\n  - name: only\n    jobs: [{{name: work, retries: 1, run: '{slow}'}}]\n"
    server = _server(tmp_path, db_url, started, {"slow": pipeline})
    tokens = _tokens(db_url, "eu-1", "eu-2")
    first = RemoteRunner(tmp_path, server, "eu-1", tokens["eu-1"]).start()
    started.append(first)
    run_id = _trigger(server, "slow")
    wait_until(marker.exists, 20, what="the job to start on eu-1")
    assert first.proc is not None
    first.proc.kill()  # SIGKILL: no goodbye, the lease simply stops being renewed
    first.proc.wait()
    started.append(RemoteRunner(tmp_path, server, "eu-2", tokens["eu-2"]).start())
    run = _done(server, run_id)
    job = run["stages"][0]["jobs"][0]
    assert run["status"] == "succeeded", (run["reason"], job)
    assert job["runner"] == "eu-2" and job["attempt"] == 2
    assert [a["attempt"] for a in job["lost_attempts"]] == [1]


def test_sigterm_drains_a_runner_its_job_finishes_and_nothing_new_is_claimed(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    began = tmp_path / "began"
    job = f"touch {began}; sleep 2; echo done"
    pipeline = f"name: drain\nstages:\n  - name: only\n    jobs: [{{name: work, run: '{job}'}}]\n"
    server = _server(tmp_path, db_url, started, {"drain": pipeline})
    runner = RemoteRunner(tmp_path, server, "eu-1", _tokens(db_url, "eu-1")["eu-1"]).start()
    started.append(runner)
    first = _trigger(server, "drain")
    wait_until(began.exists, 20, what="the job to start")
    assert runner.proc is not None
    runner.proc.send_signal(signal.SIGTERM)
    second = _trigger(server, "drain")
    assert runner.proc.wait(20) == 0
    assert _done(server, first)["status"] == "succeeded"
    time.sleep(0.5)
    assert _run(server, second)["status"] in ("running", "pending")  # nobody claimed it
    assert _run(server, second)["stages"][0]["jobs"][0]["status"] == "queued"


def test_only_runners_of_a_known_protocol_with_a_runner_token_may_claim(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    server = _server(tmp_path, db_url, started, {})
    runner = _tokens(db_url, "eu-1")["eu-1"]
    viewer = _tokens(db_url, "watcher", role=Role.VIEWER)["watcher"]
    body = {"runner": "eu-1", "limit": 1, "lease_s": 30}
    status, problem = _call(
        server, "POST", "/runner/claim", runner, body, **{"Shipyard-Runner-Protocol": "99"}
    )
    assert status == 409 and "takes runner protocol version 1" in problem["detail"], problem
    ok = {"Shipyard-Runner-Protocol": "1"}
    nothing = {"assignments": [], "draining": False}
    assert _call(server, "POST", "/runner/claim", runner, body, **ok) == (200, nothing)
    status, problem = _call(server, "POST", "/runner/claim", runner, {**body, "runner": "eu-2"}, **ok)
    assert status == 403 and "may act only as runner eu-1" in problem["detail"]
    for token in (ADMIN, viewer):  # an admin runs no jobs; a viewer neither
        assert _call(server, "POST", "/runner/claim", token, {**body, "runner": "x"}, **ok)[0] == 403
    assert _call(server, "GET", "/runs", runner)[0] == 403  # a runner token reads nothing
    # the runner process says so and exits when its token is refused
    bad = RemoteRunner(tmp_path, server, "eu-9", viewer)
    with bad.log.open("ab") as out:
        code = subprocess.run(
            bad.argv, env=bad.env, stdout=out, stderr=subprocess.STDOUT, timeout=30
        ).returncode
    assert code == 2 and "the server refused this runner (403)" in bad.log.read_text()


def test_a_runner_started_before_its_server_waits_for_it_then_runs_jobs(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    server = Server(tmp_path, db_url, capacity=0, admin_token=ADMIN)
    server.pipeline(
        "early", "name: early\nstages:\n  - name: only\n    jobs: [{name: one, run: 'echo hi'}]\n"
    )
    started.append(server)
    runner = RemoteRunner(tmp_path, server, "eu-1", _tokens(db_url, "eu-1")["eu-1"])
    with runner.log.open("ab") as out:
        runner.proc = subprocess.Popen(runner.argv, env=runner.env, stdout=out, stderr=subprocess.STDOUT)
    started.append(runner)
    wait_until(lambda: "server not reachable yet" in runner.log.read_text(), 20, what="the runner to wait")
    time.sleep(1)  # (several tries at --poll 0.2)
    assert runner.proc.poll() is None, runner.log.read_text()
    server.start()
    wait_until(lambda: "working for" in runner.log.read_text(), 20, what="the runner to start")
    assert _done(server, _trigger(server, "early"))["status"] == "succeeded"
    assert "Traceback" not in runner.log.read_text()


def test_a_partition_longer_than_the_lease_runs_the_job_elsewhere_and_kills_the_stale_copy(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    pids = tmp_path / "pids"
    job = f"echo $$ >> {pids}; if [ $SHIPYARD_ATTEMPT = 1 ]; then sleep 60; fi; echo done"
    pipeline = f"name: part\nstages:\n  - name: only\n    jobs: [{{name: work, retries: 1, run: '{job}'}}]\n"
    server = _server(tmp_path, db_url, started, {"part": pipeline})
    tokens = _tokens(db_url, "eu-1", "eu-2")
    with TcpProxy(("127.0.0.1", server.port)) as proxy:
        far = RemoteRunner(tmp_path, server, "eu-1", tokens["eu-1"], port=proxy.port).start()
        started.append(far)
        run_id = _trigger(server, "part")
        wait_until(pids.exists, 20, what="the job to start on eu-1")
        stale = int(pids.read_text().split()[0])
        proxy.cut()  # eu-1 can no longer reach its server; its job goes on running there
        started.append(RemoteRunner(tmp_path, server, "eu-2", tokens["eu-2"]).start())
        run = _done(server, run_id)  # the lease ran out: lost, and retried on eu-2
        job_out = run["stages"][0]["jobs"][0]
        assert run["status"] == "succeeded" and job_out["runner"] == "eu-2", (run["reason"], job_out)
        assert os.path.exists(f"/proc/{stale}")  # (the stale copy still runs behind the partition)
        proxy.start()  # eu-1 comes back: it learns its attempt is stale and kills its copy
        wait_until(lambda: not os.path.exists(f"/proc/{stale}"), 20, what="the stale copy to be killed")
    assert _run(server, run_id)["stages"][0]["jobs"][0]["attempt"] == 2


def test_a_remote_runner_gets_its_environments_secrets_and_masks_them(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    key, value = generate_key(), "s3cr3t-deploy-key-value"
    store = SqlStore(db_url)
    try:
        SecretStore(store, SecretBox(key)).set(
            "production", "DEPLOY_KEY", value, "ops", datetime.now(UTC), "cli"
        )
    finally:
        store.dispose()
    digest = "$(printf %s $DEPLOY_KEY | sha256sum | cut -c1-12)"
    job = f"echo key=$DEPLOY_KEY; echo sum={digest} >> $SHIPYARD_OUTPUT"
    pipeline = (
        "name: sealed\nstages:\n  - name: production\n    environment: production\n"
        f"    jobs: [{{name: deploy, run: '{job}'}}]\n"
    )
    server = _server(tmp_path, db_url, started, {"sealed": pipeline}, secret_key=key)
    started.append(RemoteRunner(tmp_path, server, "eu-1", _tokens(db_url, "eu-1")["eu-1"]).start())
    run = _done(server, _trigger(server, "sealed"))
    done = run["stages"][0]["jobs"][0]
    assert run["status"] == "succeeded", run["reason"]
    assert done["outputs"] == {"sum": hashlib.sha256(value.encode()).hexdigest()[:12]}  # the job had it
    status, text = server.get(f"/api/v1/runs/{run['id']}/jobs/{done['id']}/log", ADMIN)
    assert status == 200 and "key=***" in text and value not in text, text  # masked by the remote runner


def test_a_job_writing_megabytes_fast_has_every_byte_stored_in_bounded_requests(
    tmp_path: Path, db_url: str, started: list[Any]
) -> None:
    """A job writes ~4 MB at once to a server that takes bodies of at most 100 kB: the runner sends
    its output in requests of at most 256 KiB, halves them on each 413, and the stored log is
    exactly what the job wrote."""
    wrote = tmp_path / "wrote.txt"
    job = f"head -c 3000000 /dev/urandom | base64 | tee {wrote}"
    pipeline = f"name: loud\nstages:\n  - name: only\n    jobs: [{{name: work, run: '{job}'}}]\n"
    server = _server(tmp_path, db_url, started, {"loud": pipeline}, max_body_bytes=100_000)
    runner = RemoteRunner(tmp_path, server, "eu-1", _tokens(db_url, "eu-1")["eu-1"])
    runner.argv += ["--max-log-bytes", str(16 << 20)]
    started.append(runner.start())
    run = _done(server, _trigger(server, "loud"))
    assert run["status"] == "succeeded", run["reason"]
    job_id = run["stages"][0]["jobs"][0]["id"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/api/v1/runs/{run['id']}/jobs/{job_id}/log"
    )
    request.add_header("Authorization", f"Bearer {ADMIN}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        stored = answer.read()
    expected = wrote.read_bytes()
    assert len(expected) > 4_000_000
    assert len(stored) == len(expected) and stored == expected
    said = runner.log.read_text()
    assert "refused a log request (413); sending at most 65536 bytes" in said, said  # (it shrank)
    assert "answered 413" not in said  # (and nothing was refused for good)
