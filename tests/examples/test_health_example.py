"""The worked example in examples/health/ works as its README says: the configuration loads, the
pipeline validates and deploys, and the example service answers its checks (measured for real,
Prometheus included) and fails requests when a bad version is deployed."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import Settings, load_settings
from core.checks import CheckResult, Measurement
from core.runtime.clock import utcnow
from core.runtime.measure import measure
from tests.e2e.server import free_port, wait_until
from tests.factory import ROOT, cli_environment
from tests.prometheus import Prometheus
from tests.test_docs import broken_links

EXAMPLE = ROOT / "examples" / "health"
#: ten times the example's traffic, so that counts add up within a second
RATE = ("--requests-per-second", "200")


class ExampleService:
    """``examples/health/service.py`` running as its own process on a free loopback port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = f"127.0.0.1:{self.port}"
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ExampleService:
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, str(EXAMPLE / "service.py"), "--port", str(self.port), *RATE],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(lambda: self._answers() or self._exited(), timeout=15, what="the example service")
        return self

    def _answers(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def _exited(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"service.py exited with {self._proc.returncode}:\n{self.log.read_text()}")
        return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def get(self, path: str) -> tuple[int, str]:
        return _request("GET", self.url + path)

    def post(self, path: str) -> tuple[int, str]:
        return _request("POST", self.url + path)

    def health(self) -> Any:
        return json.loads(self.get("/healthz")[1])

    def requests(self) -> dict[str, float]:
        """``http_requests_total`` by code, as ``/metrics`` shows it."""
        found = re.findall(r'^http_requests_total\{code="(\d+)"\} (\S+)$', self.get("/metrics")[1], re.M)
        return {code: float(count) for code, count in found}


def _request(method: str, url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ExampleService]:
    running = ExampleService(tmp_path / "service.log").start()
    yield running
    running.stop()


def example_settings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    production: str = "",
    prometheus: str = "",
    staging: str = "",
) -> Settings:
    """The example's ``shipyard.yml`` as the server loads it, its services' and Prometheus'
    addresses replaced by the test's when given."""
    text = (EXAMPLE / "shipyard.yml").read_text()
    for fixed, ours in (
        ("127.0.0.1:8081", production),
        ("127.0.0.1:8082", staging),
        ("127.0.0.1:9090", prometheus),
    ):
        text = text.replace(fixed, ours or fixed)
    config = tmp_path / "shipyard.yml"
    config.write_text(text)
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config))
    return load_settings()


async def measure_check(settings: Settings, env: str, check: str, workdir: Path) -> Measurement:
    return await measure(check, settings.environment(env).checks[check], now=utcnow, workdir=workdir)


def shipyard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=cli_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# -- the files -----------------------------------------------------------------------------------


def test_the_configuration_loads_with_verification_on_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = example_settings(tmp_path, monkeypatch)
    assert settings.environments.path == ["staging", "production"]
    production = settings.environment("production")
    assert {name: c.kind for name, c in production.checks.items()} == {
        "error-rate": "prometheus",
        "smoke": "http",
    }
    assert production.health is not None and production.health.checks == ["error-rate", "smoke"]
    verify = production.verify
    assert verify is not None
    assert (verify.checks, verify.duration, verify.failure_limit, verify.on_failure) == (
        ["error-rate", "smoke"],
        120.0,
        2,
        "rollback",
    )
    staging = settings.environment("staging")
    assert staging.verify is None
    assert {name: c.kind for name, c in staging.checks.items()} == {
        "error-rate": "prometheus",
        "smoke": "http",
        "version": "command",
    }
    smoke = production.checks["smoke"].http
    assert smoke is not None and (smoke.json_path, smoke.max_latency) == ("status", 0.5)


