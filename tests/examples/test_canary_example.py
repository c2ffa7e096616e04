"""The worked example in examples/canary/ works as its README says: the configuration loads with
its nginx router and the canary's check, the pipeline validates against it (the router and the
check it names exist there), and the example service answers with its pool and version, counts
what it served for Prometheus, and fails on demand."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import load_settings
from core.definition import parse_pipeline
from core.strategies import strategy_problems
from tests.e2e.server import free_port, wait_until
from tests.factory import ROOT
from tests.test_docs import broken_links

EXAMPLE = ROOT / "examples" / "canary"


def _request(method: str, url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[str]:
    """``service.py`` as the canary pool, on a free port: its base URL."""
    port = free_port()
    with (tmp_path / "service.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE / "service.py"), "--pool", "canary", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"service.py exited: {(tmp_path / 'service.log').read_text()}")
        try:
            return _request("GET", url + "/metrics")[0] == 200
        except OSError:
            return False

    try:
        wait_until(answers, timeout=15, what="the example service")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _served(url: str) -> dict[str, float]:
    text = _request("GET", url + "/metrics")[1]
    return {c: float(n) for c, n in re.findall(r'^http_requests_total\{code="(\d+)"\} (\S+)$', text, re.M)}


def test_the_configuration_has_the_nginx_router_and_the_canarys_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPYARD_CONFIG", str(EXAMPLE / "shipyard.yml"))
    production = load_settings().environment("production")
    router = production.routers["web"]
    assert router.nginx is not None and router.nginx.upstream == "web"
    assert router.nginx.include == "/tmp/shipyard-canary/shipyard/web.conf"
    assert router.nginx.test[-1] == "-t" and router.nginx.reload[-2:] == ["-s", "reload"]
    assert dict(router.pools) == {"stable": ["127.0.0.1:8101"], "canary": ["127.0.0.1:8102"]}
    assert production.checks["error-rate"].kind == "prometheus"
    assert 'pool="canary"' in (production.checks["error-rate"].prometheus or pytest.fail()).query
    # nginx.conf includes the file the router writes, relative to its prefix
    assert "include shipyard/web.conf;" in (EXAMPLE / "nginx.conf").read_text()


def test_the_pipeline_validates_against_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_CONFIG", str(EXAMPLE / "shipyard.yml"))
    environments = load_settings().environments
    text = (EXAMPLE / "pipelines" / "web.yml").read_text()
    definition = parse_pipeline(text)
    strategy = definition.stages[0].strategy
    assert strategy is not None and strategy.canary is not None
    assert [s.kind for s in strategy.steps] == [
        "set_weight",
        "pause",
        "analysis",
        "set_weight",
        "pause",
        "set_weight",
    ]
    assert [s.set_weight for s in strategy.steps if s.set_weight] == [10, 50, 100]
    assert strategy_problems(definition, environments) == []
    # and it would be refused if it named a router or a check the configuration lacks
    wrong = parse_pipeline(text.replace("router: web", "router: api"))
    problems = strategy_problems(wrong, environments)
    assert problems == ["stages.0.strategy.canary.router: production has no router 'api' (routers: web)"]
    wrong = parse_pipeline(text.replace("[error-rate]", "[latency]"))
    assert strategy_problems(wrong, environments) == [
        "stages.0.strategy.canary.steps.2.analysis.checks: production declares no check 'latency' "
        "(checks: error-rate)"
    ]


def test_the_service_answers_with_its_version_and_fails_on_demand(canary: str) -> None:
    assert _request("GET", canary + "/") == (200, "canary 1.0.0\n")
    status, body = _request("POST", canary + "/deploy?version=2.0.0")
    assert (status, json.loads(body)["previous"]) == (200, "1.0.0")
    assert _request("GET", canary + "/") == (200, "canary 2.0.0\n")
    assert _served(canary) == {"200": 2.0, "500": 0.0}  # only what it served: /metrics is not counted

    assert _request("POST", canary + "/break")[0] == 200
    assert _request("GET", canary + "/") == (500, "canary 2.0.0 failed\n")
    assert _served(canary)["500"] == 1.0
    status, body = _request("POST", canary + "/break?share=2")
    assert status == 400 and json.loads(body)["error"].startswith("share: ")
    assert _request("POST", canary + "/deploy?version=")[0] == 400

    _request("POST", canary + "/deploy?version=2.0.1")  # a deploy ends the failure
    assert _request("GET", canary + "/") == (200, "canary 2.0.1\n")


def test_a_bad_version_fails_half_its_requests(canary: str) -> None:
    _request("POST", canary + "/deploy?version=3.0.0-bad")
    codes = [_request("GET", canary + "/")[0] for _ in range(200)]
    assert 60 <= codes.count(500) <= 140, codes.count(500)


def test_the_walkthrough_links_land() -> None:
    assert broken_links(EXAMPLE / "README.md") == []
