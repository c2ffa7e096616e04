"""Checks: what Shipyard measures to know whether an environment works.

Checks are declared on environments in the service's configuration (``SHIPYARD_CONFIG``), so a
pipeline cannot edit them away, and are used by name: ``health`` names those watched all the
time, ``verify`` those measured after a deployment (see ``core/analysis.py``)::

    environments:
      production:
        checks:
          error-rate:
            prometheus: {url: http://127.0.0.1:9090, query: 'sum(rate(errors[1m])) / sum(rate(requests[1m]))'}
            fail_if: "> 0.01"
            pass_if: "< 0.005"           # neither holds: inconclusive
            interval: 30s
          smoke: {http: {url: https://web.internal/healthz, status: 200, max_latency: 500ms}, interval: 30s}
          canary-probe: {command: [./probe.sh, --quick], timeout: 20s}
        health: [error-rate, smoke]
        verify: {checks: [error-rate, smoke], for: 10m, failure_limit: 2, on_failure: rollback}

A measurement ends ``passed``, ``failed``, ``inconclusive`` or ``error`` (the check could not be
measured: a timeout, a refused connection, a query Prometheus rejected), with the measured
value. Conditions are a small comparison grammar (``core/conditions.py``), never ``eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from core.conditions import Condition
from core.definition import NAME, Delay, Duration, _Strict
from core.duration import format_duration, parse_duration


class CheckResult(StrEnum):
    PASSED = "passed"  #: the condition for passing held
    FAILED = "failed"  #: the condition for failing held (or the expected status did not come)
    INCONCLUSIVE = "inconclusive"  #: neither held, or there was no data
    ERROR = "error"  #: not measured: a timeout, a refused connection, a rejected query


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measurement of one check."""

    check: str
    at: datetime
    result: CheckResult
    #: what was measured, as text (a number, a status, a command's last output line); None: nothing
    value: str | None
    #: for people: ``error-rate = 0.034 > 0.01``, ``status 503, expected 200``, the error's words
    detail: str
    #: how long measuring took, in seconds
    took: float = 0.0


def _condition(value: Any) -> Any:
    return Condition.parse(value) if isinstance(value, str) else value


ConditionField = Annotated[Condition, BeforeValidator(_condition)]


def _latency(value: Any) -> float:
    """``500ms``, ``2s``, or seconds as a number."""
    if isinstance(value, str) and value.strip().lower().endswith("ms"):
        millis = value.strip()[:-2].strip()
        if not millis.isdigit() or int(millis) == 0:
            raise ValueError(f"invalid latency {value!r} (use e.g. 500ms, 2s)")
        return int(millis) / 1000
    return parse_duration(value)


Latency = Annotated[float, BeforeValidator(_latency)]
_HTTP_URL = r"^https?://[^/?#\s]+(/\S*)?$"


