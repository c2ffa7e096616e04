"""``bench/api.py``'s seeding, small: the full bench takes minutes and runs by hand, but the
rows it writes must keep fitting the schema, or the bench fails before it measures anything
(as it did when ``run.kind`` and ``deployment.kind`` arrived without a server default)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.api import ENVIRONMENT, PIPELINE, PIPELINE_NAME, Dialect, insert_select, seed, seed_statements
from core.definition import parse_pipeline
from core.runtime.service import Service
from core.states import RunStatus
from storage.reads import Reads
from storage.store import SqlStore
from tests.browser import chromium_path
from tests.factory import ROOT


def test_seeding_writes_runs_the_application_reads(sqlite_url: str) -> None:
    store = SqlStore(sqlite_url)
    Service(store).register_pipeline(parse_pipeline(PIPELINE), PIPELINE)
    store.dispose()  # the seeder wants the database to itself, as after the bench stops the server

    seeded = seed(sqlite_url, 1_000, sample=50, analyze=False)
    assert seeded.runs == 1_000 and seeded.rows == 4_000 and len(seeded.sample_ids) == 50

    store = SqlStore(sqlite_url)
    try:
        reads = Reads(store)
        for run_id in seeded.sample_ids[:5]:
            state = reads.run(run_id)
            assert state is not None and state.run.pipeline == PIPELINE_NAME
            assert state.run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED)
            assert state.run.kind == "deploy" and state.run.requested_by == ("seed",)
            assert [s.environment for s in state.stages] == [ENVIRONMENT]
        newest = reads.deployments(ENVIRONMENT, None, 50)
        assert [d.run_number for d in newest[:3]] == [1_000, 999, 998]
        assert {d.kind for d in newest} == {"deploy"}
    finally:
        store.dispose()


def test_columns_the_seeder_does_not_name_get_the_applications_default() -> None:
    statements = dict(seed_statements(Dialect(sqlite=True)))
    for table in ("run", "deployment"):
        compiled = statements[table].compile()
        assert compiled.params["default_kind"] == "deploy", table


def test_a_new_column_without_any_default_stops_the_bench_by_name() -> None:
    table = sa.Table(
        "probe",
        sa.MetaData(),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, default="deploy"),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("needed", sa.Integer, nullable=False),
    )
    with pytest.raises(SystemExit, match=r"table probe .*\['needed'\] need a value and have no default"):
        insert_select(table, {"id": "'x'"}, "")
    statement = insert_select(table, {"id": "'x'", "needed": "1"}, "")
    assert str(statement) == "INSERT INTO probe (id, needed, kind) SELECT 'x', 1, :default_kind "
    with pytest.raises(SystemExit, match=r"it writes \['gone'\], which are gone"):
        insert_select(table, {"id": "'x'", "needed": "1", "gone": "2"}, "")


def test_the_rollout_bench_aborts_a_canary_through_real_nginx_and_prometheus(tmp_path: Path) -> None:
    """``bench/rollout.py`` with one abort: it starts everything it needs and prints its figures."""
    nginx, prometheus = "/usr/sbin/nginx", shutil.which("prometheus") or "/usr/bin/prometheus"
    for binary in (nginx, prometheus):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} is not installed")
    result = _bench(tmp_path, 180, "bench.rollout", "--aborts", "1", "--rate", "100", "--quiet", "0.5")
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: over target on a busy machine
    assert "analysis at step 2 (canary at 20%) failed: error-rate = " in result.stdout, result.stdout
    assert re.search(r"traffic .* p99 \d+\.\d+ s", result.stdout), result.stdout


def test_the_runner_bench_runs_jobs_on_runner_processes_and_streams_a_log(tmp_path: Path) -> None:
    """``bench/runners.py``, tiny: real runner processes take every job, claims are timed from
    the database's own events, and a job's megabyte of output is stored whole."""
    result = _bench(
        tmp_path, 240, "bench.runners", "--runners", "1", "--jobs", "20", "--width", "10",
        "--capacity", "4", "--samples", "3", "--log-mb", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"1 runner\(s\): +\d+\.\d jobs/s", result.stdout), result.stdout
    assert re.search(r"claim latency, one server: +p50 +\d+\.\d ms +p99 +\d+\.\d ms +\(n=3\)", result.stdout)
    stored = re.search(r"1 MB log: +\d+\.\d MB/s, (\d+) bytes stored", result.stdout)
    assert stored is not None, result.stdout
    assert int(stored.group(1)) == 1024 * 1024 + 255  # 1 MiB of base64 in 256 lines of 4 KiB: all of it
    assert re.search(r"MB peak while written, \d+ MB peak while read back", result.stdout), result.stdout


def test_the_idle_bench_measures_a_server_with_metrics_off_and_on(tmp_path: Path) -> None:
    """``bench/idle.py``, for two seconds each: both servers start, the one with metrics is
    scraped, and each line says its figure against the target."""
    result = _bench(tmp_path, 120, "bench.idle", "--seconds", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    figure = r" +\d+\.\d\d % of a core \(\d+\.\d\d s CPU\) +target <= 0\.2 %: (met|NOT met)"
    assert re.search(r"metrics off" + figure, result.stdout), result.stdout
    assert re.search(r"metrics on \(1 scrapes\)" + figure, result.stdout), result.stdout


def test_the_web_bench_loads_a_run_page_with_a_megabyte_of_log_and_follows_a_live_one(
    tmp_path: Path,
) -> None:
    """``bench/web.py``, tiny, in the real Chromium: the page gets all of the 1 MB log, and the
    live lines reach it (each line says its figure against the target)."""
    browser = chromium_path()
    result = _bench(
        tmp_path, 180, "bench.web", "--loads", "2", "--lines", "3", "--every", "0.4", "--chromium", browser
    )
    assert result.returncode == 0, result.stdout + result.stderr
    load = r"\| run page with a 1 MB log, loaded with all of it \(2 loads\) \| \d+ ms \| \d+ ms \| <= 300 ms"
    assert re.search(load, result.stdout), result.stdout
    assert re.search(r"\| a new log line on the page \(2 lines\) \| \d+ ms", result.stdout), result.stdout


def _bench(tmp_path: Path, timeout: float, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args``, from the repository, its temporary files under ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
