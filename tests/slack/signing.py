"""Requests exactly as Slack sends them over HTTP, signed with the app's signing secret.

Each builder returns a :class:`SignedRequest` ``(body: bytes, headers)``; POST ``body`` unchanged with
``headers`` (``Content-Type``, ``X-Slack-Request-Timestamp``, ``X-Slack-Signature``) to the bot's Request URL.
Any URL the bot will call back (``response_url``) must point at the fake *before* signing: builders take it
as an argument.

The ``*_payload`` builders return the unsigned payload dicts, which is what Socket Mode envelopes carry.

    body, headers = slash_command(SECRET, "api prod 1.4.2", user_id="U1", channel_id="C1",
                                  response_url=fake.response_url(), trigger_id="1.2.t1")
    await session.post(f"{bot_url}/slack/events", data=body, headers=headers)
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

JSON = dict[str, Any]

TEAM_ID = "T111"
TEAM_DOMAIN = "shipyard-test"
ENTERPRISE_ID = "E111"
API_APP_ID = "A111"
BOT_ID = "B0BOT"
BOT_USER_ID = "U0BOT"
VERIFICATION_TOKEN = "verification_token"
FORM = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"
STALE_AGE = 301  # Bolt and slack_sdk reject abs(now - ts) > 300 s

_serial = itertools.count(1)


class SignedRequest(NamedTuple):
    body: bytes
    headers: dict[str, str]


# ---------------------------------------------------------------------- signing


def sign(
    secret: str, body: bytes, content_type: str, *, timestamp: int | str | None = None
) -> dict[str, str]:
    """The headers Slack sends with ``body``: ``v0=HMAC_SHA256(secret, "v0:{ts}:{body}")``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


def signed(
    secret: str, body: bytes, content_type: str, *, timestamp: int | str | None = None
) -> SignedRequest:
    return SignedRequest(body, sign(secret, body, content_type, timestamp=timestamp))


def stale_timestamp(age: int = STALE_AGE) -> int:
    """A timestamp ``age`` seconds in the past (default: one second beyond Slack's five minutes)."""
    return int(time.time()) - age


def resign(
    request: tuple[bytes, Mapping[str, str]], secret: str, *, timestamp: int | str | None = None
) -> SignedRequest:
    """The same body and extra headers, signed again with ``secret`` at ``timestamp`` (default: now)."""
    body, headers = request
    new = dict(headers)
    new.update(sign(secret, body, headers.get("Content-Type", FORM), timestamp=timestamp))
    return SignedRequest(body, new)


def with_stale_timestamp(
    request: tuple[bytes, Mapping[str, str]], secret: str, *, age: int = STALE_AGE
) -> SignedRequest:
    """Correctly signed, but ``age`` seconds old: Bolt answers 401."""
    return resign(request, secret, timestamp=stale_timestamp(age))


def with_wrong_secret(
    request: tuple[bytes, Mapping[str, str]], wrong_secret: str = "not-the-signing-secret"
) -> SignedRequest:
    """Fresh timestamp, signed with another secret: Bolt answers 401."""
    return resign(request, wrong_secret)


def new_trigger_id() -> str:
    """A fresh trigger_id shaped like Slack's (``<digits>.<digits>.<hex>``)."""
    n = next(_serial)
    return f"{1_700_000_000_000 + n}.{4_744_562_912 + n}.{secrets.token_hex(16)}"


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"))


def _form(fields: Mapping[str, str]) -> bytes:
    # quote_plus, like Slack: spaces become '+', '/' becomes '%2F'
    return urlencode(fields).encode()


# ---------------------------------------------------------------------- slash commands


def slash_command_payload(
    text: str,
    *,
    user_id: str,
    channel_id: str,
    command: str = "/deploy",
    response_url: str,
    trigger_id: str | None = None,
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    enterprise_id: str | None = ENTERPRISE_ID,
    channel_name: str | None = None,
    user_name: str | None = None,
    api_app_id: str = API_APP_ID,
    is_enterprise_install: bool = False,
    token: str = VERIFICATION_TOKEN,
) -> dict[str, str]:
    """The form fields of a slash command, in Slack's order (``enterprise_id=None`` leaves it out)."""
    fields = {"token": token, "team_id": team_id, "team_domain": team_domain}
    if enterprise_id is not None:
        fields["enterprise_id"] = enterprise_id
    fields.update(
        {
            "channel_id": channel_id,
            "channel_name": channel_name or f"channel-{channel_id.lower()}",
            "user_id": user_id,
            "user_name": user_name or user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": api_app_id,
            "is_enterprise_install": "true" if is_enterprise_install else "false",
            "response_url": response_url,
            "trigger_id": trigger_id or new_trigger_id(),
        }
    )
    return fields


