"""The runner protocol's client: a remote ``shipyard runner`` talks to its server over HTTP
(``bot.api.runner`` serves it) through the same ``RunnerLink`` the built-in runner uses in
process, so the runner's loop, its records and its guarantees are the same code.

A server that cannot be reached, or answers 5xx or 503, is an outage (``ServerUnreachable``, a
``DatabaseUnreachable``): the runner rides it out as it rides out a database outage, retrying
reports and keeping its jobs; their leases run on the server meanwhile, and an attempt whose
lease expired is refused when the runner comes back (409: it kills its copy).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from core.assignment import Assignment
from core.commands import CompleteJob, ExpireLease, InterruptJob, ReportLateResult
from core.engine import Decision, Outcome
from core.errors import DatabaseUnreachable, InvalidInput

#: the protocol version this runner speaks (the server says which it takes)
PROTOCOL = 1
HEADER = "Shipyard-Runner-Protocol"
#: how the server's refusal of a protocol version begins (a stale report's 409 names the job,
#: whose name may say "protocol": only this beginning stops the runner)
PROTOCOL_REFUSAL = "this server takes runner protocol version"
#: the longest lease a server grants (a claim or renewal asking for more is refused)
MAX_LEASE_S = 3600
#: how long a claim waits on the server for a job to become ready
CLAIM_WAIT_S = 10.0
#: the most job output one request carries (JSON-encoded); halved after a 413, down to the least
LOG_REQUEST_BYTES = 256 << 10
LOG_REQUEST_LEAST = 4 << 10

log = logging.getLogger(__name__)
RunnerReport = CompleteJob | InterruptJob | ExpireLease | ReportLateResult


class ServerUnreachable(DatabaseUnreachable):
    """The server did not answer (or answered 5xx): try again later."""


class Refused(InvalidInput):
    """The server refused the runner itself (its token, its role, its protocol version)."""


class HttpLink:
    """``RunnerLink`` over HTTP with a bearer token (a principal holding the ``runner`` role)."""

    def __init__(
        self,
        url: str,
        token: str,
        runner: str,
        *,
        timeout_s: float = 30.0,
        claim_wait_s: float = CLAIM_WAIT_S,
        labels: Sequence[str] = (),
        capacity: int = 0,
        version: str = "",
    ) -> None:
        self.url = url.rstrip("/") + "/api/v1/runner"
        #: the runner this link speaks for (its token's principal)
        self.runner = runner
        #: how the runner describes itself as it claims: it is handed only jobs these labels satisfy
        self.described = {"labels": list(labels), "capacity": capacity, "version": version}
        #: set when the server says this runner was drained, or refuses its claims: it claims
        #: nothing more and stops
        self.drained = asyncio.Event()
        #: why the server refused its claim (its token revoked, a label not granted to it):
        #: claiming again cannot help, so the runner finishes its jobs and exits saying this
        self.refusal = ""
        self.headers = {"Authorization": f"Bearer {token}", HEADER: str(PROTOCOL)}
        self.woken = False  # (its claims are long polls)
        self.timeout_s = timeout_s
        self.claim_wait_s = claim_wait_s
        #: output per log request: bounded, so a job writing fast never makes a body the server
        #: (or a proxy before it) refuses; lowered for good when one answers 413
        self.log_request_bytes = LOG_REQUEST_BYTES
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, path: str, body: dict[str, Any], *, wait_s: float = 0.0) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s + wait_s)
        try:
            async with self._session.post(self.url + path, json=body, timeout=timeout) as answer:
                raw = await answer.read() if answer.status != 204 else b""
                status = answer.status
            data = _parsed(raw, status)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ServerUnreachable(f"{self.url}{path}: {exc or type(exc).__name__}") from None
        if status >= 500:
            raise ServerUnreachable(f"{self.url}{path} answered {status}: {_detail(data)}")
        if status in (401, 403) or (status == 409 and _detail(data).startswith(PROTOCOL_REFUSAL)):
            raise Refused(f"the server refused this runner ({status}): {_detail(data)}")
        if status >= 400 and status != 409:
            raise Refused(f"{self.url}{path} answered {status}: {_detail(data)}")
        return status, data

    # -- RunnerLink --------------------------------------------------------------------------
    async def claim(self, runner: str, limit: int, lease_s: float) -> list[Assignment]:
        body = {"runner": runner, "limit": limit, "lease_s": lease_s, "wait_s": self.claim_wait_s}
        try:
            _, data = await self._post("/claim", {**body, **self.described}, wait_s=self.claim_wait_s)
        except Refused as exc:
            self.refusal = exc.message
            self.drained.set()
            return []
        if data.get("draining"):
            self.drained.set()
        return [_assignment(a) for a in data["assignments"]]

    async def renew(self, runner: str, held: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        body = {"runner": runner, "held": _attempts(held), "lease_s": lease_s}
        _, data = await self._post("/renew", body)
        return set(data["kept"])

    async def still_held(self, runner: str, held: Sequence[tuple[str, int]], wait_s: float = 0.0) -> set[str]:
        body = {"runner": runner, "held": _attempts(held), "wait_s": wait_s}
        _, data = await self._post("/still-held", body, wait_s=wait_s)
        return set(data["kept"])

    async def runs_over(self, runner: str, run_ids: Sequence[str]) -> set[str]:
        _, data = await self._post("/runs-over", {"runner": runner, "run_ids": list(run_ids)})
        return set(data["over"])

    async def held(self, runner: str) -> list[tuple[str, str, int]]:
        _, data = await self._post("/held", {"runner": runner})
        return [(h["run_id"], h["job_id"], int(h["attempt"])) for h in data["held"]]

    async def append_log(self, job_id: str, attempt: int, runner: str, chunks: list[tuple[str, str]]) -> bool:
        """Send ``chunks`` in order, in requests of at most ``log_request_bytes``; what was stored
        is removed from ``chunks`` as it goes, so after a failure the caller keeps only the rest."""
        while chunks:
            batch, count = _log_batch(chunks, self.log_request_bytes)
            texts = [{"stream": stream, "text": text} for stream, text in batch]
            body = {"runner": runner, "job_id": job_id, "attempt": attempt, "chunks": texts}
            try:
                status, _ = await self._post("/log", body)
            except Refused as exc:
                if " 413:" not in exc.message or self.log_request_bytes <= LOG_REQUEST_LEAST:
                    raise
                self.log_request_bytes //= 2
                log.info(
                    "the server refused a log request (413); sending at most %d bytes a request",
                    self.log_request_bytes,
                )
                continue
            if status != 204:
                return False
            del chunks[:count]
            if len(batch) > count:  # (the first chunk was split: its head is stored, keep its rest)
                stream, text = chunks[0]
                chunks[0] = (stream, text[len(batch[-1][1]) :])
        return True

    async def report(self, command: RunnerReport) -> Decision:
        status, data = await self._post("/report", {"runner": self.runner, **_report_body(command)})
        if status == 409:
            return Decision(Outcome.REJECTED, reason=_detail(data), refusal="conflict")
        return Decision(Outcome.ACCEPTED, reason=str(data.get("reason", "")))


def _log_batch(chunks: list[tuple[str, str]], limit: int) -> tuple[list[tuple[str, str]], int]:
    """The first request's worth of ``chunks``: whole chunks while they fit in ``limit`` bytes of
    JSON, and how many; a first chunk larger than that alone is cut (returned as one more piece
    than the count, the cut chunk's head)."""
    batch: list[tuple[str, str]] = []
    size = 200  # (the body around the chunks)
    for stream, text in chunks:
        cost = len(json.dumps(text)) + 40
        if size + cost > limit:
            break
        batch.append((stream, text))
        size += cost
    if batch:
        return batch, len(batch)
    stream, text = chunks[0]
    n = max(1, (limit - 300) // 2)
    while n > 1 and len(json.dumps(text[:n])) > limit - 300:
        n //= 2
    return [(stream, text[:n])], 0


def _attempts(held: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"job_id": job_id, "attempt": attempt} for job_id, attempt in held]


def _report_body(command: RunnerReport) -> dict[str, Any]:
    body: dict[str, Any] = {"run_id": command.run_id, "job_id": command.job_id, "attempt": command.attempt}
    if isinstance(command, CompleteJob):
        body.update(
            kind="complete",
            outcome=command.outcome,
            exit_code=command.exit_code,
            outputs=dict(command.outputs),
            detail=command.detail,
        )
    elif isinstance(command, InterruptJob):
        body.update(kind="interrupt")
    elif isinstance(command, ReportLateResult):
        body.update(kind="late", outcome=command.outcome, exit_code=command.exit_code)
    else:
        body.update(kind="expire", force=command.force)
    return body


def _assignment(data: dict[str, Any]) -> Assignment:
    command = data["command"]
    return Assignment(
        run_id=data["run_id"],
        job_id=data["job_id"],
        attempt=int(data["attempt"]),
        pipeline=data["pipeline"],
        stage=data["stage"],
        name=data["name"],
        command=command if isinstance(command, str) else tuple(command),
        env=dict(data["env"]),
        timeout_s=float(data["timeout_s"]),
        masked=tuple(data.get("masked") or ()),
        refusal=str(data.get("refusal", "")),
        notice=str(data.get("notice", "")),
    )


def _parsed(raw: bytes, status: int) -> Any:
    """The answer's JSON; an error page that is not JSON (a proxy's 413 or 502) as its text."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        if status < 400:
            raise
        return raw.decode(errors="replace")[:200]


def _detail(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("detail") or data.get("title") or data)
    return str(data)
