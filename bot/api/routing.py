"""A small declarative layer over aiohttp routes: each operation states its path, the role
action it needs, its query and body models and its responses. From that one declaration the
wrapper authenticates, authorizes, validates, applies ``Idempotency-Key``, audits refusals,
and ``openapi()`` writes the OpenAPI 3.1 document."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from bot.api.problems import PROBLEM_TYPE, REFUSAL_STATUS, Problem, unauthorized
from bot.api.schemas import ProblemOut
from core.access import Action, Principal
from core.errors import CommandRefused, DatabaseUnreachable
from core.ports import AuditEntry
from core.secrets import NAME as SECRET_NAME

log = logging.getLogger(__name__)
PREFIX = "/api/v1"
REF = "#/components/schemas/{model}"
Handler = Callable[["Call"], Awaitable[web.StreamResponse]]
#: an opaque key a client chooses: printable ASCII, as the IETF draft and Stripe have it
MAX_KEY = 255
#: methods that change nothing: not audited, no Idempotency-Key
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: refusals a repeat of the same request may not get again, so a key does not keep them: who
#: the caller is and what it may do can change (401, 403), and a timeout or a rate limit passes
#: (408, 429); 5xx and lost races are never kept either (see ``_idempotent``)
PASSING_REFUSALS = frozenset({401, 403, 408, 425, 429})


@dataclass
class Call:
    """One request as a handler sees it: validated, authenticated, authorized."""

    request: web.Request
    gateway: Gateway
    principal: Principal
    params: dict[str, str]
    query: Any
    body: Any
    #: set once the request became an engine command (the engine audits those itself)
    audited: bool = False
    idempotency_key: str | None = None
    #: the claim on ``idempotency_key`` this request holds (``Gateway.claim_key``)
    key_holder: str | None = None
    #: what makes this request the same as another under its key (``fingerprint``)
    key_fingerprint: str = ""
    #: set once the answer was stored under the key in the work's own transaction
    #: (``ApiGateway.respond``), so the wrapper stores nothing more
    settled: bool = False


@dataclass
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    action: Action
    tag: str
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    #: extra request media types (beyond JSON) the handler reads itself, e.g. YAML definitions
    raw_body: tuple[str, ...] = ()
    responses: dict[int, tuple[str, type[BaseModel] | str | None]] = field(default_factory=dict)
    headers: dict[int, dict[str, str]] = field(default_factory=dict)
    #: who may is asked of the roles the caller held when the gate opened, not of today's: the
    #: wrapper only authenticates and ``core.access.authorize`` decides
    at_gate_open: bool = False

    @property
    def mutating(self) -> bool:
        return self.method not in SAFE_METHODS

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


#: one Server-Sent Events message, as OpenAPI 3.1 tooling reads a ``text/event-stream`` schema
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}

#: the errors every authenticated operation can answer
COMMON_ERRORS = {
    400: "malformed request (bad JSON, unknown query parameter, bad cursor)",
    401: "missing or unknown bearer token",
    403: "the caller's role does not allow this",
    404: "no such resource",
    413: "request body too large",
    422: "the request is well-formed but invalid",
    503: "the database is unreachable: nothing was done; send the request again after `Retry-After` seconds",
}
MUTATING_ERRORS = {
    409: "the resource's state does not allow this, or the same Idempotency-Key is still being processed",
    415: "the body's media type is not accepted",
}


class Api:
    def __init__(self, title: str, version: str, description: str) -> None:
        self.title = title
        self.version = version
        self.description = description
        self.operations: list[Operation] = []

    def op(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        action: Action,
        tag: str,
        responses: Mapping[int, tuple[str, type[BaseModel] | str | None]],
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        raw_body: tuple[str, ...] = (),
        headers: dict[int, dict[str, str]] | None = None,
        at_gate_open: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method,
                    path,
                    handler,
                    summary,
                    action,
                    tag,
                    query,
                    body,
                    raw_body,
                    dict(responses),
                    headers or {},
                    at_gate_open,
                )
            )
            return handler

        return register

    # -- serving ----------------------------------------------------------------------------
    def mount(self, app: web.Application, gateway: Gateway) -> None:
        for op in self.operations:
            app.router.add_route(op.method, PREFIX + op.path, _wrap(op, gateway))

    # -- documenting ------------------------------------------------------------------------
    def openapi(self) -> dict[str, Any]:
        models: list[type[BaseModel]] = [ProblemOut]
        for op in self.operations:
            models += [m for _, m in op.responses.values() if isinstance(m, type)]
        inputs = [m for op in self.operations for m in (op.body,) if m is not None]
        keyed = [(m, "serialization") for m in dict.fromkeys(models)] + [
            (m, "validation") for m in dict.fromkeys(inputs)
        ]
        refs, defs = models_json_schema(keyed, ref_template=REF)  # type: ignore[arg-type]
        schemas = defs.get("$defs", {})
        for op in self.operations:  # enums and models the query parameters refer to
            if op.query is not None:
                schemas.update(op.query.model_json_schema(ref_template=REF).get("$defs", {}))
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = _operation(op, refs)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "servers": [{"url": "/"}],
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": [{"bearer": []}],
        }


def _operation(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "description": (op.handler.__doc__ or "").strip() + f"\n\n{_needs(op)}",
    }
    if params := _parameters(op):
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = _request_body(op, op.body, refs)
    doc["responses"] = _responses(op, refs)
    return doc


#: path parameters whose form the document states (the rest are strings up to 200 characters)
PATH_PATTERNS: dict[str, str] = {"secret": r"^(?!SHIPYARD_|SLACK_)" + SECRET_NAME.pattern.removeprefix("^")}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    """Path names, the query model's fields and, on a mutating operation, Idempotency-Key."""
    params: list[dict[str, Any]] = []
    for name in _path_names(op.path):
        schema: dict[str, Any] = {"type": "string", "maxLength": 200}
        if name in PATH_PATTERNS:
            schema["pattern"] = PATH_PATTERNS[name]
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            prop = {k: v for k, v in prop.items() if k != "title"}
            params.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in schema.get("required", []),
                    "schema": prop,
                    "description": prop.get("description", ""),
                }
            )
    if op.mutating:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_KEY,
                    "pattern": "^[\\x21-\\x7e]+$",
                },
                "description": "repeat a request safely: the same key and body return the first response",
            }
        )
    return params