def slash_command(
    secret: str,
    text: str,
    *,
    user_id: str,
    channel_id: str,
    command: str = "/deploy",
    response_url: str,
    trigger_id: str | None = None,
    team_id: str = TEAM_ID,
    timestamp: int | str | None = None,
    **fields: Any,
) -> SignedRequest:
    """A signed, form-encoded slash command. ``fields``: the other ``slash_command_payload`` keywords."""
    payload = slash_command_payload(
        text,
        user_id=user_id,
        channel_id=channel_id,
        command=command,
        response_url=response_url,
        trigger_id=trigger_id,
        team_id=team_id,
        **fields,
    )
    return signed(secret, _form(payload), FORM, timestamp=timestamp)


# ---------------------------------------------------------------------- interactivity


def interaction(secret: str, payload: JSON, *, timestamp: int | str | None = None) -> SignedRequest:
    """Any interaction payload (shortcut, view_closed, ...) as Slack posts it: form ``payload=<json>``."""
    return signed(secret, _form({"payload": _dumps(payload)}), FORM, timestamp=timestamp)


def block_actions_payload(
    *,
    user_id: str,
    action_id: str,
    value: str | None,
    block_id: str = "b",
    channel_id: str | None = None,
    message_ts: str | None = None,
    response_url: str | None = None,
    trigger_id: str | None = None,
    container: JSON | None = None,
    view: JSON | None = None,
    message: JSON | None = None,
    action_type: str = "button",
    action_fields: JSON | None = None,
    state_values: JSON | None = None,
    team_id: str = TEAM_ID,
    api_app_id: str = API_APP_ID,
) -> JSON:
    """A ``block_actions`` payload like Slack's (fixtures/block_actions.with_message.bolt.payload.json).

    A press in a message needs ``channel_id`` and ``message_ts`` (and usually ``response_url``); ``message``
    defaults to a bot message with one actions block holding the element. A press in a modal or the Home tab
    passes ``view`` (as returned by views.open/views.publish) instead: no channel, message or response_url.
    ``action_fields`` adds to the action (e.g. ``{"selected_option": {...}}`` with ``action_type``).
    """
    action: JSON = {"action_id": action_id, "block_id": block_id, "type": action_type}
    if action_type == "button":
        action["text"] = {"type": "plain_text", "text": "Button", "emoji": True}
    if value is not None:
        action["value"] = value
    action.update(action_fields or {})
    action["action_ts"] = f"{time.time():.6f}"

    payload: JSON = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
    }
    if view is not None:
        payload["container"] = container or {"type": "view", "view_id": view.get("id")}
    else:
        if channel_id is None or message_ts is None:
            raise ValueError("a press in a message needs channel_id and message_ts (or pass view=)")
        payload["container"] = container or {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        }
    payload.update(
        {
            "trigger_id": trigger_id or new_trigger_id(),
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
        }
    )
    if view is not None:
        payload["view"] = view
    else:
        element = {k: v for k, v in action.items() if k not in ("block_id", "action_ts")}
        payload["channel"] = {"id": channel_id, "name": f"channel-{str(channel_id).lower()}"}
        payload["message"] = message or {
            "bot_id": BOT_ID,
            "type": "message",
            "text": "",
            "user": BOT_USER_ID,
            "ts": message_ts,
            "app_id": api_app_id,
            "blocks": [{"type": "actions", "block_id": block_id, "elements": [element]}],
            "team": team_id,
        }
    payload["state"] = {"values": state_values or {}}
    if response_url is not None:
        payload["response_url"] = response_url
    payload["actions"] = [action]
    return payload


def block_actions(
    secret: str,
    *,
    user_id: str,
    action_id: str,
    value: str | None,
    block_id: str = "b",
    channel_id: str | None = None,
    message_ts: str | None = None,
    response_url: str | None = None,
    trigger_id: str | None = None,
    container: JSON | None = None,
    view: JSON | None = None,
    timestamp: int | str | None = None,
    **fields: Any,
) -> SignedRequest:
    """A signed ``block_actions`` post. ``fields``: the other ``block_actions_payload`` keywords."""
    payload = block_actions_payload(
        user_id=user_id,
        action_id=action_id,
        value=value,
        block_id=block_id,
        channel_id=channel_id,
        message_ts=message_ts,
        response_url=response_url,
        trigger_id=trigger_id,
        container=container,
        view=view,
        **fields,
    )
    return interaction(secret, payload, timestamp=timestamp)


