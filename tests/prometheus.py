"""A real Prometheus for tests: Debian's ``/usr/bin/prometheus`` on a free loopback port.

It scrapes every second (``scrape_interval`` and ``evaluation_interval`` 1s), keeps its data in
the test's temporary folder, and finds its targets in a file it watches, so a test can add them
while it runs::

    def test_error_rate(prometheus: Prometheus, web_service: WebService) -> None:
        prometheus.scrape(web_service.target)         # and wait until it is scraped
        prometheus.wait_for('sum(rate(http_requests_total[5s]))', lambda v: v > 0)
        check = {"prometheus": {"url": prometheus.url, "query": ...}, "fail_if": "> 0.01"}

Use short rate windows (``[5s]``) and wait-until loops: a 1s scrape makes a rate over 5s
meaningful after about two scrapes. Without the binary the tests that use it are skipped with a
message, unless ``SHIPYARD_REQUIRE_PROMETHEUS=1`` (CI), which turns that into a failure;
``SHIPYARD_PROMETHEUS`` names another binary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import free_port

BINARY = os.environ.get("SHIPYARD_PROMETHEUS", "/usr/bin/prometheus")
REQUIRE = os.environ.get("SHIPYARD_REQUIRE_PROMETHEUS") == "1"

_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: {job}
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


def prometheus_binary() -> str:
    """The binary to run; skips the test (fails it under ``SHIPYARD_REQUIRE_PROMETHEUS=1``)
    when there is none."""
    if os.access(BINARY, os.X_OK):
        return BINARY
    message = f"Prometheus is not installed at {BINARY} (apt-get install prometheus)"
    if REQUIRE:
        pytest.fail(message + " (required: SHIPYARD_REQUIRE_PROMETHEUS=1)")
    pytest.skip(message)


class Prometheus:
    """One Prometheus server; ``start()``/``stop()`` or use it as a context manager."""

    def __init__(self, root: Path, targets: tuple[str, ...] = (), *, job: str = "test") -> None:
        self.root = root
        self.job = job
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "prometheus.log"
        self._targets: dict[str, dict[str, str]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self._targets_file = root / "targets.json"
        self.scrape(*targets, wait=False)

    def start(self, timeout: float = 30.0) -> Prometheus:
        binary = prometheus_binary()
        config = self.root / "prometheus.yml"
        config.write_text(
            _CONFIG.format(job=json.dumps(self.job), targets=json.dumps(str(self._targets_file)))
        )
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._proc.returncode}:\n{self.log.read_text()}")
            if self._get("/-/ready")[0] == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def scrape(self, *targets: str, wait: bool = True, **labels: str) -> None:
        """Scrape ``targets`` (``host:port``, serving ``/metrics``) from now on, with ``labels``
        added to their series; with ``wait``, return once each has been scraped."""
        for target in targets:
            self._targets[target] = labels
        groups = [{"targets": [t], "labels": extra} for t, extra in self._targets.items()]
        staged = self._targets_file.with_suffix(".tmp")
        staged.write_text(json.dumps(groups))
        staged.replace(self._targets_file)  # whole, as Prometheus watches the file
        if wait and self._proc is not None:
            for target in targets:
                self.wait_for(f'up{{instance="{target}"}}', lambda up: up == 1, what=f"{target} scraped")

    def query(self, promql: str) -> dict[str, Any]:
        """The ``data`` of an instant query; raises ``AssertionError`` with Prometheus' error."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        answer = json.loads(body) if body else {}
        assert answer.get("status") == "success", f"{promql}: HTTP {status} {body}"
        return dict(answer["data"])

    def value(self, promql: str) -> float | None:
        """The query's one number, None while it has no data."""
        data = self.query(promql)
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        result = data["result"]
        assert len(result) <= 1, f"{promql} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def wait_for(
        self, promql: str, predicate: Callable[[float], bool], timeout: float = 20.0, what: str = ""
    ) -> float:
        """Wait until the query has a value for which ``predicate`` holds; returns it."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.value(promql)
            if value is not None and predicate(value):
                return value
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout}s waiting for {what or promql} (last value {value})")

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""