def _request_body(op: Operation, body: type[BaseModel], refs: dict[Any, Any]) -> dict[str, Any]:
    """The JSON body and any raw media types the operation also accepts."""
    content: dict[str, Any] = {"application/json": {"schema": refs[(body, "validation")]}}
    for media in op.raw_body:
        content.setdefault(media, {"schema": {"type": "string"}})
    return {"required": not _all_optional(body), "content": content}


def _responses(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    """The documented answers, then the problem responses every operation (or every mutating
    one) may give."""
    responses: dict[str, Any] = {}
    for status, (description, model) in op.responses.items():
        entry: dict[str, Any] = {"description": description}
        if isinstance(model, type):
            entry["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
        elif model == "text/event-stream":  # OpenAPI 3.1 reads this as the schema of one event
            entry["content"] = {model: {"schema": SSE_EVENT}}
        elif isinstance(model, str):
            entry["content"] = {model: {"schema": {"type": "string"}}}
        if status in op.headers:
            entry["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in op.headers[status].items()
            }
        responses[str(status)] = entry
    problem = {PROBLEM_TYPE: {"schema": refs[(ProblemOut, "serialization")]}}
    errors = {**COMMON_ERRORS, **(MUTATING_ERRORS if op.mutating else {})}
    for status, description in errors.items():
        responses.setdefault(str(status), {"description": description, "content": problem})
    return responses


def _needs(op: Operation) -> str:
    if op.at_gate_open:
        return f"Needs: `{op.action}`, held when the gate opened (later grants and revocations do not count)."
    return f"Needs: `{op.action}`."


def _all_optional(model: type[BaseModel]) -> bool:
    return all(not f.is_required() for f in model.model_fields.values())


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


# -- the request pipeline ----------------------------------------------------------------------
class Gateway:
    """What the wrapper needs from the running service (see ``bot.api.service``)."""

    async def authenticate(self, token: str) -> Principal | None:
        raise NotImplementedError

    #: how often a request still working renews the lease of its key's claim
    renew_key_every: float = 3.0

    async def claim_key(self, caller: str, key: str, fingerprint: str) -> Any:
        raise NotImplementedError

    async def renew_key(self, caller: str, key: str, holder: str) -> bool:
        raise NotImplementedError

    async def finish_key(
        self, caller: str, key: str, holder: str, status: int, response: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    async def release_key(self, caller: str, key: str, holder: str) -> None:
        raise NotImplementedError

    async def audit(self, entry: AuditEntry) -> None:
        raise NotImplementedError

    async def canonical(self, params: dict[str, str]) -> dict[str, str]:
        """Path parameters with each resource named by its id, however the path named it (what
        an ``Idempotency-Key`` compares: one resource, one request)."""
        return params


def _wrap(op: Operation, gateway: Gateway) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal: Principal | None = None
        call: Call | None = None
        response: web.StreamResponse
        try:
            if not _clean(request.path) or not all(_clean(k + v) for k, v in request.query.items()):
                raise Problem(
                    400, "paths and query parameters must be valid UTF-8 text without NUL characters"
                )
            principal = await _authenticate(request, gateway)
            if not op.at_gate_open and not principal.may(op.action):
                principal.require(op.action)  # raises Forbidden with the reason
            query = _query(op, request)
            body, document = await _body(op, request)
            call = Call(request, gateway, principal, dict(request.match_info), query, body)
            key = request.headers.get("Idempotency-Key")
            if op.mutating and key is not None:
                response = await _idempotent(op, call, key, document, gateway)
            else:
                response = await op.handler(call)
        except Problem as problem:
            response = problem.response(request.path)
        except CommandRefused as exc:
            response = _refusal(exc, request)
        if op.mutating and not (call is not None and call.audited):
            await audit_request(gateway, op.operation_id, request, principal, response)
        return response

    handle.__name__ = op.operation_id
    return handle


def _refusal(exc: CommandRefused, request: web.Request) -> web.Response:
    return Problem(REFUSAL_STATUS.get(exc.kind, 409), exc.message).response(request.path)


def _query(op: Operation, request: web.Request) -> BaseModel | None:
    if op.query is not None:
        return _validate(op.query, dict(request.query), "query")
    if request.query:
        names = list(dict.fromkeys(request.query))
        listed = ", ".join(repr(n) for n in names[:5])
        raise Problem(
            400,
            f"unknown query parameter {listed}: {op.method} {op.path} takes no query parameters",
            errors=[{"field": n, "problem": "unknown query parameter"} for n in names[:20]],
        )
    return None


async def _authenticate(request: web.Request, gateway: Gateway) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise unauthorized("send Authorization: Bearer <token> (create one with `shipyard token create`)")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("use the Bearer scheme: Authorization: Bearer <token>")
    principal = await gateway.authenticate(token.strip())
    if principal is None:
        raise unauthorized("unknown or revoked token")
    return principal


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(data: Any) -> Any:
    """JSON text as a database can store it: NUL and unpaired surrogate escapes (valid JSON,
    but not text) become U+FFFD, as they do in job logs."""
    if isinstance(data, str):
        return UNSTORABLE.sub("\ufffd", data)
    if isinstance(data, list):
        return [_storable(v) for v in data]
    if isinstance(data, dict):
        return {_storable(k): _storable(v) for k, v in data.items()}
    return data


def _clean(text: str) -> bool:
    """Text a database can store: encodable as UTF-8 (no lone surrogates), without NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors, summary = field_errors(exc, where)
        status = 400 if where == "query" else 422
        raise Problem(status, f"invalid {where}: {summary}", errors=errors) from None


def field_errors(exc: ValidationError, where: str) -> tuple[list[dict[str, str]], str]:
    """A validation failure per field, and the first five of them in one line."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or where, "problem": e["msg"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    return errors, "; ".join(f"{e['field']}: {e['problem']}" for e in errors[:5])


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259 has no NaN or Infinity)")


async def _body(op: Operation, request: web.Request) -> tuple[Any, bytes]:
    """The validated body, and what identifies it for ``Idempotency-Key``: the JSON document
    in canonical form (so whitespace and key order do not make another request), or the raw
    bytes of a body the handler reads itself."""
    if op.body is None:
        return None, b""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Problem(413, f"the body is larger than {request.client_max_size} bytes") from None
    media = request.content_type
    if media in op.raw_body:
        if b"\x00" in raw or b"\\u0000" in raw:
            raise Problem(422, "NUL characters are not allowed in the body")
        return raw, media.encode() + b"\0" + raw
    if not raw.strip():
        if _all_optional(op.body):
            return op.body(), b"{}"
        raise Problem(422, "this request needs a JSON body")
    if media != "application/json":
        accepted = ", ".join(("application/json", *op.raw_body))
        raise Problem(415, f"send the body as {accepted} (got {media or 'no Content-Type'})")
    try:
        data = _storable(json.loads(raw, parse_constant=_no_constant))
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Problem(400, "the body is nested too deeply") from None
    return _validate(op.body, data, "body"), canonical.encode()


def fingerprint(method: str, path: str, document: bytes) -> str:
    """What makes two requests with one ``Idempotency-Key`` the same request: method, path and
    the body as ``_body`` identifies it."""
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), document])).hexdigest()


