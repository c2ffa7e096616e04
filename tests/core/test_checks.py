"""Checks in the configuration: the three kinds, their fields, and the messages for mistakes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.checks import CheckDef, EnvironmentChecks

PROM = {"url": "http://127.0.0.1:9090", "query": "sum(rate(errors[1m]))"}
SMOKE = {"http": {"url": "https://web.internal/healthz"}}


def test_a_full_declaration() -> None:
    checks = EnvironmentChecks.model_validate(
        {
            "checks": {
                "error-rate": {
                    "prometheus": PROM,
                    "fail_if": "> 0.01",
                    "pass_if": "< 0.005",
                    "interval": "30s",
                },
                "smoke": {"http": {"url": "https://web.internal/healthz", "max_latency": "500ms"}},
                "db": {
                    "http": {
                        "url": "http://db:8080/status",
                        "json_path": "items.0.ok",
                        "condition": "== true",
                    }
                },
                "probe": {"command": ["./probe.sh", "--quick"], "timeout": "20s"},
            },
            "health": ["error-rate", "smoke"],
            "verify": {"checks": ["error-rate"], "for": "10m", "failure_limit": 2, "on_failure": "rollback"},
        }
    )
    kinds = {name: check.kind for name, check in checks.checks.items()}
    assert kinds == {"error-rate": "prometheus", "smoke": "http", "db": "http", "probe": "command"}
    error_rate, smoke = checks.checks["error-rate"], checks.checks["smoke"]
    assert (str(error_rate.fail_if), str(error_rate.pass_if), error_rate.interval) == (
        "> 0.01",
        "< 0.005",
        30,
    )
    assert smoke.http is not None and (smoke.http.status, smoke.http.max_latency) == (200, 0.5)
    assert (smoke.interval, smoke.timeout) == (30, 10)
    assert checks.health is not None and (checks.health.checks, checks.health.failure_limit) == (
        ["error-rate", "smoke"],
        2,
    )
    assert checks.verify is not None and (checks.verify.duration, checks.verify.on_failure) == (
        600,
        "rollback",
    )


@pytest.mark.parametrize(
    ("latency", "seconds"), [("500ms", 0.5), ("2s", 2.0), (1.5, 1.5), ("1m", 60.0), (" 250 MS ", 0.25)]
)
def test_latency(latency: Any, seconds: float) -> None:
    spec = {"http": {"url": "http://x/", "max_latency": latency}, "interval": "2m", "timeout": "1m"}
    check = CheckDef.model_validate(spec)
    assert check.http is not None and check.http.max_latency == seconds


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "a check is exactly one of http, prometheus or command"),
        ({**SMOKE, "command": ["true"]}, "a check is exactly one of http, prometheus or command"),
        ({"prometheus": PROM}, "a prometheus check needs fail_if, pass_if or both"),
        ({**SMOKE, "fail_if": "> 1"}, "fail_if and pass_if are for prometheus checks"),
        ({**SMOKE, "timeout": "1m", "interval": "30s"}, "timeout cannot be longer than interval"),
        (
            {"http": {"url": "http://x/", "max_latency": "2s"}, "interval": "1s"},
            "max_latency (2s) cannot be longer than timeout (1s): an answer that slow would be cut off",
        ),
        (
            {"http": {"url": "http://x/", "max_latency": "15s"}},
            "max_latency (15s) cannot be longer than timeout (10s)",
        ),
        ({"http": {"url": "ftp://web/healthz"}}, "http.url\n  String should match pattern"),
        ({"http": {"url": "web.internal/healthz"}}, "http.url\n  String should match pattern"),
        ({"prometheus": {**PROM, "url": "file:///etc"}, "fail_if": "> 1"}, "prometheus.url\n  String should"),
        ({"http": {"url": "http://x/", "max_latency": "0ms"}}, "invalid latency '0ms' (use e.g. 500ms, 2s)"),
        ({"http": {"url": "http://x/", "max_latency": "fast"}}, "invalid duration 'fast'"),
        (
            {"http": {"url": "http://x/", "status": 700}},
            "http.status\n  Input should be less than or equal to 599",
        ),
        ({"http": {"url": "http://x/", "json_path": "status"}}, "json_path and condition go together"),
        ({"http": {"url": "http://x/", "condition": "== 1"}}, "json_path and condition go together"),
        ({"prometheus": PROM, "fail_if": "__import__('os')"}, "fail_if\n  Value error, invalid condition"),
        (
            {"prometheus": {**PROM, "query": ""}, "fail_if": "> 1"},
            "prometheus.query\n  String should have at least",
        ),
        ({"command": []}, "command\n  List should have at least 1 item"),
        ({**SMOKE, "retries": 3}, "retries\n  Extra inputs are not permitted"),
    ],
)
def test_invalid_check_names_the_problem(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        CheckDef.model_validate(spec)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"checks": {"smoke": SMOKE}, "health": ["smoke", "latency"]},
            "health: unknown check 'latency' (checks: smoke)",
        ),
        (
            {"verify": {"checks": ["smoke"], "for": "10m"}},
            "verify: unknown check 'smoke' (checks: none are declared)",
        ),
        ({"checks": {"Smoke": SMOKE}}, "'Smoke' is not a check name: use lowercase letters, digits and '-'"),
        ({"checks": {"smoke": SMOKE}, "verify": {"checks": ["smoke"]}}, "verify.for\n  Field required"),
        ({"checks": {"smoke": SMOKE}, "health": []}, "health.checks\n  List should have at least 1 item"),
        (
            {"checks": {"smoke": SMOKE}, "verify": {"checks": ["smoke"], "for": "1m", "on_failure": "pray"}},
            "verify.on_failure\n  Input should be 'fail' or 'rollback'",
        ),
        (
            {"checks": {"smoke": SMOKE}, "block_when_unhealthy": True},
            "block_when_unhealthy: the environment watches no health checks (add health)",
        ),
    ],
)
def test_invalid_environment_checks_name_the_problem(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        EnvironmentChecks.model_validate(config)
    assert message in str(raised.value)


def test_verify_count_is_that_many_of_the_longest_interval_and_excludes_for() -> None:
    checks = {
        "fast": {"command": ["true"], "interval": "30s"},
        "slow": {"command": ["true"], "interval": "1m"},
    }
    counted = EnvironmentChecks.model_validate(
        {"checks": checks, "verify": {"checks": ["fast", "slow"], "count": 5}}
    )
    assert counted.verify is not None and (counted.verify.count, counted.verify.duration) == (5, 300.0)
    with pytest.raises(ValidationError, match="give for or count, not both"):
        EnvironmentChecks.model_validate(
            {"checks": checks, "verify": {"checks": ["fast"], "count": 5, "for": "10m"}}
        )