def block_suggestion_payload(
    *, user_id: str, action_id: str, block_id: str, value: str, view: JSON, team_id: str = TEAM_ID
) -> JSON:
    """A ``block_suggestion`` payload like Slack's: an ``external_select`` in a modal asking for
    the options that match ``value``, what the person has typed so far (the shape of
    slack-bolt's own block-suggestion tests)."""
    return {
        "type": "block_suggestion",
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": team_id},
        "container": {"type": "view", "view_id": view.get("id")},
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "action_id": action_id,
        "block_id": block_id,
        "value": value,
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "view": view,
    }


def view_submission_payload(
    *,
    user_id: str,
    callback_id: str,
    values: Mapping[str, Mapping[str, JSON]],
    private_metadata: str = "",
    trigger_id: str | None = None,
    view_id: str = "V0SUBMIT1",
    blocks: list[JSON] | None = None,
    title: str = "Shipyard",
    external_id: str = "",
    root_view_id: str | None = None,
    previous_view_id: str | None = None,
    response_urls: list[JSON] | None = None,
    team_id: str = TEAM_ID,
    api_app_id: str = API_APP_ID,
) -> JSON:
    """A ``view_submission`` payload (fixtures/view_submission.bolt.payload.json).

    ``values[block_id][action_id]`` is ``{"type": ..., "value": ...}`` or ``{"type": ..., "selected_option":
    {...}}``: it becomes ``view.state.values``. ``blocks`` defaults to one input block per value.
    """
    state = {block: {action: dict(v) for action, v in actions.items()} for block, actions in values.items()}
    if blocks is None:
        blocks = [
            {
                "type": "input",
                "block_id": block,
                "label": {"type": "plain_text", "text": block},
                "optional": False,
                "element": {"type": v.get("type", "plain_text_input"), "action_id": action},
            }
            for block, actions in values.items()
            for action, v in actions.items()
        ]
    return {
        "type": "view_submission",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "blocks": blocks,
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": state},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": {"type": "plain_text", "text": title},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": {"type": "plain_text", "text": "Cancel"},
            "submit": {"type": "plain_text", "text": "Submit"},
            "previous_view_id": previous_view_id,
            "root_view_id": root_view_id or view_id,
            "app_id": api_app_id,
            "external_id": external_id,
            "app_installed_team_id": team_id,
            "bot_id": BOT_ID,
        },
        "response_urls": response_urls or [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def view_submission(
    secret: str,
    *,
    user_id: str,
    callback_id: str,
    values: Mapping[str, Mapping[str, JSON]],
    private_metadata: str = "",
    trigger_id: str | None = None,
    timestamp: int | str | None = None,
    **fields: Any,
) -> SignedRequest:
    """A signed ``view_submission`` post. ``fields``: the other ``view_submission_payload`` keywords."""
    payload = view_submission_payload(
        user_id=user_id,
        callback_id=callback_id,
        values=values,
        private_metadata=private_metadata,
        trigger_id=trigger_id,
        **fields,
    )
    return interaction(secret, payload, timestamp=timestamp)


# ---------------------------------------------------------------------- Events API


def event_callback_payload(
    event: JSON,
    *,
    event_id: str,
    team_id: str = TEAM_ID,
    api_app_id: str = API_APP_ID,
    bot_user_id: str = BOT_USER_ID,
    event_time: int | None = None,
) -> JSON:
    """An ``event_callback`` envelope around ``event`` (``event_ts`` is added when missing)."""
    now = time.time()
    event = {**event}
    event.setdefault("event_ts", f"{now:.6f}")
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(now) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{secrets.token_hex(8)}",
    }


def event_callback(
    secret: str,
    event: JSON,
    *,
    event_id: str,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
    timestamp: int | str | None = None,
    **fields: Any,
) -> SignedRequest:
    """A signed Events API delivery (JSON).

    With ``retry_num`` it is Slack's retry: headers ``x-slack-retry-num`` and ``x-slack-retry-reason``
    (pass the same ``event_id``). ``fields``: the other ``event_callback_payload`` keywords.
    """
    body = _dumps(event_callback_payload(event, event_id=event_id, **fields)).encode()
    request = signed(secret, body, JSON_TYPE, timestamp=timestamp)
    if retry_num is not None:
        request.headers["X-Slack-Retry-Num"] = str(retry_num)
        request.headers["X-Slack-Retry-Reason"] = retry_reason
    return request


def url_verification(
    secret: str, challenge: str | None = None, *, timestamp: int | str | None = None
) -> SignedRequest:
    """The handshake Slack sends when the Events Request URL is set; Bolt answers ``{"challenge": ...}``."""
    payload = {
        "token": VERIFICATION_TOKEN,
        "challenge": challenge or secrets.token_urlsafe(36),
        "type": "url_verification",
    }
    return signed(secret, _dumps(payload).encode(), JSON_TYPE, timestamp=timestamp)