async def _idempotent(
    op: Operation, call: Call, key: str, document: bytes, gateway: Gateway
) -> web.StreamResponse:
    """Run ``op`` once per key and caller, and answer repeats with what the first one answered.

    Which answers a key keeps (the IETF Idempotency-Key draft leaves it to the server): every
    final answer the handler gave, success or refusal, as Stripe does once a request began
    executing: a 404, 409 or 422 from the handler depends on this request and the state it met,
    so a repeat gets it again rather than doing something else later (a trigger refused because
    the pipeline was archived stays refused when the pipeline comes back; send a new key to try
    again). Not kept, so the same key may be retried: answers given before the handler ran
    (malformed or invalid input, which is the same every time anyway), refusals that pass
    (``PASSING_REFUSALS``: authentication and authorization, rate limits), 5xx, and errors that
    escape the handler (a lost race against concurrent writers).

    The claim is held with a lease this process renews while the handler works, so a claim
    left by a killed process frees the key within the lease. Run commands store their answer
    in their own transaction (``ApiGateway.respond``): after a crash a retry gets either that
    answer or, if the work never committed, executes afresh."""
    if not key or len(key) > MAX_KEY or not all(33 <= ord(c) <= 126 for c in key):
        raise Problem(400, f"Idempotency-Key must be 1-{MAX_KEY} printable ASCII characters without spaces")
    caller = call.principal.name
    path = PREFIX + op.path.format_map(await gateway.canonical(call.params))
    call.key_fingerprint = fingerprint(op.method, path, document)
    claim = await gateway.claim_key(caller, key, call.key_fingerprint)
    if claim.outcome == "mismatch":
        raise Problem(
            422,
            "this Idempotency-Key was already used with a different request; use a new key for a new request",
        )
    if claim.outcome == "in_progress":
        raise Problem(409, "a request with this Idempotency-Key is still being processed; retry shortly")
    if claim.outcome == "replay":
        return replayed(claim.status_code, claim.response)
    call.idempotency_key, call.key_holder = key, claim.holder
    response: web.StreamResponse
    renewing = asyncio.create_task(_renew(gateway, caller, key, claim.holder))
    try:
        response = await op.handler(call)
    except Problem as problem:
        response = problem.response(call.request.path)
    except CommandRefused as exc:
        response = _refusal(exc, call.request)
    except BaseException:
        await gateway.release_key(caller, key, claim.holder)
        raise
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
    if call.settled:  # the answer was stored with the work it answers for
        return response
    if not isinstance(response, web.Response) or not kept(response.status):
        await gateway.release_key(caller, key, claim.holder)
        return response
    await gateway.finish_key(caller, key, claim.holder, response.status, stored(response))
    return response


