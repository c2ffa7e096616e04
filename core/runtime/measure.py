"""Measuring one check (``core/checks.py``) once: an HTTP request, a Prometheus query or a command.

``measure`` never raises for a problem with what it measures: a refused connection, a timeout, a
query Prometheus rejects or a command that cannot start all come back as a ``Measurement`` whose
result is ``error`` and whose detail gives the words of whoever refused. ``failed`` is kept for a
measured value that is bad, so that analysis can count errors apart from failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from core.checks import CheckDef, CheckResult, HttpProbe, Measurement, PrometheusProbe
from core.conditions import Condition
from core.runtime.executor import PRIVATE_PREFIXES
from core.runtime.spawning import killpg
from core.runtime.waiting import within

log = logging.getLogger(__name__)

#: how much of a command's output is kept (its tail): the last line is all that is used
OUTPUT_TAIL = 64 * 1024
#: the largest answer kept from an HTTP check with ``json_path`` or from Prometheus (an HTTP
#: check without one reads its answer to the end and keeps none of it)
MAX_BODY = 1024 * 1024
#: measured values longer than this are cut (they are stored with every measurement)
MAX_VALUE = 500

Outcome = tuple[CheckResult, str | None, str]


class _Refused(Exception):
    """A measurement that could not be made; its message is the detail."""


async def measure(
    name: str,
    check: CheckDef,
    *,
    now: Callable[[], datetime],
    workdir: Path,
    env: Mapping[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Measurement:
    """Measure ``check`` (named ``name``) once, within ``check.timeout``.

    ``workdir`` is where a command runs; ``env`` adds to the environment it inherits (less the
    server's own ``SHIPYARD_*``/``SLACK_*`` settings, as for jobs). ``session`` is reused for HTTP
    checks and Prometheus queries when given (a loop measuring many checks should pass one)."""
    at = now()
    started = time.monotonic()
    try:
        if check.http is not None:
            outcome = await _with_session(session, lambda s: _http(check.http, check.timeout, s))
        elif check.prometheus is not None:
            outcome = await _with_session(session, lambda s: _prometheus(name, check, s))
        else:
            assert check.command is not None
            outcome = await _command(check.command, check.timeout, workdir, env or {})
    except _Refused as exc:
        outcome = (CheckResult.ERROR, None, str(exc))
    except Exception as exc:  # a bug here must not stop the loop that measures every check
        log.exception("measuring check %s failed", name)
        outcome = (CheckResult.ERROR, None, f"{type(exc).__name__}: {exc}")
    result, value, detail = outcome
    if value is not None and len(value) > MAX_VALUE:
        value = value[: MAX_VALUE - 1] + "…"
    return Measurement(name, at, result, value, detail, took=time.monotonic() - started)


def client_session() -> aiohttp.ClientSession:
    """A session for measuring checks: it keeps no cookies, so a target that sets one (a session
    cookie on its first answer) is measured each time as the anonymous client it first saw,
    never as one it logged in."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


async def _with_session(
    session: aiohttp.ClientSession | None,
    probe: Callable[[aiohttp.ClientSession], Awaitable[Outcome]],
) -> Outcome:
    if session is not None:
        return await probe(session)
    async with client_session() as own:
        return await probe(own)


def _seconds(timeout: float) -> str:
    return f"{timeout:g}s"


@contextlib.asynccontextmanager
async def _client_errors(timeout: float, what: str) -> AsyncIterator[None]:
    """Turn a timeout or a client error into ``_Refused`` with words a person can act on."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise _Refused(f"{what}: timed out after {_seconds(timeout)}") from None
    except aiohttp.InvalidURL as exc:
        raise _Refused(f"{what}: invalid URL {exc}") from None
    except aiohttp.ClientError as exc:
        raise _Refused(f"{what}: {exc or type(exc).__name__}") from None


async def _read(response: aiohttp.ClientResponse, what: str) -> bytes:
    """The body, refusing one larger than ``MAX_BODY``."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_BODY:
            raise _Refused(f"{what}: the answer is larger than {MAX_BODY // 1024} KiB")
    return bytes(body)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read the body to its end (its time is the answer's), keeping none of it."""
    async for _ in response.content.iter_chunked(65536):
        pass


# --- http ---------------------------------------------------------------------------------------


async def _http(probe: HttpProbe | None, timeout: float, session: aiohttp.ClientSession) -> Outcome:
    assert probe is not None
    started = time.monotonic()
    what, body = f"GET {probe.url}", b""
    async with _client_errors(timeout, what), session.get(probe.url, allow_redirects=False) as response:
        # only a JSON value needs the answer: a status page of any size is read and dropped
        if probe.json_path is None:
            await _drain(response)
        else:
            body = await _read(response, what)
    millis = (time.monotonic() - started) * 1000
    latency = f"{millis:.0f}"
    if response.status != probe.status:
        return CheckResult.FAILED, str(response.status), f"status {response.status}, expected {probe.status}"
    if probe.max_latency is not None and millis > probe.max_latency * 1000:
        limit = f"{probe.max_latency * 1000:.0f} ms"
        return CheckResult.FAILED, latency, f"latency {latency} ms > {limit}"
    if probe.json_path is None or probe.condition is None:
        return CheckResult.PASSED, latency, f"status {response.status} in {latency} ms"
    try:
        document = _json(body, response.charset)
    except ValueError:
        kind = response.content_type or "no content type"
        return CheckResult.FAILED, None, f"the answer is not JSON ({kind}): {_excerpt(body)}"
    try:
        value = _at_path(document, probe.json_path)
    except LookupError as exc:
        return CheckResult.FAILED, None, str(exc)
    shown = f"{probe.json_path} = {_show(value)}"
    if probe.condition.holds(value):
        return CheckResult.PASSED, _text(value), f"{shown} ({probe.condition}), {latency} ms"
    return CheckResult.FAILED, _text(value), f"{shown}, expected {probe.condition}"


def _json(body: bytes, charset: str | None) -> Any:
    """The JSON document in ``body``, read in the charset its answer declares (a service may
    answer in ISO-8859-1, say), else as JSON says (UTF-8, -16 or -32). ``ValueError`` when it
    is not JSON in it, or the charset is unknown."""
    if not charset:
        return json.loads(body)
    try:
        text = body.decode(charset)
    except LookupError:
        raise ValueError(f"unknown charset {charset!r}") from None
    return json.loads(text.removeprefix("\ufeff"))


def _at_path(document: Any, path: str) -> Any:
    """The value at a dotted path; numeric parts index lists. Raises ``LookupError`` saying
    which part is missing."""
    value = document
    for depth, part in enumerate(path.split(".")):
        where = ".".join(path.split(".")[:depth]) or "the answer"
        if isinstance(value, dict):
            if part not in value:
                raise LookupError(f"the answer has no {path!r}: {where} has no key {part!r}")
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(value) <= index < len(value):
                raise LookupError(f"the answer has no {path!r}: {where} has {len(value)} items")
            value = value[index]
        else:
            raise LookupError(f"the answer has no {path!r}: {where} is {_kind(value)}, not an object")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else f"{_show(value)}"


def _show(value: Any) -> str:
    """A JSON value for a person: text quoted, numbers plain, JSON spelling for the rest."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, separators=(",", ":"))


def _text(value: Any) -> str:
    """A JSON value as a measured value: text as it is, anything else in JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _excerpt(body: bytes, size: int = 120) -> str:
    text = body.decode(errors="replace").strip()
    return repr(text if len(text) <= size else text[:size] + "…") if text else "(empty)"


# --- prometheus ---------------------------------------------------------------------------------


async def _prometheus(name: str, check: CheckDef, session: aiohttp.ClientSession) -> Outcome:
    probe = check.prometheus
    assert probe is not None
    number = await _query(probe, check.timeout, session)
    if number is None:
        return CheckResult.INCONCLUSIVE, None, "no data: the query returned an empty result"
    if math.isnan(number):
        return CheckResult.INCONCLUSIVE, "NaN", f"{name} = NaN (no data, e.g. a rate divided by zero)"
    result, comparison = _judge(number, check.fail_if, check.pass_if)
    return result, _number_text(number), f"{name} = {number:.6g} {comparison}"


def _judge(number: float, fail_if: Condition | None, pass_if: Condition | None) -> tuple[CheckResult, str]:
    """The result for ``number`` and how it compares: ``> 0.01``, ``not < 0.005``…"""
    if fail_if is not None and fail_if.holds(number):
        return CheckResult.FAILED, str(fail_if)
    if pass_if is not None and pass_if.holds(number):
        return CheckResult.PASSED, str(pass_if)
    if pass_if is None:
        return CheckResult.PASSED, f"(not {fail_if})"
    if fail_if is None:
        return CheckResult.FAILED, f"(not {pass_if})"
    return CheckResult.INCONCLUSIVE, f"(neither {fail_if} nor {pass_if})"


def _number_text(number: float) -> str:
    return repr(number) if not number.is_integer() or math.isinf(number) else str(int(number))


async def _query(probe: PrometheusProbe, timeout: float, session: aiohttp.ClientSession) -> float | None:
    """The query's one number (None for an empty result); ``_Refused`` for anything else."""
    url = probe.url.rstrip("/") + "/api/v1/query"
    async with (
        _client_errors(timeout, f"Prometheus at {probe.url}"),
        session.get(url, params={"query": probe.query}, allow_redirects=False) as response,
    ):
        body = await _read(response, f"Prometheus at {probe.url}")
    try:
        answer = json.loads(body)
        status = answer["status"]
    except (ValueError, KeyError, TypeError):
        raise _Refused(
            f"Prometheus at {probe.url} answered HTTP {response.status}, not a query result: {_excerpt(body)}"
        ) from None
    if status != "success":
        kind, error = answer.get("errorType", ""), answer.get("error", "")
        if kind == "bad_data" or response.status in (400, 422):
            raise _Refused(f"Prometheus rejected the query: {error}")
        raise _Refused(f"Prometheus could not run the query ({kind or response.status}): {error}")
    return _one_number(answer.get("data") or {})


def _one_number(data: dict[str, Any]) -> float | None:
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar":
            return float(result[1])  # type: ignore[index]
        if kind == "vector" and isinstance(result, list):
            if not result:
                return None
            if len(result) > 1:
                raise _Refused(
                    f"the query returned {len(result)} series; aggregate it to one, e.g. with sum()"
                )
            return float(result[0]["value"][1])
    except (TypeError, ValueError, KeyError, IndexError):
        raise _Refused(f"cannot read Prometheus' answer: {json.dumps(data)[:200]}") from None
    if kind == "matrix":
        raise _Refused("the query returned a range vector; use an instant vector, e.g. rate(x[5m])")
    raise _Refused(f"the query returned a {kind}, not a number")


# --- command ------------------------------------------------------------------------------------


async def _command(argv: list[str], timeout: float, workdir: Path, env: Mapping[str, str]) -> Outcome:
    workdir.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith(PRIVATE_PREFIXES)}
    environment.update(env)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=workdir,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise _Refused(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    tail = bytearray()
    pump = asyncio.create_task(_keep_tail(proc.stdout, tail))
    try:
        exited, _ = await within(_exited(proc), timeout)
        # at the timeout the whole group goes; after an exit, what it left running in the
        # background (which would hold its output open)
        killpg(proc.pid, signal.SIGKILL)
        # bounded: a grandchild that left the group (setsid) could hold the output open
        await within(pump, 2.0)
        await within(proc.wait(), 2.0)
    except asyncio.CancelledError:
        killpg(proc.pid, signal.SIGKILL)
        pump.cancel()
        raise
    last = _last_line(bytes(tail))
    if not exited:
        return CheckResult.ERROR, last, f"timed out after {_seconds(timeout)}"
    code = proc.returncode
    if code == 0:
        return CheckResult.PASSED, last, "exit 0" + (f": {last}" if last else "")
    if code is not None and code < 0:
        return CheckResult.FAILED, last, f"killed by {signal.Signals(-code).name}"
    result = CheckResult.INCONCLUSIVE if code == 2 else CheckResult.FAILED
    return result, last, f"exit {code}" + (f": {last}" if last else "")


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while chunk := await stream.read(65536):
        tail += chunk
        if len(tail) > OUTPUT_TAIL:
            del tail[: len(tail) - OUTPUT_TAIL]


def _last_line(output: bytes) -> str | None:
    for line in reversed(output.decode(errors="replace").splitlines()):
        if line.strip():
            return line.strip().replace("\x00", "\ufffd")
    return None


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Return when the process itself exits. ``Process.wait()`` also waits for its output pipes
    to close, which a background child can hold open for as long as it likes, so it is never
    used: without a pidfd (the child watcher reaped the process first, or the platform has
    none) the return code the watcher sets is polled instead."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except (ProcessLookupError, AttributeError, OSError):  # reaped already, or no pidfd here
        while proc.returncode is None:
            await asyncio.sleep(0.01)
        return
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
