"""Measuring checks against real parts: an HTTP service on loopback, a real Prometheus scraping
it, and real processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import core.runtime.measure as measure_module
from core.checks import CheckDef, CheckResult, Measurement
from core.runtime.clock import utcnow
from core.runtime.measure import measure
from tests.checks.services import WebService
from tests.e2e.server import free_port
from tests.prometheus import Prometheus

ERROR_RATE = 'sum(rate(http_requests_total{code=~"5.."}[5s])) / sum(rate(http_requests_total[5s]))'


def check(**spec: Any) -> CheckDef:
    return CheckDef.model_validate(spec)


async def run(spec: CheckDef, workdir: Path, name: str = "probe", **kwargs: Any) -> Measurement:
    return await measure(name, spec, now=utcnow, workdir=workdir, **kwargs)


async def eventually(
    make: Callable[[], Awaitable[Measurement]], accept: Callable[[Measurement], bool], timeout: float = 20.0
) -> Measurement:
    """Measure until ``accept`` holds (Prometheus sees a change only after a scrape or two)."""
    deadline = time.monotonic() + timeout
    while True:
        measured = await make()
        if accept(measured):
            return measured
        assert time.monotonic() < deadline, f"still {measured} after {timeout}s"
        await asyncio.sleep(0.2)


# --- http ---


def healthz(service: WebService, timeout: float = 5, **probe: Any) -> CheckDef:
    return check(http={"url": f"{service.url}/healthz", **probe}, timeout=timeout)


async def test_http_passes_with_the_latency_as_value(web_service: WebService, tmp_path: Path) -> None:
    measured = await run(healthz(web_service, max_latency="2s"), tmp_path, "smoke")
    assert measured.check == "smoke"
    assert measured.result is CheckResult.PASSED
    assert measured.value is not None and measured.value.isdigit()
    assert measured.detail == f"status 200 in {measured.value} ms"
    assert 0 < measured.took < 2


async def test_http_fails_on_another_status(web_service: WebService, tmp_path: Path) -> None:
    web_service.health_status = 503
    measured = await run(healthz(web_service), tmp_path)
    assert (measured.result, measured.value, measured.detail) == (
        CheckResult.FAILED,
        "503",
        "status 503, expected 200",
    )
    web_service.health_status = 204
    assert (await run(healthz(web_service, status=204), tmp_path)).result is CheckResult.PASSED


async def test_http_fails_when_slower_than_max_latency(web_service: WebService, tmp_path: Path) -> None:
    web_service.health_delay = 0.3
    measured = await run(healthz(web_service, max_latency="100ms"), tmp_path)
    assert measured.result is CheckResult.FAILED
    assert re.fullmatch(r"latency \d+ ms > 100 ms", measured.detail), measured.detail
    assert measured.value is not None and int(measured.value) >= 300


@pytest.mark.parametrize(
    ("path", "condition", "value"),
    [
        ("status", '== "ok"', "ok"),
        ("checks.db.ok", "== true", "true"),
        ("items.0.state", "== 'up'", "up"),
    ],
)
async def test_http_json_condition_holds(
    web_service: WebService, tmp_path: Path, path: str, condition: str, value: str
) -> None:
    measured = await run(healthz(web_service, json_path=path, condition=condition), tmp_path)
    assert (measured.result, measured.value) == (CheckResult.PASSED, value)


@pytest.mark.parametrize(
    ("body", "path", "value", "detail"),
    [
        ({"status": "degraded"}, "status", "degraded", "status = 'degraded', expected == \"ok\""),
        ({"status": None}, "status", "null", 'status = null, expected == "ok"'),
        ({"queue": 812}, "queue", "812", "queue = 812, expected < 500"),
        (
            {"status": "ok"},
            "checks.db",
            None,
            "the answer has no 'checks.db': the answer has no key 'checks'",
        ),
        ({"items": []}, "items.0", None, "the answer has no 'items.0': items has 0 items"),
        ("all good", "status", None, "the answer is not JSON (text/plain): 'all good'"),
    ],
)
async def test_http_json_condition_fails(
    web_service: WebService, tmp_path: Path, body: Any, path: str, value: str | None, detail: str
) -> None:
    web_service.health_body = body
    condition = "< 500" if path == "queue" else '== "ok"'
    measured = await run(healthz(web_service, json_path=path, condition=condition), tmp_path)
    assert (measured.result, measured.value, measured.detail) == (CheckResult.FAILED, value, detail)


async def test_http_status_check_passes_whatever_the_size_of_the_page(
    web_service: WebService, tmp_path: Path
) -> None:
    """Without ``json_path`` only the status and the latency matter: a big status page (more
    than the most read for a JSON value) is read to its end and passes; one whose value is
    wanted is refused, naming where."""
    web_service.health_body = "<html>" + "x" * (2 * measure_module.MAX_BODY) + "</html>"
    measured = await run(healthz(web_service, max_latency="2s"), tmp_path)
    assert measured.result is CheckResult.PASSED, measured.detail
    measured = await run(healthz(web_service, json_path="status", condition='== "ok"'), tmp_path)
    assert (measured.result, measured.detail) == (
        CheckResult.ERROR,
        f"GET {web_service.url}/healthz: the answer is larger than 1024 KiB",
    )


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("application/json; charset=iso-8859-1", "latin-1"),
        ("application/json; charset=utf-16", "utf-16"),
        ("application/json", "utf-8"),
    ],
)
async def test_http_json_is_read_in_the_charset_its_answer_declares(
    web_service: WebService, tmp_path: Path, content_type: str, encoding: str
) -> None:
    web_service.health_body = '{"status": "prêt"}'.encode(encoding)
    web_service.health_content_type = content_type
    measured = await run(healthz(web_service, json_path="status", condition='== "prêt"'), tmp_path)
    assert (measured.result, measured.value) == (CheckResult.PASSED, "prêt"), measured.detail


async def test_http_json_in_bytes_its_charset_cannot_read_is_not_json(
    web_service: WebService, tmp_path: Path
) -> None:
    web_service.health_body = b'{"status": "\xff\xfe ok"}'
    web_service.health_content_type = "application/json; charset=utf-8"
    measured = await run(healthz(web_service, json_path="status", condition='== "ok"'), tmp_path)
    assert measured.result is CheckResult.FAILED
    assert measured.detail.startswith("the answer is not JSON (application/json): ")
    web_service.health_content_type = "application/json; charset=no-such-charset"
    measured = await run(healthz(web_service, json_path="status", condition='== "ok"'), tmp_path)
    assert measured.result is CheckResult.FAILED
    assert measured.detail.startswith("the answer is not JSON (application/json): ")


async def test_http_refused_connection_is_an_error(tmp_path: Path) -> None:
    spec = check(http={"url": f"http://127.0.0.1:{free_port()}/healthz"})
    measured = await run(spec, tmp_path)
    assert measured.result is CheckResult.ERROR
    assert measured.value is None
    assert "Cannot connect to host 127.0.0.1" in measured.detail


async def test_http_timeout_is_an_error(web_service: WebService, tmp_path: Path) -> None:
    web_service.health_delay = 5
    measured = await run(healthz(web_service, timeout=0.5), tmp_path)
    assert (measured.result, measured.detail) == (
        CheckResult.ERROR,
        f"GET {web_service.url}/healthz: timed out after 0.5s",
    )
    assert measured.took < 2


async def test_http_unknown_host_is_an_error(tmp_path: Path) -> None:
    measured = await run(check(http={"url": "http://no-such-host.invalid/"}, timeout=3), tmp_path)
    assert measured.result is CheckResult.ERROR
    assert "no-such-host.invalid" in measured.detail


# --- prometheus ---


def promql(prometheus: Prometheus | str, query: str, **conditions: str) -> CheckDef:
    url = prometheus if isinstance(prometheus, str) else prometheus.url
    return check(prometheus={"url": url, "query": query}, **conditions)


async def test_prometheus_passes_while_healthy_and_fails_once_the_service_fails(
    prometheus: Prometheus, web_service: WebService, tmp_path: Path
) -> None:
    prometheus.scrape(web_service.target)
    spec = promql(prometheus, ERROR_RATE, fail_if="> 0.01", pass_if="< 0.005")

    async def error_rate() -> Measurement:
        return await run(spec, tmp_path, "error-rate")

    healthy = await eventually(error_rate, lambda m: m.result is not CheckResult.INCONCLUSIVE)
    assert (healthy.result, healthy.value, healthy.detail) == (
        CheckResult.PASSED,
        "0",
        "error-rate = 0 < 0.005",
    )
    web_service.fail(0.5)
    failing = await eventually(error_rate, lambda m: m.result is CheckResult.FAILED)
    assert re.fullmatch(r"error-rate = 0\.\d+ > 0\.01", failing.detail), failing.detail
    assert 0.01 < float(failing.value or 0) <= 0.5


@pytest.mark.parametrize(
    ("query", "conditions", "result", "detail"),
    [
        ("0.034", {"fail_if": "> 0.01", "pass_if": "< 0.005"}, "failed", "error-rate = 0.034 > 0.01"),
        ("0.002", {"fail_if": "> 0.01", "pass_if": "< 0.005"}, "passed", "error-rate = 0.002 < 0.005"),
        (
            "0.007",
            {"fail_if": "> 0.01", "pass_if": "< 0.005"},
            "inconclusive",
            "error-rate = 0.007 (neither > 0.01 nor < 0.005)",
        ),
        ("0.007", {"fail_if": "> 0.01"}, "passed", "error-rate = 0.007 (not > 0.01)"),
        ("0.007", {"pass_if": "< 0.005"}, "failed", "error-rate = 0.007 (not < 0.005)"),
        ("vector(3)", {"pass_if": ">= 3"}, "passed", "error-rate = 3 >= 3"),  # a one-sample vector
    ],
)
async def test_prometheus_conditions(
    prometheus: Prometheus, tmp_path: Path, query: str, conditions: dict[str, str], result: str, detail: str
) -> None:
    measured = await run(promql(prometheus, query, **conditions), tmp_path, "error-rate")
    assert (measured.result, measured.detail) == (CheckResult(result), detail)
    assert measured.value == query.removeprefix("vector(").removesuffix(")")


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ('http_requests_total{code="999"}', "no data: the query returned an empty result"),
        ("vector(1) > 2", "no data: the query returned an empty result"),
        ("0/0", "probe = NaN (no data, e.g. a rate divided by zero)"),
    ],
)
async def test_prometheus_no_data_is_inconclusive(
    prometheus: Prometheus, tmp_path: Path, query: str, detail: str
) -> None:
    measured = await run(promql(prometheus, query, fail_if="> 0"), tmp_path)
    assert (measured.result, measured.detail) == (CheckResult.INCONCLUSIVE, detail)


async def test_prometheus_rejecting_the_query_is_an_error_in_its_own_words(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    status, body = prometheus._get("/api/v1/query?" + urllib.parse.urlencode({"query": "sum("}))
    assert status == 400
    words = json.loads(body)["error"]
    assert "parse error" in words
    measured = await run(promql(prometheus, "sum(", fail_if="> 0.01"), tmp_path)
    assert (measured.result, measured.value, measured.detail) == (
        CheckResult.ERROR,
        None,
        f"Prometheus rejected the query: {words}",
    )


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        (
            'label_replace(vector(1), "a", "x", "", "") or vector(2)',
            "the query returned 2 series; aggregate it to one, e.g. with sum()",
        ),
        ("up[5s]", "the query returned a range vector; use an instant vector, e.g. rate(x[5m])"),
        ('"text"', "the query returned a string, not a number"),
    ],
)
async def test_prometheus_answer_that_is_not_one_number_is_an_error(
    prometheus: Prometheus, tmp_path: Path, query: str, detail: str
) -> None:
    measured = await run(promql(prometheus, query, fail_if="> 0.01"), tmp_path)
    assert (measured.result, measured.detail) == (CheckResult.ERROR, detail)


async def test_prometheus_unreachable_is_an_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    measured = await run(promql(url, "up", fail_if="< 1"), tmp_path)
    assert measured.result is CheckResult.ERROR
    assert measured.detail.startswith(f"Prometheus at {url}: Cannot connect to host 127.0.0.1")


async def test_a_server_that_is_not_prometheus_is_an_error(web_service: WebService, tmp_path: Path) -> None:
    measured = await run(promql(web_service.url, "up", fail_if="< 1"), tmp_path)
    assert measured.result is CheckResult.ERROR
    assert measured.detail.startswith(
        f"Prometheus at {web_service.url} answered HTTP 404, not a query result"
    )


async def test_prometheus_timeout_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        spec = check(prometheus={"url": url, "query": "up"}, fail_if="< 1", timeout=0.5)
        measured = await run(spec, tmp_path)
    assert (measured.result, measured.detail) == (
        CheckResult.ERROR,
        f"Prometheus at {url}: timed out after 0.5s",
    )


# --- command ---


def command(*argv: str, timeout: float = 10) -> CheckDef:
    return check(command=list(argv), timeout=timeout)


@pytest.mark.parametrize(
    ("script", "result", "value", "detail"),
    [
        ("echo checking; echo 42; echo", "passed", "42", "exit 0: 42"),
        ("echo warming up; exit 2", "inconclusive", "warming up", "exit 2: warming up"),
        ("echo 'replica lag 12s' >&2; exit 1", "failed", "replica lag 12s", "exit 1: replica lag 12s"),
        ("exit 3", "failed", None, "exit 3"),
        ("kill -SEGV $$", "failed", None, "killed by SIGSEGV"),
    ],
)
async def test_command_exit_codes_and_last_line(
    tmp_path: Path, script: str, result: str, value: str | None, detail: str
) -> None:
    measured = await run(command("sh", "-c", script), tmp_path)
    assert (measured.result, measured.value, measured.detail) == (CheckResult(result), value, detail)


async def test_command_runs_in_workdir_with_env_and_without_server_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPYARD_SLACK_BOT_TOKEN", "xoxb-secret")
    (tmp_path / "probe.sh").write_text('#!/bin/sh\necho "$PWD|$TARGET|${SHIPYARD_SLACK_BOT_TOKEN:-}"\n')
    (tmp_path / "probe.sh").chmod(0o755)
    measured = await run(command("./probe.sh"), tmp_path, env={"TARGET": "production"})
    assert (measured.result, measured.value) == (CheckResult.PASSED, f"{tmp_path}|production|")


async def test_command_keeps_only_the_tail_of_its_output(tmp_path: Path) -> None:
    script = "import sys; sys.stdout.write('x' * 1_000_000 + '\\n' + 'y' * 600 + '\\nlast\\n\\n')"
    measured = await run(command(sys.executable, "-c", script), tmp_path)
    assert (measured.result, measured.value) == (CheckResult.PASSED, "last")
    long = await run(command(sys.executable, "-c", "print('y' * 600)"), tmp_path)
    assert long.value is not None and len(long.value) == 500 and long.value.endswith("…")


def _alive(pid: int) -> bool:
    """Running (a zombie no parent reaps counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        await asyncio.sleep(0.02)


async def test_command_timeout_kills_its_process_group(tmp_path: Path) -> None:
    script = "sleep 60 & echo $! > child.pid; echo started; wait"
    measured = await run(command("sh", "-c", script, timeout=0.5), tmp_path)
    assert (measured.result, measured.value, measured.detail) == (
        CheckResult.ERROR,
        "started",
        "timed out after 0.5s",
    )
    assert 0.5 <= measured.took < 3
    child = int((tmp_path / "child.pid").read_text())
    await _wait_gone(child)


async def test_command_does_not_wait_for_what_it_left_in_the_background(tmp_path: Path) -> None:
    measured = await run(command("sh", "-c", "sleep 60 & echo $! > child.pid; echo ok"), tmp_path)
    assert (measured.result, measured.value) == (CheckResult.PASSED, "ok")
    assert measured.took < 3
    await _wait_gone(int((tmp_path / "child.pid").read_text()))


async def test_a_command_reaped_before_its_pidfd_opens_does_not_wait_for_its_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child watcher's thread can reap the shell before the pidfd opens, while the loop has
    not yet heard of the exit: the measurement must still end when the shell does, not when the
    background child lets go of the output pipe."""
    seen: list[str] = []

    def after_the_reap(pid: int, flags: int = 0) -> int:
        # hold the loop while the shell runs and until the watcher has reaped it: the window
        # the race opens, with the exit not yet delivered to the loop
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                seen.append("reaped")
                break
            if not seen:
                seen.append("running")
            time.sleep(0.001)
        raise ProcessLookupError(pid)

    monkeypatch.setattr(measure_module.os, "pidfd_open", after_the_reap, raising=True)
    shell = "sleep 60 & echo $! > child.pid; echo ok; sleep 0.2"
    measured = await run(command("sh", "-c", shell), tmp_path)
    assert seen == ["running", "reaped"]  # the loop heard of the exit only after the reap
    assert (measured.result, measured.value) == (CheckResult.PASSED, "ok")
    assert measured.took < 3
    await _wait_gone(int((tmp_path / "child.pid").read_text()))


async def test_command_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    missing = await run(command("./no-such-probe"), tmp_path)
    assert (missing.result, missing.detail) == (
        CheckResult.ERROR,
        "cannot start './no-such-probe': No such file or directory",
    )
    (tmp_path / "probe.sh").write_text("#!/bin/sh\n")
    denied = await run(command("./probe.sh"), tmp_path)
    assert (denied.result, denied.detail) == (
        CheckResult.ERROR,
        "cannot start './probe.sh': Permission denied",
    )
    assert os.getpid()  # the test process is unharmed


async def test_a_shared_session_serves_many_measurements(
    prometheus: Prometheus, web_service: WebService, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            http = await run(healthz(web_service), tmp_path, session=session)
            query = await run(promql(prometheus, "1", pass_if="== 1"), tmp_path, session=session)
            assert (http.result, query.result) == (CheckResult.PASSED, CheckResult.PASSED)
        assert not session.closed