def _said(seconds: float) -> str:
    """``500ms``, ``2s``, ``1m30s``: a duration as the configuration would write it."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s" if seconds < 10 else format_duration(seconds)


class HttpProbe(_Strict):
    """GET ``url``: fails on another status, a slower answer than ``max_latency``, or a JSON
    value at ``json_path`` for which ``condition`` does not hold."""

    url: str = Field(pattern=_HTTP_URL)
    status: int = Field(default=200, ge=100, le=599)
    max_latency: Latency | None = None
    #: a dotted path into the JSON answer (``status``, ``checks.db.ok``, ``items.0.state``)
    json_path: str | None = None
    condition: ConditionField | None = None

    @model_validator(mode="after")
    def _path_and_condition(self) -> HttpProbe:
        if (self.json_path is None) != (self.condition is None):
            raise ValueError("json_path and condition go together")
        return self


class PrometheusProbe(_Strict):
    """A PromQL instant query; its result must be one number (aggregate with ``sum``, ``max``…)."""

    url: str = Field(pattern=_HTTP_URL)
    query: str = Field(min_length=1)


class CheckDef(_Strict):
    """One named check: exactly one of ``http``, ``prometheus``, ``command``."""

    http: HttpProbe | None = None
    prometheus: PrometheusProbe | None = None
    #: an argv run like a job: exit 0 passes, 2 is inconclusive, others fail; its last output
    #: line is the measured value
    command: list[str] | None = Field(default=None, min_length=1)
    #: for ``prometheus``: the value fails when this holds, passes when ``pass_if`` holds, and
    #: is inconclusive when neither does (with only one given, the other is its negation)
    fail_if: ConditionField | None = None
    pass_if: ConditionField | None = None
    interval: Duration = 30.0
    #: how long one measurement may take (default: 10s, or the interval if shorter)
    timeout: Duration = 10.0

    @model_validator(mode="before")
    @classmethod
    def _timeout_within_interval(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeout" not in data and "interval" in data:
            try:
                return {**data, "timeout": min(10.0, parse_duration(data["interval"]))}
            except ValueError:
                return data  # (the interval's own error says what is wrong)
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> CheckDef:
        kinds = [k for k in ("http", "prometheus", "command") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a check is exactly one of http, prometheus or command")
        if self.prometheus is not None and self.fail_if is None and self.pass_if is None:
            raise ValueError("a prometheus check needs fail_if, pass_if or both")
        if self.prometheus is None and (self.fail_if is not None or self.pass_if is not None):
            raise ValueError("fail_if and pass_if are for prometheus checks")
        if self.timeout > self.interval:
            raise ValueError("timeout cannot be longer than interval")
        latency = self.http.max_latency if self.http is not None else None
        if latency is not None and latency > self.timeout:
            # (an answer that slow is cut off at the timeout as an error, never failed as slow)
            raise ValueError(
                f"max_latency ({_said(latency)}) cannot be longer than timeout "
                f"({_said(self.timeout)}): an answer that slow would be cut off as an "
                "error first; raise timeout (at most interval) or lower max_latency"
            )
        return self

    @property
    def kind(self) -> Literal["http", "prometheus", "command"]:
        if self.http is not None:
            return "http"
        return "prometheus" if self.prometheus is not None else "command"


class HealthWatch(_Strict):
    """The checks watched all the time, and how many failed measurements in a row make a
    check (and so its environment) unhealthy rather than degraded."""

    checks: list[str] = Field(min_length=1)
    failure_limit: int = Field(default=2, ge=1, le=100)


class VerifyPolicy(_Strict):
    """Post-deployment verification (Argo Rollouts' analysis, Cloud Deploy's verify phase)."""

    checks: list[str] = Field(min_length=1)
    #: how long the run stays ``verifying`` after its deploy stage succeeded
    duration: Duration = Field(alias="for")
    #: instead of ``for``: this many measurements of each check (Argo's ``count``); ``for`` is
    #: then ``count`` times the longest interval among the checks
    count: int | None = Field(default=None, ge=1, le=10_000)
    #: wait this long before the first measurement (Argo's ``initialDelay``): a rate over a
    #: window longer than the interval would otherwise still see the release before this one;
    #: the verification then lasts ``initial_delay`` plus ``for``
    initial_delay: Delay = 0.0
    #: this many failed measurements (of any one check) fail the verification
    failure_limit: int = Field(default=1, ge=1, le=100)
    #: this many inconclusive ones pause it for a person to decide
    inconclusive_limit: int = Field(default=1, ge=1, le=100)
    #: this many errors in a row (timeouts, refused connections) fail it; counted apart
    consecutive_error_limit: int = Field(default=5, ge=1, le=100)
    on_failure: Literal["fail", "rollback"] = "fail"


def _health(value: Any) -> Any:
    """``health: [a, b]`` is ``health: {checks: [a, b]}``."""
    return {"checks": value} if isinstance(value, list) else value


class EnvironmentChecks(_Strict):
    """The part of an environment's policy about checks (mixed into ``EnvironmentPolicy``)."""

    checks: dict[str, CheckDef] = Field(default_factory=dict)
    health: Annotated[HealthWatch | None, BeforeValidator(_health)] = None
    verify: VerifyPolicy | None = None
    #: an ``unhealthy`` environment holds deployments back (rollbacks and break glass go on)
    #: and is a blocker in ``/deploy why``
    block_when_unhealthy: bool = False

    @model_validator(mode="before")
    @classmethod
    def _count_as_duration(cls, data: Any) -> Any:
        """``verify: {count: 5}`` verifies for five of its checks' longest interval."""
        verify = data.get("verify") if isinstance(data, dict) else None
        if not isinstance(verify, dict) or "count" not in verify:
            return data
        if "for" in verify:
            raise ValueError("verify: give for or count, not both")
        checks = data.get("checks") or {}
        try:
            count = int(verify["count"])
            longest = max(
                parse_duration(checks[name].get("interval", 30))
                if isinstance(checks.get(name), dict)
                else 30.0
                for name in verify.get("checks") or [None]
            )
        except (TypeError, ValueError):
            return data  # (the fields' own errors say what is wrong)
        return {**data, "verify": {**verify, "for": count * longest}}

    @field_validator("checks")
    @classmethod
    def _names(cls, value: dict[str, CheckDef]) -> dict[str, CheckDef]:
        import re

        for name in value:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"{name!r} is not a check name: use lowercase letters, digits and '-'")
        return value

    @model_validator(mode="after")
    def _known_checks(self) -> EnvironmentChecks:
        for where, names in (("health", self.health), ("verify", self.verify)):
            for name in names.checks if names is not None else []:
                if name not in self.checks:
                    known = ", ".join(self.checks) or "none are declared"
                    raise ValueError(f"{where}: unknown check {name!r} (checks: {known})")
        if self.block_when_unhealthy and self.health is None:
            raise ValueError("block_when_unhealthy: the environment watches no health checks (add health)")
        return self
