"""Webhooks both ways, as resources admins manage: outgoing subscriptions with their deliveries
(``/webhooks``), and incoming triggers (``/triggers``) that ``POST /hooks/{trigger_id}`` starts
runs through. Secrets are shown once, when created."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal, get_args

from aiohttp import web
from pydantic import BaseModel, Field
from yarl import URL

from bot.api.common import id_cursor, known_environment, reply
from bot.api.gateway import gw
from bot.api.problems import Problem
from bot.api.routing import Call
from bot.api.schemas import NEXT, EmptyIn, Page, QueryModel, Strict
from bot.api.spec import API
from bot.backend import now
from bot.webhooks import signing
from bot.webhooks.messages import EVENT_TYPES
from bot.webhooks.policy import check_name
from bot.webhooks.service import WEBHOOKS, Config
from core.access import Action
from core.errors import IllegalTransition
from storage.webhooks import Attempt, Delivery, Trigger, Webhook, WebhookStore

EventType = Literal[
    "run.started",
    "run.finished",
    "stage.finished",
    "gate.waiting",
    "gate.decided",
    "deployment.finished",
    "environment.health_changed",
    "rollout.step",
    "rollout.promoted",
    "rollout.aborted",
]
NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: how long registration waits for the URL's host name to resolve
RESOLVE_S = 5.0
assert set(get_args(EventType)) == set(EVENT_TYPES)


class WebhookIn(Strict):
    url: str = Field(
        min_length=10,
        max_length=2000,
        pattern=r"^https?://[^\s/?#@]+(/\S*)?$",
        description="where deliveries are POSTed; http(s), no credentials in it",
    )
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    pipeline: str | None = Field(None, pattern=NAME, max_length=63, description="only this pipeline's runs")
    environment: str | None = Field(
        None,
        pattern=NAME,
        max_length=63,
        description="only stages deploying here (and runs with one), and this environment's health changes",
    )
    description: str = Field("", max_length=500)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    pipeline: str | None
    environment: str | None
    description: str
    status: Literal["active", "disabled", "deleted"]
    status_reason: str = Field(description="why it was disabled, when it was")
    owner: str
    consecutive_failures: int
    failing_since: datetime | None
    created_at: datetime
    changed_at: datetime | None

    @classmethod
    def of(cls, w: Webhook) -> WebhookOut:
        return cls(
            id=w.id,
            url=w.url,
            events=sorted(w.events),
            pipeline=w.pipeline,
            environment=w.environment,
            description=w.description,
            status=w.status,
            status_reason=w.status_reason,
            owner=w.owner,
            consecutive_failures=w.consecutive_failures,
            failing_since=w.failing_since,
            created_at=w.created_at,
            changed_at=w.changed_at,
        )


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="verify each delivery's webhook-signature with it (Standard Webhooks); shown only now"
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryOut(BaseModel):
    id: int
    webhook_id: str
    msg_id: str = Field(description="the webhook-id header: the same for every attempt and redelivery")
    event_type: str
    event_seq: int
    run_id: str
    subject_id: str
    state: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None = Field(description="when it is next tried (pending only)")
    last_status: int | None
    last_error: str
    created_at: datetime
    finished_at: datetime | None
    redelivery_of: int | None

    @classmethod
    def of(cls, d: Delivery) -> DeliveryOut:
        return cls(
            id=d.id,
            webhook_id=d.webhook_id,
            msg_id=d.msg_id,
            event_type=d.event_type,
            event_seq=d.event_seq,
            run_id=d.run_id,
            subject_id=d.subject_id,
            state=d.state,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at if d.state == "pending" else None,
            last_status=d.last_status,
            last_error=d.last_error,
            created_at=d.created_at,
            finished_at=d.finished_at,
            redelivery_of=d.redelivery_of,
        )


class AttemptOut(BaseModel):
    number: int
    at: datetime
    duration_ms: float
    status: int | None = Field(description="the receiver's HTTP status; null if there was no answer")
    error: str
    request_headers: dict[str, str]
    response: str = Field(description="the first KiB of the receiver's answer")

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(
            number=a.number,
            at=a.at,
            duration_ms=a.duration_ms,
            status=a.status,
            error=a.error,
            request_headers=a.request_headers,
            response=a.response,
        )


class DeliveryDetail(DeliveryOut):
    body: str = Field(description="the request body, exactly as sent and signed")
    attempt_log: list[AttemptOut]


class DeliveryPage(Page):
    items: list[DeliveryOut]


class DeliveriesQuery(QueryModel):
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, pattern=r"^[0-9]{0,18}$", description=NEXT)
    state: Literal["pending", "sending", "delivered", "failed"] | None = None


class IncomingTriggerIn(Strict):
    pipeline: str = Field(pattern=NAME, max_length=63)
    kind: Literal["github", "generic"] = Field(
        description="github: push events signed with X-Hub-Signature-256; generic: any JSON "
        "{parameters, revision} signed the Standard Webhooks way"
    )
    description: str = Field("", max_length=500)


class IncomingTriggerOut(BaseModel):
    id: str
    pipeline: str
    kind: Literal["github", "generic"]
    url: str = Field(description="where the source system sends its requests")
    description: str
    owner: str
    created_at: datetime


class IncomingTriggerCreated(IncomingTriggerOut):
    secret: str = Field(description="the signing secret; shown only now")


class IncomingTriggerList(BaseModel):
    items: list[IncomingTriggerOut]


def _webhook_store(call: Call) -> WebhookStore:
    return WebhookStore(gw(call).shipyard.store)


def _config(call: Call) -> Config:
    return call.request.app[WEBHOOKS].config


def _trigger_out(call: Call, t: Trigger) -> IncomingTriggerOut:
    return IncomingTriggerOut(
        id=t.id,
        pipeline=t.pipeline,
        kind=t.kind,
        url=f"{_config(call).base_url}/api/v1/hooks/{t.id}",
        description=t.description,
        owner=t.owner,
        created_at=t.created_at,
    )


async def _webhook(call: Call) -> Webhook:
    found = await gw(call).read(_webhook_store(call).get, call.params["webhook_id"], quick=True)
    if found is None:
        raise Problem(404, f"no webhook {call.params['webhook_id']!r}")
    return found


async def _check_url(call: Call, text: str) -> str:
    """A URL the policy lets deliveries reach (resolved now; checked again at every connect)."""
    try:  # yarl checks ports, bracketed addresses and IDNA labels only as it parses them
        url = URL(text)
        host, port = url.host, url.port
    except ValueError as exc:  # (UnicodeError included)
        raise Problem(422, f"url is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not host:
        raise Problem(422, "url must be an http:// or https:// URL with a host")
    if not port:
        raise Problem(422, "url must not name port 0: nothing can be reached there")
    if url.user is not None or url.password is not None:
        raise Problem(422, "url must not carry credentials: deliveries are signed instead")
    try:
        async with asyncio.timeout(RESOLVE_S):
            why = await check_name(_config(call).policy, host)
    except TimeoutError:
        why = f"{host} did not resolve within {RESOLVE_S:g} s"
    if why is not None:
        raise Problem(422, f"url refused: {why}")
    return str(url)


@API.op(
    "GET",
    "/webhooks",
    summary="List webhook subscriptions",
    action=Action.MANAGE,
    tag="webhooks",
    responses={200: ("every subscription that was not deleted", WebhookList)},
)
async def list_webhooks(call: Call) -> web.Response:
    found = await gw(call).read(_webhook_store(call).all)
    return reply(WebhookList(items=[WebhookOut.of(w) for w in found]))


@API.op(
    "POST",
    "/webhooks",
    summary="Subscribe a URL to events",
    action=Action.MANAGE,
    tag="webhooks",
    body=WebhookIn,
    responses={201: ("the subscription, with its secret (shown only now)", WebhookCreated)},
    headers={201: {"Location": "/api/v1/webhooks/{id}"}},
)
async def create_webhook(call: Call) -> web.Response:
    """Events from now on are delivered, signed (Standard Webhooks), at least once, in order per
    run, retried with backoff for hours. URLs that resolve to loopback, private, link-local or
    metadata addresses are refused unless `SHIPYARD_WEBHOOK_ALLOW` names them."""
    body: WebhookIn = call.body
    url = await _check_url(call, body.url)
    if body.pipeline is not None and await gw(call).read(gw(call).reads.pipeline, body.pipeline) is None:
        raise Problem(404, f"no pipeline {body.pipeline!r}")
    if body.environment is not None:
        await known_environment(call, body.environment)
    secret = signing.new_secret()
    created = await gw(call).write(
        lambda: _webhook_store(call).create(
            url=url,
            events=body.events,
            pipeline=body.pipeline,
            environment=body.environment,
            description=body.description,
            secret=secret,
            owner=call.principal.name,
            now=now(),
        )
    )
    call.request.app[WEBHOOKS].poke()
    out = WebhookCreated(**WebhookOut.of(created).model_dump(), secret=secret)
    return reply(out, 201, {"Location": f"/api/v1/webhooks/{created.id}"})


@API.op(
    "GET",
    "/webhooks/{webhook_id}",
    summary="A webhook subscription",
    action=Action.MANAGE,
    tag="webhooks",
    responses={200: ("the subscription: status, and why it was disabled if it was", WebhookOut)},
)
async def get_webhook(call: Call) -> web.Response:
    return reply(WebhookOut.of(await _webhook(call)))


async def _change(call: Call, to: str, reason: str) -> web.Response:
    found = await _webhook(call)
    try:
        changed = await gw(call).write(_webhook_store(call).change_status, found.id, to, reason, now())
    except IllegalTransition as exc:
        raise Problem(409, exc.message) from None
    if changed is None:
        raise Problem(404, f"no webhook {found.id!r}")
    call.request.app[WEBHOOKS].poke()
    return reply(WebhookOut.of(changed))


@API.op(
    "DELETE",
    "/webhooks/{webhook_id}",
    summary="Delete a webhook subscription",
    action=Action.MANAGE,
    tag="webhooks",
    responses={200: ("the subscription, deleted: nothing more is sent to it", WebhookOut)},
)
async def delete_webhook(call: Call) -> web.Response:
    return await _change(call, "deleted", f"deleted by {call.principal.name}")


@API.op(
    "POST",
    "/webhooks/{webhook_id}/enable",
    summary="Enable a disabled subscription again",
    action=Action.MANAGE,
    tag="webhooks",
    body=EmptyIn,
    responses={200: ("the subscription, active; its waiting deliveries are due now", WebhookOut)},
)
async def enable_webhook(call: Call) -> web.Response:
    """Its failure count starts again from zero."""
    return await _change(call, "active", "")


@API.op(
    "GET",
    "/webhooks/{webhook_id}/deliveries",
    summary="A subscription's deliveries, newest first",
    action=Action.MANAGE,
    tag="webhooks",
    query=DeliveriesQuery,
    responses={200: ("a page of deliveries", DeliveryPage)},
)
async def list_deliveries(call: Call) -> web.Response:
    found = await _webhook(call)
    q: DeliveriesQuery = call.query
    before = id_cursor(q.cursor, 2**62)
    rows = await gw(call).read(_webhook_store(call).deliveries, found.id, before, q.limit + 1, q.state)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    cursor = str(rows[-1].id) if more else None
    return reply(DeliveryPage(items=[DeliveryOut.of(d) for d in rows], next_cursor=cursor))


async def _delivery_id(call: Call) -> tuple[Webhook, int]:
    found = await _webhook(call)
    raw = call.params["delivery_id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise Problem(404, f"no delivery {raw!r} of webhook {found.id}")
    return found, int(raw)


@API.op(
    "GET",
    "/webhooks/{webhook_id}/deliveries/{delivery_id}",
    summary="A delivery: the request, and every attempt",
    action=Action.MANAGE,
    tag="webhooks",
    responses={200: ("the delivery with its body and attempts", DeliveryDetail)},
)
async def get_delivery(call: Call) -> web.Response:
    hook, delivery_id = await _delivery_id(call)
    found = await gw(call).read(_webhook_store(call).delivery, hook.id, delivery_id)
    if found is None:
        raise Problem(404, f"no delivery {delivery_id} of webhook {hook.id}")
    delivery, attempts = found
    out = DeliveryDetail(
        **DeliveryOut.of(delivery).model_dump(),
        body=delivery.body,
        attempt_log=[AttemptOut.of(a) for a in attempts],
    )
    return reply(out)


@API.op(
    "POST",
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    summary="Send a delivery again",
    action=Action.MANAGE,
    tag="webhooks",
    body=EmptyIn,
    responses={202: ("the new delivery: same message id and body, sent as soon as it is due", DeliveryOut)},
)
async def redeliver(call: Call) -> web.Response:
    """For a delivered or failed delivery (a pending one is sent without asking)."""
    hook, delivery_id = await _delivery_id(call)
    result = await gw(call).write(_webhook_store(call).redeliver, hook.id, delivery_id, now())
    if isinstance(result, str):
        status = 404 if result == "no such delivery" else 409
        raise Problem(status, f"delivery {delivery_id} of webhook {hook.id}: {result}")
    return reply(DeliveryOut.of(result), 202)


@API.op(
    "GET",
    "/triggers",
    summary="List incoming triggers",
    action=Action.MANAGE,
    tag="webhooks",
    responses={200: ("every trigger that was not deleted", IncomingTriggerList)},
)
async def list_triggers(call: Call) -> web.Response:
    found = await gw(call).read(_webhook_store(call).triggers)
    return reply(IncomingTriggerList(items=[_trigger_out(call, t) for t in found]))


@API.op(
    "POST",
    "/triggers",
    summary="Create an incoming trigger for a pipeline",
    action=Action.MANAGE,
    tag="webhooks",
    body=IncomingTriggerIn,
    responses={201: ("the trigger, with its URL and secret (shown only now)", IncomingTriggerCreated)},
    headers={201: {"Location": "/api/v1/triggers/{id}"}},
)
async def create_trigger(call: Call) -> web.Response:
    """Point GitHub (content type application/json, the `push` event) or any system that signs
    the Standard Webhooks way at the returned `url`, with the returned `secret`."""
    body: IncomingTriggerIn = call.body
    if await gw(call).read(gw(call).reads.pipeline, body.pipeline) is None:
        raise Problem(404, f"no pipeline {body.pipeline!r}")
    secret = signing.new_github_secret() if body.kind == "github" else signing.new_secret()
    created = await gw(call).write(
        lambda: _webhook_store(call).create_trigger(
            pipeline=body.pipeline,
            kind=body.kind,
            description=body.description,
            secret=secret,
            owner=call.principal.name,
            now=now(),
        )
    )
    out = IncomingTriggerCreated(**_trigger_out(call, created).model_dump(), secret=secret)
    return reply(out, 201, {"Location": f"/api/v1/triggers/{created.id}"})


async def _trigger(call: Call) -> Trigger:
    found = await gw(call).read(_webhook_store(call).trigger, call.params["trigger_id"], quick=True)
    if found is None:
        raise Problem(404, f"no trigger {call.params['trigger_id']!r}")
    return found


@API.op(
    "GET",
    "/triggers/{trigger_id}",
    summary="An incoming trigger",
    action=Action.MANAGE,
    tag="webhooks",
    responses={200: ("the trigger", IncomingTriggerOut)},
)
async def get_trigger(call: Call) -> web.Response:
    return reply(_trigger_out(call, await _trigger(call)))


@API.op(
    "DELETE",
    "/triggers/{trigger_id}",
    summary="Delete an incoming trigger",
    action=Action.MANAGE,
    tag="webhooks",
    responses={200: ("the trigger as it was; its URL now answers 404", IncomingTriggerOut)},
)
async def delete_trigger(call: Call) -> web.Response:
    found = await _trigger(call)
    await gw(call).write(_webhook_store(call).delete_trigger, found.id, now())
    return reply(_trigger_out(call, found))
