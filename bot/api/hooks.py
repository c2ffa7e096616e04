"""The two doors that take no bearer token, because the signature is the authentication:

* ``POST /api/v1/hooks/{trigger_id}`` starts a run from an external event: a GitHub ``push``
  (``X-Hub-Signature-256``; the digest of the signed body is the idempotency key, so a redelivered
  event never starts a second run, and neither does a captured one sent again under another
  ``X-GitHub-Delivery``, which the signature does not cover; a push refused or ignored is
  answered the same again, kept under that digest, even after the rules changed; one pushed
  longer ago than answers are kept is refused; the run carries the pushed
  branch, ``refs/heads/main`` being ``main``, for environments that take only some branches; a
  tag push starts nothing) or a generic JSON ``{"parameters", "revision", "branch"}`` signed the
  Standard Webhooks way (``webhook-id`` is the key; a timestamp more than five minutes off is a
  replay and refused). The run is triggered by ``trigger:<id>`` on behalf of the trigger's
  owner, who therefore cannot approve its gates (unless a gate allows self-approval). The
  owner's standing is asked each time a trigger fires, as a schedule's is: a trigger whose owner
  may no longer start runs (the role revoked, every API token revoked) answers every signed
  request ``403`` naming the owner, until an admin re-creates it under someone who may.
* ``POST /api/v1/runs/{run}/gates/{gate}/callback?webhook=<id>`` clears (``"passed": true``) or
  fails an external gate; it is signed with the secret of the subscription that was sent the
  gate's ``gate.waiting``, and its ``webhook-id`` is used once (the same callback again gets
  the first answer, however the URL names the run and the gate; sent to another gate, a
  refusal).

Every refusal (unknown trigger, unsigned, badly signed, stale, malformed, an owner without the
standing) is a 4xx problem document and an audit entry; accepted requests become engine
commands, which audit themselves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from bot.api.gateway import ApiGateway
from bot.api.problems import REFUSAL_STATUS, Problem
from bot.api.routing import PREFIX, _clean, _storable, field_errors, fingerprint, kept, replayed, stored
from bot.api.schemas import RunOut, Strict, TriggerIn
from bot.backend import now
from bot.webhooks import signing
from bot.webhooks.incoming import Ignored, NotAPush, Push, match_push
from core.access import Action
from core.commands import RecordGateCheck, TriggerRun
from core.model import Actor, RunState
from core.ports import AuditEntry
from storage.webhooks import Trigger, WebhookStore

HOOK_PATH = PREFIX + "/hooks/{trigger_id}"
CALLBACK_PATH = PREFIX + "/runs/{run_id}/gates/{gate_id}/callback"
#: answers a trigger's request may not get again: a timeout, a rate limit
TRANSIENT = frozenset({408, 425, 429})
#: an idempotency key from a header: printable ASCII, as long as the engine stores
KEY_CHARS = frozenset(chr(c) for c in range(33, 127))


class HookOut(BaseModel):
    outcome: Literal["started", "duplicate", "ignored", "pong"]
    reason: str = ""
    run: RunOut | None = None


class CallbackIn(Strict):
    passed: bool
    detail: str = Field("", max_length=1000, description="what the check found; shown on the gate")


class _Refused(Exception):
    """A request refused before it became a command: answered, and audited."""

    def __init__(self, status: int, detail: str, who: str = "(unauthenticated)", **extra: str) -> None:
        super().__init__(detail)
        self.problem = Problem(status, detail, **extra)
        self.who = who
        #: told to the sender (problem extension members) and recorded in the audit entry
        self.extra = extra


class _Replayed(_Refused):
    """A refusal kept under the request's key, answered again as it was the first time (and
    audited again: a replay is worth seeing)."""

    def __init__(self, response: web.Response, who: str) -> None:
        kept_problem = json.loads(response.text or "{}")
        super().__init__(response.status, str(kept_problem.get("detail", "")), who, replayed="true")
        self.response = response


Handler = Callable[[ApiGateway, web.Request], Awaitable[web.Response]]


def setup(app: web.Application, gateway: ApiGateway) -> None:
    app.router.add_post(HOOK_PATH, _audited(gateway, "hook_trigger", receive_hook))
    app.router.add_post(CALLBACK_PATH, _audited(gateway, "gate_callback", gate_callback))


def _audited(
    gateway: ApiGateway, action: str, handler: Handler
) -> Callable[[web.Request], Awaitable[web.Response]]:
    @functools.wraps(handler)
    async def handle(request: web.Request) -> web.Response:
        if not _clean(request.path) or not all(_clean(k + v) for k, v in request.query.items()):
            detail = "paths and query parameters must be valid UTF-8 text without NUL characters"
            return Problem(400, detail).response()
        try:
            return await handler(gateway, request)
        except Problem as problem:  # a refused command: the engine audited it
            return problem.response(request.path)
        except _Refused as refused:
            await gateway.audit(
                AuditEntry(
                    at=datetime.now(UTC),
                    actor=refused.who,
                    channel="webhook",
                    action=action,
                    target=request.path.removeprefix(PREFIX)[:200],
                    outcome="rejected",
                    reason=refused.problem.detail,
                    detail={
                        "status": refused.problem.status,
                        "delivery": _header(request, "X-GitHub-Delivery") or _header(request, "webhook-id"),
                        "event": _header(request, "X-GitHub-Event"),
                        **refused.extra,
                    },
                )
            )
            if isinstance(refused, _Replayed):
                return refused.response
            return refused.problem.response(request.path)

    return handle


def _header(request: web.Request, name: str) -> str:
    """A header for the audit entry: bytes that were not UTF-8 arrive as surrogates, which the
    audit log cannot hash or store."""
    return str(_storable(request.headers.get(name, "")[:200]))


async def _body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _Refused(413, f"the body is larger than {request.client_max_size} bytes") from None


def _json(raw: bytes, who: str) -> Any:
    try:
        return _storable(json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Refused(400, f"the body is not valid JSON: {exc}", who) from None


def _key(value: str, header: str, who: str) -> str:
    if not value or len(value) > 150 or not set(value) <= KEY_CHARS:
        raise _Refused(400, f"{header} must be 1-150 printable characters", who)
    return value


# -- incoming triggers -------------------------------------------------------------------------
async def receive_hook(gateway: ApiGateway, request: web.Request) -> web.Response:
    raw = await _body(request)
    webhook_store = WebhookStore(gateway.shipyard.store)
    trigger = await gateway.read(webhook_store.trigger, request.match_info["trigger_id"], quick=True)
    if trigger is None:
        raise _Refused(404, f"no trigger {request.match_info['trigger_id']!r}")
    if trigger.kind == "github":
        return await _github(gateway, request, trigger, raw)
    return await _generic(gateway, request, trigger, raw)


def _trigger_actor(trigger: Trigger) -> Actor:
    return Actor(f"trigger:{trigger.id}", "webhook")


async def _check_owner(gateway: ApiGateway, trigger: Trigger) -> None:
    """A trigger fires with what its owner may do now, not what they could when they created
    it (a schedule's owner is asked the same in ``bot.scheduler``). Asked after the signature
    checks out, so only a sender holding the secret learns who the owner is."""
    owner = await gateway.read(gateway.directory.standing, trigger.owner, now(), quick=True)
    if owner is None:
        why = f"{trigger.owner}'s API token was revoked"
    elif not owner.may(Action.TRIGGER):
        why = f"{trigger.owner} holds {', '.join(sorted(owner.roles)) or 'no role'}"
    else:
        return
    raise _Refused(
        403,
        f"trigger {trigger.id} starts runs on behalf of {trigger.owner}, who may no longer start "
        f"runs ({why}); an admin must re-create the trigger under a principal who may",
        _trigger_actor(trigger).name,
        trigger=trigger.id,
        owner=trigger.owner,
    )


def _owner(trigger: Trigger) -> tuple[str, ...]:
    """Who asks for the runs a trigger starts: the principal who created it, acting through it,
    is still that person when the run's gates are approved (separation of duties)."""
    return (trigger.owner,)


async def _github(gateway: ApiGateway, request: web.Request, trigger: Trigger, raw: bytes) -> web.Response:
    try:
        signing.verify_github(trigger.secret, request.headers.get("X-Hub-Signature-256"), raw)
    except signing.BadSignature as exc:
        raise _Refused(401, str(exc)) from None
    who = _trigger_actor(trigger).name
    event = request.headers.get("X-GitHub-Event", "")
    if event != "push":
        await _check_owner(gateway, trigger)
        if event == "ping":
            return _answer(HookOut(outcome="pong", reason="the webhook reaches Shipyard"), 200)
        return _answer(HookOut(outcome="ignored", reason=f"only push events start runs (got {event!r})"), 200)
    if request.content_type != "application/json":
        raise _Refused(415, "set the GitHub webhook's content type to application/json", who)
    delivery = _key(request.headers.get("X-GitHub-Delivery", ""), "X-GitHub-Delivery", who)
    # The body, not X-GitHub-Delivery, is the push: only the body is signed, so a captured push
    # sent again under a fresh delivery id is still the same push. What the first delivery was
    # answered is kept under its digest (the answers above depend on unsigned headers and are
    # not): a push refused (its owner's standing too) or ignored stays so when sent again after
    # the rules changed.
    digest = hashlib.sha256(raw).hexdigest()
    key = f"github:sha256:{digest}"
    return await _once(
        gateway,
        request.path,
        who,
        key,
        digest,
        lambda: _push(gateway, trigger, raw, delivery, key),
        keep=_kept_push,
        busy=f"a delivery of this push ({key}) is still being processed",
        mismatch="this push was already delivered",
    )


def _kept_push(response: web.Response) -> web.Response | None:
    """What of a push's answer is kept: a refusal, or the push ignored; a run it started is
    found again by its idempotency key (forever, where kept answers are purged), and answered as
    a duplicate with the run as it is now."""
    started = response.status == 202 or "Idempotent-Replayed" in response.headers
    return response if _final(response.status) and not started else None


def _final(status: int) -> bool:
    """Whether a trigger keeps an answer: unlike an ``Idempotency-Key``'s, its 403s too (a
    branch an environment does not take, an owner who may not start runs), which are about the
    signed request, not about a caller who could authenticate otherwise next time."""
    return status < 500 and status not in TRANSIENT


def _kept_generic(response: web.Response) -> web.Response | None:
    """What of a generic trigger's answer is kept: all of it, a run it started as the duplicate
    a repeat is, so that its webhook-id with another body is told apart (within the five minutes
    its signature is good for, as long as answers are kept)."""
    if response.status != 202:
        return response if _final(response.status) else None
    out = HookOut.model_validate_json(response.text or "{}")
    assert out.run is not None
    return _answer(
        HookOut(outcome="duplicate", reason=f"already triggered as {out.run.ref}", run=out.run),
        200,
        {"Location": response.headers["Location"]},
    )


def _kept(response: web.Response) -> web.Response | None:
    return response if kept(response.status) else None


async def _push(gateway: ApiGateway, trigger: Trigger, raw: bytes, delivery: str, key: str) -> web.Response:
    await _check_owner(gateway, trigger)
    who = _trigger_actor(trigger).name
    payload = _json(raw, who)
    info = await gateway.read(gateway.reads.pipeline, trigger.pipeline)
    if info is None:
        raise _Refused(404, f"trigger {trigger.id}'s pipeline {trigger.pipeline!r} is gone", who)
    try:
        push = match_push(info.latest.definition, payload)
    except NotAPush as exc:
        raise _Refused(422, str(exc), who) from None
    if isinstance(push, Ignored):
        return _answer(HookOut(outcome="ignored", reason=push.reason), 200)
    for started_as in (f"github:{delivery}", key):  # the first: keyed before runs were keyed by the body
        earlier = await gateway.read(gateway.reads.run_by_key, trigger.pipeline, started_as, quick=True)
        if earlier is not None:  # GitHub's "Redeliver" of a push that started a run
            return _duplicate(earlier, f"already triggered as {earlier.run.ref}")
    _check_age(gateway, push, who)
    command = TriggerRun(
        pipeline=trigger.pipeline,
        actor=_trigger_actor(trigger),
        requested_by=_owner(trigger),
        parameters=push.parameters,
        source_revision=push.revision,
        revision_time=push.committed_at,
        branch=push.branch,
        idempotency_key=key,
    )
    return await _start(gateway, command)


def _check_age(gateway: ApiGateway, push: Push, who: str) -> None:
    """A push older than Shipyard keeps answers (``SHIPYARD_IDEMPOTENCY_HOURS``) could have been
    refused once and forgotten since: it is refused, so no captured push ever starts a run of
    its old commit. The time is the signed ``repository.pushed_at``, by GitHub's clock: ours
    may be a little behind it, so the bound is tighter by the tolerance a signed timestamp gets
    (a refusal is kept from when we made it, which is no earlier than the push by our clock)."""
    keep = timedelta(hours=gateway.shipyard.settings.idempotency_hours)
    if push.pushed_at is not None and push.pushed_at < now() - keep + timedelta(seconds=signing.TOLERANCE_S):
        raise _Refused(
            422,
            f"this push was made at {push.pushed_at.isoformat()}, longer ago than Shipyard remembers "
            f"deliveries ({keep.total_seconds() / 3600:g} hours); push again, or start the run by hand",
            who,
        )


async def _once(
    gateway: ApiGateway,
    instance: str,
    who: str,
    key: str,
    fingerprinted: str,
    work: Callable[[], Awaitable[web.Response]],
    *,
    keep: Callable[[web.Response], web.Response | None],
    busy: str,
    mismatch: str,
) -> web.Response:
    """``work`` once for ``who``'s ``key``: what it answered (as ``keep`` keeps it) is answered
    again to the same request, and a refusal again is audited again."""
    claim = await gateway.claim_key(who, key, fingerprinted)
    if claim.outcome == "mismatch":
        raise _Refused(409, mismatch, who)
    if claim.outcome == "in_progress":
        raise _Refused(409, busy, who)
    if claim.outcome == "replay":
        response = replayed(claim.status_code, claim.response)
        if response.status >= 400:
            raise _Replayed(response, who)
        return response
    try:
        response = await work()
    except (Problem, _Refused) as exc:
        problem = exc.problem if isinstance(exc, _Refused) else exc
        await _keep(gateway, who, key, claim.holder, problem.response(instance), keep)
        raise
    except BaseException:
        await gateway.release_key(who, key, claim.holder)
        raise
    await _keep(gateway, who, key, claim.holder, response, keep)
    return response


async def _generic(gateway: ApiGateway, request: web.Request, trigger: Trigger, raw: bytes) -> web.Response:
    try:
        msg_id = signing.verify(trigger.secret, _lower(request.headers), raw, time.time())
    except signing.BadSignature as exc:
        raise _Refused(401, str(exc)) from None
    who = _trigger_actor(trigger).name
    key = _key(msg_id, "webhook-id", who)
    # as a push's, a refusal is kept: sent again in its five minutes after the pipeline changed,
    # the same request gets the same answer
    return await _once(
        gateway,
        request.path,
        who,
        f"hook:{key}",
        hashlib.sha256(raw).hexdigest(),
        lambda: _generic_run(gateway, trigger, raw, key),
        keep=_kept_generic,
        busy=f"a request with webhook-id {key} is still being processed",
        mismatch=f"webhook-id {key} was already used for another body; sign each request with a new one",
    )


async def _generic_run(gateway: ApiGateway, trigger: Trigger, raw: bytes, key: str) -> web.Response:
    await _check_owner(gateway, trigger)
    who = _trigger_actor(trigger).name
    data = _json(raw, who) if raw.strip() else {}
    try:
        body = TriggerIn.model_validate(data)
    except ValidationError as exc:
        raise _Refused(422, f"invalid body: {field_errors(exc, 'body')[1]}", who) from None
    command = TriggerRun(
        pipeline=trigger.pipeline,
        actor=_trigger_actor(trigger),
        requested_by=_owner(trigger),
        parameters=body.parameters,
        source_revision=body.revision,
        revision_time=body.revision_time,
        branch=body.branch,
        idempotency_key=f"hook:{trigger.id}:{key}",
        pipeline_version=body.pipeline_version,
    )
    return await _start(gateway, command)


async def _start(gateway: ApiGateway, command: TriggerRun) -> web.Response:
    decision = await gateway.decide(command)
    if not decision.accepted or decision.state is None:
        raise Problem(REFUSAL_STATUS.get(decision.refusal, 409), decision.reason)  # audited by the engine
    state = decision.state
    if decision.duplicate:
        return _duplicate(state, decision.reason)
    return _answer(HookOut(outcome="started", run=RunOut.of(state)), 202, {"Location": _location(state)})


def _duplicate(state: RunState, reason: str) -> web.Response:
    out = HookOut(outcome="duplicate", reason=reason, run=RunOut.of(state))
    return _answer(out, 200, {"Idempotent-Replayed": "true", "Location": _location(state)})


def _location(state: RunState) -> str:
    return f"{PREFIX}/runs/{state.run.id}"


def _answer(out: BaseModel, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=out.model_dump_json(), content_type="application/json", headers=headers
    )


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


# -- external gates ----------------------------------------------------------------------------
async def gate_callback(gateway: ApiGateway, request: web.Request) -> web.Response:
    raw = await _body(request)
    webhook_id = request.query.get("webhook", "")
    if not webhook_id:
        raise _Refused(400, "use the callback URL from the gate.waiting message: it names ?webhook=")
    webhook_store = WebhookStore(gateway.shipyard.store)
    hook = await gateway.read(webhook_store.get, webhook_id[:40], quick=True)
    if hook is None:
        raise _Refused(401, f"no webhook subscription {webhook_id[:40]!r}")
    try:
        msg_id = signing.verify(hook.secret, _lower(request.headers), raw, time.time())
    except signing.BadSignature as exc:
        raise _Refused(401, f"{exc} (sign with the subscription's secret)") from None
    who = f"webhook:{hook.id}"
    if hook.status != "active":
        raise _Refused(403, f"webhook {hook.id} is {hook.status}", who)
    # The signature covers the webhook-id, the time and the body, not the URL: within its five
    # minutes a captured callback could be sent to another of the subscription's gates. So a
    # webhook-id is used once: sent again to the same gate (by its run's id or its ref, by the
    # gate's id or its stage's name) it gets the first answer, elsewhere a refusal.
    key = _key(msg_id, "webhook-id", who)
    return await _once(
        gateway,
        request.path,
        who,
        key,
        fingerprint("POST", CALLBACK_PATH.format_map(await gateway.canonical(dict(request.match_info))), raw),
        lambda: _verdict(gateway, request, hook.id, raw, who),
        keep=_kept,
        busy=f"a callback with webhook-id {key} is still being processed",
        mismatch=f"webhook-id {key} was already used for another callback; sign each anew",
    )


async def _keep(
    gateway: ApiGateway,
    who: str,
    key: str,
    holder: str,
    response: web.Response,
    keep: Callable[[web.Response], web.Response | None],
) -> None:
    kept_as = keep(response)
    if kept_as is not None:
        await gateway.finish_key(who, key, holder, kept_as.status, stored(kept_as))
    else:
        await gateway.release_key(who, key, holder)


async def _verdict(
    gateway: ApiGateway, request: web.Request, hook_id: str, raw: bytes, who: str
) -> web.Response:
    webhook_store = WebhookStore(gateway.shipyard.store)
    try:
        body = CallbackIn.model_validate(_json(raw, who))
    except ValidationError as exc:
        raise _Refused(422, f"invalid body: {field_errors(exc, 'body')[1]}", who) from None
    ref = request.match_info["run_id"]
    state = await gateway.read(gateway.reads.run, ref, quick=True)
    if state is None:
        raise _Refused(404, f"no run {ref!r}", who)
    gate = state.find_gate(request.match_info["gate_id"])
    if gate is None:
        raise _Refused(404, f"{state.run.ref} has no gate {request.match_info['gate_id']!r}", who)
    if gate.kind != "external":
        raise _Refused(409, f"gate {gate.stage_name} is {gate.kind}; only external gates take callbacks", who)
    if not await gateway.read(webhook_store.was_told, hook_id, state.run.id, gate.id):
        raise _Refused(403, f"webhook {hook_id} was not sent gate {gate.stage_name}'s gate.waiting", who)
    decision = await gateway.decide(
        RecordGateCheck(
            run_id=state.run.id,
            gate=gate.id,
            passed=body.passed,
            detail=body.detail,
            actor=Actor(who, "webhook"),
        )
    )
    if not decision.accepted or decision.state is None:
        raise Problem(REFUSAL_STATUS.get(decision.refusal, 409), decision.reason)  # audited by the engine
    return _answer(RunOut.of(decision.state), 200)