async def _renew(gateway: Gateway, caller: str, key: str, holder: str) -> None:
    """Keep a request's claim on its key alive while it works: a process that dies stops
    renewing, and its claim frees the key within the lease."""
    while True:
        await asyncio.sleep(gateway.renew_key_every)
        try:
            if not await gateway.renew_key(caller, key, holder):
                log.warning("the claim on Idempotency-Key %r lapsed while its request was working", key)
                return
        except Exception:  # the database is away: try again at the next turn
            log.exception("could not renew the claim on Idempotency-Key %r", key)


def stored(response: web.Response) -> dict[str, Any]:
    """What a key keeps of an answer to replay it: body, media type, Location and ETag."""
    keep = {h: response.headers[h] for h in ("Location", "ETag") if h in response.headers}
    return {"body": response.text or "", "content_type": response.content_type, "headers": keep}


def replayed(status: int | None, answer: dict[str, Any] | None) -> web.Response:
    """The answer a key kept (``stored``), sent again, marked ``Idempotent-Replayed``."""
    answer = answer or {}
    return web.Response(
        status=status or 200,
        text=answer.get("body", ""),
        content_type=answer.get("content_type", "application/json"),
        headers={**answer.get("headers", {}), "Idempotent-Replayed": "true"},
    )


def kept(status: int) -> bool:
    """Whether an ``Idempotency-Key`` keeps an answer with ``status`` (see ``_idempotent``)."""
    return status < 500 and status not in PASSING_REFUSALS


