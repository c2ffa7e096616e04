"""The Bolt app: ``/deploy``, gate and run buttons, the trigger and reject forms, App Home.

Every listener acknowledges first and works after (Slack's 3-second rule); replies to a
command go to its ``response_url``, ephemeral unless the reply is meant for the channel.
Requests are verified by Bolt with the signing secret (HTTP mode) or arrive pre-authenticated
over Socket Mode."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import tracing
from bot.chat import block_kit
from bot.chat.locks import tell_with
from bot.chat.trigger_form import (
    TRIGGER_FORM,
    TRIGGER_PICK,
    pipeline_options,
    submit_trigger_view,
    trigger_form_picked,
)
from bot.chat.verbs import BUTTONS, ChatBackend, Reply, Who, already_decided, dispatch, press
from bot.config import Settings
from bot.metrics import SlackCalls
from bot.slack.home import publish_home
from bot.slack.manifest import COMMAND, EVENTS_PATH
from core.errors import DatabaseUnreachable

log = logging.getLogger(__name__)
REJECT_FORM = "gate_reject_form"
ABORT_FORM = "rollout_abort_form"


def pressable() -> tuple[str, ...]:
    """The buttons answered by ``verbs.press``, as the console answers them too: the run and
    gate buttons and every button another chat module registered (``BUTTONS``: the deploy
    question, locks, rollbacks, reviews). Reject and a rollout's Abort are the ones more, since
    Slack asks for their reason in a form."""
    return (
        block_kit.APPROVE,
        block_kit.CANCEL,
        block_kit.RETRY,
        block_kit.IGNORE,
        block_kit.FAIL,
        block_kit.LOOKS_GOOD,
        block_kit.VERIFY_ROLLBACK,
        block_kit.PROMOTE,
        block_kit.PROMOTE_FULLY,
        block_kit.PAUSE,
        block_kit.RESUME,
        *BUTTONS,
    )


class Backlog:
    """Work that follows an acknowledgement, a few at a time: a burst of commands then gets
    all of its acks out first instead of each ack queueing behind the others' work."""

    def __init__(self, at_once: int = 4) -> None:
        self._limit = asyncio.Semaphore(at_once)
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, work: Coroutine[Any, Any, None]) -> None:
        async def run() -> None:
            try:
                async with self._limit:
                    await work
            except DatabaseUnreachable:  # (said once by the engine's health)
                log.debug("a Slack request went unanswered: the database is unreachable")
            except Exception:
                log.exception("answering a Slack request failed")
            finally:
                work.close()  # cancelled while it queued: it never started, and that is fine

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """At shutdown: let acknowledged work finish (people were told it is coming), then
        cancel what is still left after ``timeout``, before the backend it uses goes away."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)


def make_client(settings: Settings) -> AsyncWebClient:
    assert settings.slack_bot_token is not None
    return configure(AsyncWebClient(token=settings.slack_bot_token.get_secret_value()), settings)


def configure(client: AsyncWebClient, settings: Settings) -> AsyncWebClient:
    """Point a Web API client at ``SLACK_API_URL`` (Slack's own by default) and retry what is
    worth retrying: rate limits (after ``Retry-After``) and connection errors."""
    client.base_url = settings.slack_api_url or AsyncWebClient.BASE_URL
    client.retry_handlers = [
        SlackCalls(),  # (counts every request; retries nothing)
        AsyncRateLimitErrorRetryHandler(max_retry_count=5),
        AsyncConnectionErrorRetryHandler(max_retry_count=3),
    ]
    if tracing.wanted():
        from bot import otel  # only here: without the extra nothing of OpenTelemetry is imported

        otel.trace_slack_globally(client)
    return client


def build_bolt(settings: Settings, backend: ChatBackend, work: Backlog) -> AsyncApp:
    """The Bolt app and its listeners; its Web API client (``app.client``) is the one every
    Slack call of Shipyard's goes through. Bolt is given the bot token rather than a client:
    given a client it warns, at every start, that the token it reads from ``SLACK_BOT_TOKEN``
    itself will be unused; its own client is configured instead (``configure``)."""
    assert settings.slack_bot_token is not None
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
    app = AsyncApp(
        token=settings.slack_bot_token.get_secret_value(),
        signing_secret=secret or "socket-mode-only",
        request_verification_enabled=secret is not None,
    )
    client = configure(app.client, settings)
    _listen_to_command(app, backend, client, work)
    _listen_to_trigger_form(app, backend, client, work)
    _listen_to_buttons(app, backend, client, work)
    _listen_to_reject(app, backend, client)
    _listen_to_abort(app, backend, client)
    _listen_to_home(app, backend, client)
    _listen_to_strangers(app, client, work)  # (last: Bolt answers with the first listener that matches)
    return app


def _listen_to_command(app: AsyncApp, backend: ChatBackend, client: AsyncWebClient, work: Backlog) -> None:
    """``/deploy``: a reply through its response_url, or the modal it opens."""

    @app.command(COMMAND)
    async def on_command(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()

        async def answer() -> None:
            who = Who(body["user_id"], body.get("channel_id", ""))
            reply = await dispatch(backend, who, body.get("text", ""))
            if reply.modal is not None:
                await client.views_open(trigger_id=body["trigger_id"], view=reply.modal)
            else:
                await _respond(respond, reply)

        work.add(answer())


def _listen_to_trigger_form(
    app: AsyncApp, backend: ChatBackend, client: AsyncWebClient, work: Backlog
) -> None:
    """The trigger form: its submission, and the pipeline pick that redraws it."""

    @app.view(TRIGGER_FORM)
    async def on_trigger_form(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        who = Who(body["user"]["id"], view.get("private_metadata", ""))
        outcome = await submit_trigger_view(backend, who, view)
        if outcome.errors:
            await ack(response_action="errors", errors=outcome.errors)
            return
        await ack()
        if outcome.reply is not None:  # the deploy question, now that the form has closed
            work.add(_tell(client, who, outcome.reply))

    @app.action(TRIGGER_PICK)
    async def on_trigger_pick(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        view = body["view"]
        picked = (body["actions"][0].get("selected_option") or {}).get("value", "")

        async def answer() -> None:
            form = await trigger_form_picked(backend, view, picked)
            try:
                await client.views_update(view_id=view["id"], hash=view["hash"], view=form)
            except SlackApiError as exc:
                if exc.response.get("error") != "hash_conflict":  # else a later pick won
                    raise

        work.add(answer())

    @app.options(TRIGGER_PICK)
    async def on_trigger_search(ack: AsyncAck, payload: dict[str, Any]) -> None:
        """Past 100 pipelines the picker asks as the person types (a ``block_suggestion``)."""
        await ack(options=await pipeline_options(backend, str(payload.get("value") or "")))


def _listen_to_buttons(app: AsyncApp, backend: ChatBackend, client: AsyncWebClient, work: Backlog) -> None:
    """The run, gate and other chat modules' buttons, all answered by ``verbs.press``."""

    async def on_press(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()

        async def answer() -> None:
            action = body["actions"][0]
            who = Who(body["user"]["id"], (body.get("channel") or {}).get("id", ""))
            reply = await press(backend, who, action["action_id"], action.get("value", ""))
            if reply is not None:
                await _answer(client, body, respond, reply)

        work.add(answer())

    async def tell(channel: str, text: str) -> object:
        return await client.chat_postMessage(channel=channel, text=text)

    tell_with(backend, tell)
    for action_id in pressable():
        app.action(action_id)(on_press)


def _listen_to_reject(app: AsyncApp, backend: ChatBackend, client: AsyncWebClient) -> None:
    """Reject asks for a reason in a form before it goes to ``verbs.press``."""

    @app.action(block_kit.REJECT)
    async def on_reject(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        value = body["actions"][0].get("value", "")
        # a gate decided meanwhile: say so at once instead of asking for a reason first
        try:
            decided = await already_decided(backend, value)
        except DatabaseUnreachable as exc:
            decided = Reply(f":warning: {exc.message}")
        if decided is not None:
            await _answer(client, body, respond, decided)
            return
        await client.views_open(trigger_id=body["trigger_id"], view=_reject_form(value))

    @app.view(REJECT_FORM)
    async def on_reject_form(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        reason = (view["state"]["values"].get("reason", {}).get("value") or {}).get("value") or ""
        if not reason.strip():
            await ack(response_action="errors", errors={"reason": "Say why, for the people who asked"})
            return
        reply = await press(
            backend, Who(body["user"]["id"], ""), block_kit.REJECT, view["private_metadata"], reason
        )
        if reply is None:
            await ack()
        else:
            await ack(
                response_action="errors", errors={"reason": reply.text.removeprefix(":warning: ")[:150]}
            )


def _listen_to_abort(app: AsyncApp, backend: ChatBackend, client: AsyncWebClient) -> None:
    """A rollout's Abort asks why in a form (the reason ends the run and is audited), then goes
    to ``verbs.press``; a refusal is shown in the form."""

    @app.action(block_kit.ABORT)
    async def on_abort(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        await client.views_open(
            trigger_id=body["trigger_id"], view=_abort_form(body["actions"][0].get("value", ""))
        )

    @app.view(ABORT_FORM)
    async def on_abort_form(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]) -> None:
        reason = (view["state"]["values"].get("reason", {}).get("value") or {}).get("value") or ""
        if not reason.strip():
            await ack(response_action="errors", errors={"reason": "Say why, for the people who deploy"})
            return
        who = Who(body["user"]["id"], "")
        reply = await press(backend, who, block_kit.ABORT, view["private_metadata"], reason)
        if reply is None:
            await ack()
        else:
            await ack(
                response_action="errors", errors={"reason": reply.text.removeprefix(":warning: ")[:150]}
            )


def _listen_to_home(app: AsyncApp, backend: ChatBackend, client: AsyncWebClient) -> None:
    """App Home: published for whoever opens it, once per event Slack may deliver twice."""
    seen_events: OrderedDict[str, None] = OrderedDict()

    @app.event("app_home_opened")
    async def on_home(event: dict[str, Any], body: dict[str, Any]) -> None:
        event_id = body.get("event_id")
        if event_id:  # Slack retries events it thinks were lost; Bolt does not deduplicate
            if event_id in seen_events:
                return
            seen_events[event_id] = None
            while len(seen_events) > 10_000:
                seen_events.popitem(last=False)
        if event.get("tab", "home") == "home":
            backend.home_viewers.add(event["user"])
            try:
                await publish_home(backend, client, event["user"])
            except DatabaseUnreachable:  # (said once by the engine's health): the next opening
                log.debug("App Home of %s not published: the database is unreachable", event["user"])


def _listen_to_strangers(app: AsyncApp, client: AsyncWebClient, work: Backlog) -> None:
    """A button none of the listeners above knows (a message, modal or App Home from an older
    Shipyard, a forged press): Bolt would answer ``404`` and the person would see a bare error
    on the button."""

    @app.action(re.compile(".*"))
    async def on_unknown(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        action_id = body["actions"][0].get("action_id", "")
        log.info("a press of a button Shipyard does not know: %r", action_id)
        stale = Reply(":warning: That button is no longer in use: it is not one of mine any more.")
        work.add(_answer(client, body, respond, stale))


async def _answer(client: AsyncWebClient, body: dict[str, Any], respond: AsyncRespond, reply: Reply) -> None:
    """A press's answer: through its response_url (a button in a message), else (a modal or App
    Home, which have none) in a small modal over the view, pushed onto a modal's stack; in a
    direct message when Slack will not show one (its trigger expired, the stack is full)."""
    if body.get("response_url"):
        await _respond(respond, reply)
        return
    notice = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Shipyard"},
        "close": {"type": "plain_text", "text": "OK"},
        "blocks": reply.blocks or [block_kit.text(reply.text)],
    }
    trigger = body.get("trigger_id", "")
    try:
        if (body.get("view") or {}).get("type") == "modal":
            await client.views_push(trigger_id=trigger, view=notice)
        else:
            await client.views_open(trigger_id=trigger, view=notice)
    except SlackApiError as exc:
        log.info("cannot show an answer over the view (%s); telling directly", exc.response.get("error"))
        await _tell(client, Who(body["user"]["id"], ""), reply)


async def _respond(respond: AsyncRespond, reply: Reply) -> None:
    await respond(
        text=reply.text,
        blocks=reply.blocks or None,
        response_type="in_channel" if reply.public else "ephemeral",
        replace_original=reply.replace,
    )


async def _tell(client: AsyncWebClient, who: Who, reply: Reply) -> None:
    """A reply with no response_url to answer through: ephemeral in ``who``'s channel, or a
    direct message when there is no channel or the bot cannot post in it."""
    if who.slack_channel:
        try:
            await client.chat_postEphemeral(
                channel=who.slack_channel, user=who.user, text=reply.text, blocks=reply.blocks or None
            )
            return
        except SlackApiError as exc:
            error = exc.response.get("error")
            log.info("cannot post in %s (%s); telling %s directly", who.slack_channel, error, who.user)
    await client.chat_postMessage(channel=who.user, text=reply.text, blocks=reply.blocks or None)


def _reject_form(ref: str) -> dict[str, Any]:
    return _reason_form(REJECT_FORM, ref, "Reject")


def _abort_form(ref: str) -> dict[str, Any]:
    return _reason_form(ABORT_FORM, ref, "Abort rollout")


def _reason_form(callback_id: str, ref: str, verb: str) -> dict[str, Any]:
    """A modal asking why, for the button ``ref`` (its value) stands for."""
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": ref,
        "title": {"type": "plain_text", "text": verb},
        "submit": {"type": "plain_text", "text": verb},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Why?"},
                "element": {"type": "plain_text_input", "action_id": "value", "multiline": True},
            }
        ],
    }


def mount(web_app: web.Application, bolt: AsyncApp) -> None:
    """HTTP mode: one URL for commands, interactivity and events."""

    async def slack_events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await bolt.async_dispatch(await to_bolt_request(request)))

    web_app.router.add_post(EVENTS_PATH, slack_events)