def test_the_pipeline_validates(tmp_path: Path) -> None:
    result = shipyard("validate", str(EXAMPLE / "pipelines"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok  " in result.stdout and "shop (3 stages)" in result.stdout


# -- the service ---------------------------------------------------------------------------------


def test_a_bad_version_fails_a_share_of_requests_and_a_good_one_ends_it(service: ExampleService) -> None:
    assert service.health() == {"status": "ok", "version": "0.0.0"}
    assert set(service.requests()) == {"200", "500"}  # both series from the start
    wait_until(lambda: service.requests()["200"] > 0, timeout=5, what="requests counted")

    status, body = service.post("/deploy?version=2.0.0-bad")
    assert (status, json.loads(body)["previous"]) == (200, "0.0.0")
    assert service.health() == {"status": "ok", "version": "2.0.0-bad"}  # up, but failing users
    before = service.requests()
    after = wait_until(
        lambda: (now := service.requests())["500"] - before["500"] >= 60 and now,
        timeout=10,
        what="5xx counted",
    )
    failed, served = after["500"] - before["500"], sum(after.values()) - sum(before.values())
    assert 0.2 < failed / served < 0.4, (failed, served)

    assert service.post("/deploy?version=2.0.1")[0] == 200
    before = service.requests()
    wait_until(lambda: sum(service.requests().values()) - sum(before.values()) >= 200, timeout=10)
    assert service.requests()["500"] - before["500"] <= 1  # 0.2 % of 200 odd, and what was due


def test_deploying_without_a_version_is_refused_naming_it(service: ExampleService) -> None:
    status, body = service.post("/deploy?version=")
    assert status == 400
    assert json.loads(body)["error"].startswith("version: ")
    assert service.health()["version"] == "0.0.0"


def test_the_pipeline_deploys_its_artifact_to_the_service(tmp_path: Path) -> None:
    production = ExampleService(tmp_path / "production.log").start()
    staging = ExampleService(tmp_path / "staging.log").start()
    try:
        pipeline = (EXAMPLE / "pipelines" / "shop.yml").read_text()
        pipeline = pipeline.replace("127.0.0.1:8081", production.target)
        pipeline = pipeline.replace("127.0.0.1:8082", staging.target)
        (tmp_path / "shop.yml").write_text(pipeline)
        result = shipyard("run", "shop.yml", "-p", "version=2.0.0-bad", "--yes", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "✓ production/deploy succeeded" in result.stdout
        # the deploy jobs received the artifact the build registered (an empty version is a 400)
        assert production.health()["version"] == staging.health()["version"] == "2.0.0-bad"
    finally:
        production.stop()
        staging.stop()


# -- its checks, measured ------------------------------------------------------------------------


async def test_the_smoke_and_command_checks_pass_against_the_service(
    service: ExampleService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = example_settings(tmp_path, monkeypatch, production=service.target, staging=service.target)
    smoke = await measure_check(settings, "production", "smoke", tmp_path)
    assert (smoke.result, smoke.value) == (CheckResult.PASSED, "ok"), smoke.detail

    service.post("/deploy?version=2.0.0-bad")
    version = await measure_check(settings, "staging", "version", tmp_path)
    assert (version.result, version.value) == (CheckResult.PASSED, "2.0.0-bad"), version.detail
    # a bad release still says ok: only its error rate shows it
    assert (await measure_check(settings, "production", "smoke", tmp_path)).result is CheckResult.PASSED

    service.stop()
    down = await measure_check(settings, "staging", "version", tmp_path)
    assert down.result is CheckResult.FAILED and "Connection refused" in (down.value or ""), down


async def test_the_error_rate_check_passes_then_fails_a_bad_release(
    service: ExampleService, prometheus: Prometheus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = example_settings(
        tmp_path, monkeypatch, production=service.target, prometheus=prometheus.url.removeprefix("http://")
    )
    prometheus.scrape(service.target, environment="production")

    async def error_rate() -> Measurement:
        return await measure_check(settings, "production", "error-rate", tmp_path)

    measured = await error_rate()
    while measured.result is CheckResult.INCONCLUSIVE:  # no data until two scrapes
        wait_until(lambda: prometheus.value('sum(rate(http_requests_total{environment="production"}[30s]))'))
        measured = await error_rate()
    assert measured.result is CheckResult.PASSED, measured.detail

    service.post("/deploy?version=2.0.0-bad")
    deadline = time.monotonic() + 20
    failed = await error_rate()
    while failed.result is not CheckResult.FAILED:  # Prometheus sees it a scrape or two later
        assert time.monotonic() < deadline, f"still {failed.result}: {failed.detail}"
        await asyncio.sleep(0.2)
        failed = await error_rate()
    assert float(failed.value or 0) > 0.05 and failed.detail.startswith("error-rate = ")


def test_the_walkthrough_links_land() -> None:
    assert broken_links(EXAMPLE / "README.md") == []