async def audit_request(
    gateway: Gateway,
    action: str,
    request: web.Request,
    principal: Principal | None,
    response: web.StreamResponse,
) -> None:
    """Mutating requests that did not become an engine command are audited here, allowed or not
    (the engine audits its commands itself). The path and the refusal are stored as a database
    can store them: a request refused for a NUL in its path is still on the record."""
    path = _storable(request.path)
    detail: dict[str, Any] = {"method": request.method, "path": path, "status": response.status}
    if response.status < 400 and "Location" in response.headers:  # what the request made
        detail["location"] = response.headers["Location"].removeprefix(PREFIX)
    reason = ""
    if isinstance(response, web.Response) and response.content_type == PROBLEM_TYPE and response.text:
        reason = _storable(str(json.loads(response.text).get("detail", "")))
    entry = AuditEntry(
        at=datetime.now(UTC),
        actor=principal.name if principal else "(unauthenticated)",
        channel="rest",
        action=action,
        target=path.removeprefix(PREFIX),
        outcome="duplicate"
        if "Idempotent-Replayed" in response.headers
        else "accepted"
        if response.status < 400
        else "rejected",
        reason=reason,
        detail=detail,
    )
    try:
        await gateway.audit(entry)
    except DatabaseUnreachable:  # (the outage is logged once, by the engine's health)
        log.warning("could not audit %s %s: the database is unreachable", request.method, request.path)
    except Exception:  # the refusal stands even if the audit write fails; say so loudly
        log.exception("could not audit %s %s", request.method, request.path)
