"""A fake Slack on loopback: the Web API, response_url sinks and a Socket Mode websocket.

Point a bot at it with ``AsyncWebClient(token="xoxb-...", base_url=fake.base_url)``. Every Web API call is
recorded as a :class:`Call`; answers follow the shapes of Slack's documented examples
(the ``webapi.*.ok.*.json`` examples of Slack's OpenAPI spec, slackapi/slack-api-specs).

    async with FakeSlack() as fake:
        fake.usergroups["S123"] = ["U1", "U2"]
        ...  # drive the bot
        call = await fake.wait_for("chat.postMessage", lambda c: "deployed" in c.args["text"])

Web API (``GET`` or ``POST /api/{method}``): slack_sdk uses GET + query string for ``users.info``,
``usergroups.users.list`` and ``conversations.info``, JSON bodies for ``chat.*``/``views.*`` and form or query
parameters for the rest; all three are merged into ``Call.args``.

* Every call needs ``Authorization: Bearer xoxb-...`` (``apps.connections.open``: ``xapp-...``), otherwise
  ``not_authed`` (no/garbled header), ``not_allowed_token_type`` (wrong kind of token) or ``invalid_auth``.
* Unknown methods answer ``unknown_method``.
* ``rate_limit_next`` answers HTTP 429 + ``Retry-After``; ``fail_next`` answers
  ``{"ok": false, "error": ...}``; ``set_handler`` replaces a method's handler altogether.

Modelled state: posted messages (``messages``, keyed by ``(channel, ts)``; ``chat.update``/``chat.delete``
on an unknown one answer ``message_not_found``), views (``views``, ``home_views``; a stale ``hash`` answers
``hash_conflict``), single-use ``trigger_id`` (``trigger_exchanged``), usergroup members, users and
channels (synthesised on demand unless set to ``None``, which makes them unknown: ``conversations.info``
and every ``chat.*`` call in such a channel answer ``channel_not_found``, as for a channel deleted or
one the bot was never invited to).

``response_url`` sink: ``POST /response/{token}`` (see :meth:`FakeSlack.response_url`), JSON only, 5 uses
per URL like Slack (then 404 ``used_url``).

Socket Mode: ``apps.connections.open`` hands out ``ws://127.0.0.1:PORT/link?ticket=...``; the fake sends
``hello`` on connect, :meth:`FakeSlack.send_envelope` pushes envelopes and :meth:`FakeSlack.wait_ack` returns
the acks. Close the Socket Mode client before stopping the fake: it reconnects when the server goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

JSON = dict[str, Any]
T = TypeVar("T")

TEAM_ID = "T111"
APP_ID = "A111"
BOT_ID = "B0BOT"
BOT_USER_ID = "U0BOT"
RESPONSE_URL_USES = 5

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Values that slack_sdk JSON-encodes when it has to send them as form fields.
_JSON_FIELDS = ("blocks", "attachments", "view", "metadata", "users", "channels")


@dataclass
class Call:
    """One Web API call as the fake received it, and what it answered."""

    method: str
    args: dict[str, Any]
    headers: Mapping[str, str]
    http_method: str = "POST"
    content_type: str = ""
    status: int = 200
    response: JSON = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))

    @property
    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None


@dataclass
class ResponsePost:
    """One POST to a response_url, accepted (status 200) or not."""

    token: str
    body: Any
    headers: Mapping[str, str]
    status: int = 200


class SlackApiFailure(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


Handler = Callable[[Call], JSON]


class FakeSlack:
    """Slack's Web API, response_url and Socket Mode endpoints for one bot, on 127.0.0.1 (``port``; 0: a
    free one). It may be stopped and started again (on the port it had): what it recorded stays."""

    def __init__(self, *, team_id: str = TEAM_ID, bot_user_id: str = BOT_USER_ID, port: int = 0) -> None:
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.calls: list[Call] = []
        self.responses: list[ResponsePost] = []
        # configurable directory data
        self.auth: JSON = {
            "ok": True,
            "url": "https://shipyard-test.slack.com/",
            "team": "Shipyard Test",
            "user": "shipyard",
            "team_id": team_id,
            "user_id": bot_user_id,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }
        self.usergroups: dict[str, list[str]] = {}
        self.users: dict[str, JSON | None] = {}
        self.channels: dict[str, JSON | None] = {}
        # modelled state
        self.messages: dict[tuple[str, str], JSON] = {}
        self.views: dict[str, JSON] = {}
        self.home_views: dict[str, JSON] = {}
        self.used_triggers: set[str] = set()
        self.expired_triggers: set[str] = set()
        self.socket_messages: list[JSON] = []
        self.connection_count = 0
        self.acks: dict[str, JSON] = {}

        self._handlers: dict[str, Handler] = {
            "api.test": lambda call: {"ok": True, "args": call.args},
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "usergroups.users.list": self._usergroups_users_list,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
        }
        self._rate_limits: dict[str, list[int]] = defaultdict(list)
        self._failures: dict[str, list[tuple[str, int, JSON]]] = defaultdict(list)
        self._response_uses: dict[str, int] = defaultdict(int)
        self._expired_urls: set[str] = set()
        self._ts = itertools.count(1_700_000_000_000_100, 100)
        self._ids = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port: int | None = port or None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{token}", self._response)
        app.router.add_get("/link", self._link)
        app.router.add_get("/link/", self._link)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port or 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"fake slack stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSlack is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """For ``AsyncWebClient(base_url=...)``; the trailing slash matters (slack_sdk uses urljoin)."""
        return f"{self.url}/api/"

    # ------------------------------------------------------------------ test controls

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(
        self, method: str, predicate: Callable[[Call], bool] | None = None, timeout: float = 5
    ) -> Call:
        """The first call to ``method`` (already received or still to come) that matches ``predicate``.

        Rejected calls (429, errors) count too; use ``lambda c: c.ok`` to wait for a successful one.
        """

        def find() -> Call | None:
            return next((c for c in self.calls_to(method) if predicate is None or predicate(c)), None)

        return await self._wait(find, timeout, lambda: f"a matching {method} call; got {self._summary()}")

    async def wait_for_count(self, method: str, count: int, timeout: float = 5) -> list[Call]:
        """Wait until ``method`` has been called at least ``count`` times; returns those calls."""

        def find() -> list[Call] | None:
            calls = self.calls_to(method)
            return calls if len(calls) >= count else None

        return await self._wait(find, timeout, lambda: f"{count} {method} calls; got {self._summary()}")

    def rate_limit_next(self, method: str, retry_after: int = 1, *, times: int = 1) -> None:
        """The next ``times`` calls to ``method`` answer 429 + ``Retry-After`` + ``ratelimited``."""
        self._rate_limits[method].extend([retry_after] * times)

    def fail_next(self, method: str, error: str, *, times: int = 1, status: int = 200, **extra: Any) -> None:
        """The next ``times`` calls to ``method`` answer ``{"ok": false, "error": error, **extra}``."""
        self._failures[method].extend([(error, status, extra)] * times)

    def heal(self, method: str) -> None:
        """Forget the failures and rate limits still planned for ``method``: it answers again."""
        self._failures.pop(method, None)
        self._rate_limits.pop(method, None)

    def set_handler(self, method: str, handler: Handler) -> None:
        """Answer ``method`` with ``handler(call) -> dict`` (it may raise :class:`SlackApiFailure`)."""
        self._handlers[method] = handler

    def expire_trigger(self, trigger_id: str) -> None:
        """``views.open``/``views.push`` with this trigger answer ``trigger_expired`` (Slack: after 3 s)."""
        self.expired_triggers.add(trigger_id)

    # ------------------------------------------------------------------ response_url sink

    def response_url(self, token: str | None = None) -> str:
        """A response_url served by this fake (``token`` defaults to a fresh random one)."""
        return f"{self.url}/response/{token or secrets.token_hex(8)}"

    def responses_to(self, url_or_token: str) -> list[ResponsePost]:
        token = url_or_token.rstrip("/").rsplit("/", 1)[-1]
        return [r for r in self.responses if r.token == token]

    def expire_response_url(self, url_or_token: str) -> None:
        """Further posts to this response_url answer 404 ``expired_url`` (Slack: after 30 minutes)."""
        self._expired_urls.add(url_or_token.rstrip("/").rsplit("/", 1)[-1])

    async def wait_response(
        self,
        url_or_token: str | None = None,
        predicate: Callable[[ResponsePost], bool] | None = None,
        timeout: float = 5,
    ) -> ResponsePost:
        """The first accepted post to a response_url (optionally: this one) matching ``predicate``."""

        def find() -> ResponsePost | None:
            posts = self.responses if url_or_token is None else self.responses_to(url_or_token)
            return next((r for r in posts if r.status == 200 and (predicate is None or predicate(r))), None)

        return await self._wait(find, timeout, lambda: f"a response_url post; got {self.responses!r}")

    async def _response(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        if not isinstance(body, dict):
            status, answer = 400, "invalid_payload"
        elif token in self._expired_urls:
            status, answer = 404, "expired_url"
        elif self._response_uses[token] >= RESPONSE_URL_USES:
            status, answer = 404, "used_url"
        else:
            self._response_uses[token] += 1
            status, answer = 200, "ok"
        self.responses.append(ResponsePost(token, body, CIMultiDict(request.headers), status))
        await self._notify()
        return web.Response(status=status, text=answer)

    # ------------------------------------------------------------------ Socket Mode

    @property
    def socket_connected(self) -> bool:
        return any(not ws.closed for ws in self._sockets)

    async def wait_connected(self, timeout: float = 5, *, count: int = 1) -> None:
        """Wait until ``count`` Socket Mode connections were accepted in all and one is open."""

        def find() -> web.WebSocketResponse | None:
            return self._open_socket() if self.connection_count >= count else None

        await self._wait(find, timeout, lambda: f"Socket Mode connection #{count}")

    async def send_envelope(
        self,
        type: str,
        payload: JSON,
        retry_attempt: int | None = None,
        *,
        retry_reason: str = "timeout",
        accepts_response_payload: bool | None = None,
        timeout: float = 5,
    ) -> str:
        """Push an envelope to the connected client (waiting for one up to ``timeout``); returns its id.

        ``accepts_response_payload`` defaults to Slack's: true except for ``events_api``.
        """
        ws = await self._wait(self._open_socket, timeout, lambda: "a Socket Mode connection")
        envelope_id = str(uuid.uuid4())
        envelope: JSON = {
            "envelope_id": envelope_id,
            "type": type,
            "payload": payload,
            "accepts_response_payload": (
                type != "events_api" if accepts_response_payload is None else accepts_response_payload
            ),
        }
        if retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        await ws.send_str(json.dumps(envelope))
        return envelope_id

    async def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Tell the client to reconnect, like Slack does every few hours."""
        ws = await self._wait(self._open_socket, 5, lambda: "a Socket Mode connection")
        await ws.send_json({"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}})

    async def wait_ack(self, envelope_id: str, timeout: float = 5) -> JSON:
        """The client's ack: ``{"envelope_id": ..., "payload": {...}}`` (``payload`` only if it sent one)."""
        return await self._wait(
            lambda: self.acks.get(envelope_id), timeout, lambda: f"an ack for envelope {envelope_id}"
        )

    def _open_socket(self) -> web.WebSocketResponse | None:
        return next((ws for ws in reversed(self._sockets) if not ws.closed), None)

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connection_count += 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": sum(not s.closed for s in self._sockets),
                "debug_info": {
                    "host": "applink-fake",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": APP_ID},
            }
        )
        await self._notify()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                self.socket_messages.append(data)
                if isinstance(data, dict) and "envelope_id" in data:
                    self.acks[data["envelope_id"]] = data
                await self._notify()
        finally:
            self._sockets.remove(ws)
            await self._notify()
        return ws

    # ------------------------------------------------------------------ plumbing

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, find: Callable[[], T | None], timeout: float, what: Callable[[], str]) -> T:
        try:
            async with asyncio.timeout(timeout), self._changed:
                while (found := find()) is None:
                    await self._changed.wait()
                return found
        except TimeoutError:
            raise TimeoutError(f"FakeSlack: no {what()} within {timeout}s") from None

    def _summary(self) -> str:
        return (
            repr([(c.method, c.status, c.response.get("error")) for c in self.calls])
            if self.calls
            else "no calls"
        )

    async def _api(self, request: web.Request) -> web.Response:
        call = Call(
            method=request.match_info["method"],
            args=dict(request.query),
            headers=CIMultiDict(request.headers),
            http_method=request.method,
            content_type=request.content_type,
        )
        headers = {"x-oauth-scopes": "commands,chat:write,users:read,usergroups:read,channels:read"}
        body, call.status, extra_headers = await self._dispatch(request, call)
        call.response = body
        self.calls.append(call)
        await self._notify()
        return web.json_response(body, status=call.status, headers={**headers, **extra_headers})

    async def _dispatch(self, request: web.Request, call: Call) -> tuple[JSON, int, dict[str, str]]:
        method = call.method
        if not await _read_args(request, call.args):
            return {"ok": False, "error": "invalid_json"}, 200, {}

        token = call.token
        wants = "xapp-" if method == "apps.connections.open" else "xoxb-"
        if method not in self._handlers:
            return {"ok": False, "error": "unknown_method"}, 200, {}
        if not token:
            return {"ok": False, "error": "not_authed"}, 200, {}
        if not token.startswith(wants):
            known = token.startswith(("xoxb-", "xoxp-", "xapp-"))
            return {"ok": False, "error": "not_allowed_token_type" if known else "invalid_auth"}, 200, {}
        if self._rate_limits.get(method):
            retry_after = self._rate_limits[method].pop(0)
            return {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(retry_after)}
        if self._failures.get(method):
            error, status, extra = self._failures[method].pop(0)
            return {"ok": False, "error": error, **extra}, status, {}
        try:
            return self._handlers[method](call), 200, {}
        except SlackApiFailure as failure:
            return {"ok": False, "error": failure.error, **failure.extra}, 200, {}

    def _next_ts(self) -> str:
        value = next(self._ts)
        return f"{value // 1_000_000}.{value % 1_000_000:06d}"

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08X}"

    # ------------------------------------------------------------------ method handlers

    def _auth_test(self, call: Call) -> JSON:
        return dict(self.auth)

    def _apps_connections_open(self, call: Call) -> JSON:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link?ticket={uuid.uuid4()}&app_id={APP_ID}"}

    def _chat_post_message(self, call: Call) -> JSON:
        channel = self._channel(call)
        message = self._message(call, ts=self._next_ts())
        self.messages[(channel, message["ts"])] = message
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": message}

    def _chat_update(self, call: Call) -> JSON:
        channel = self._channel(call)
        ts = _require(call, "ts", "message_not_found")
        old = self.messages.get((channel, ts))
        if old is None:
            raise SlackApiFailure("message_not_found")
        new = self._message(call, ts=ts, base=old)
        new["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        self.messages[(channel, ts)] = new
        return {"ok": True, "channel": channel, "ts": ts, "text": new.get("text", ""), "message": new}

    def _chat_delete(self, call: Call) -> JSON:
        channel = self._channel(call)
        ts = _require(call, "ts", "message_not_found")
        if self.messages.pop((channel, ts), None) is None:
            raise SlackApiFailure("message_not_found")
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, call: Call) -> JSON:
        self._channel(call)
        _require(call, "user", "user_not_in_channel")
        self._message(call, ts="")  # same validation as a message
        return {"ok": True, "message_ts": self._next_ts()}

    def _channel(self, call: Call) -> str:
        """The channel a ``chat.*`` call names; ``channel_not_found`` for none or one set to None."""
        channel = _require(call, "channel", "channel_not_found")
        if channel in self.channels and self.channels[channel] is None:
            raise SlackApiFailure("channel_not_found")
        return channel

    def _message(self, call: Call, *, ts: str, base: JSON | None = None) -> JSON:
        args = call.args
        if base is None and not any(args.get(k) for k in ("text", "blocks", "attachments")):
            raise SlackApiFailure("no_text")
        blocks = args.get("blocks")
        if isinstance(blocks, list) and len(blocks) > 50:
            raise _invalid(
                "[ERROR] no more than 50 items allowed [json-pointer:/blocks]", error="invalid_blocks"
            )
        if len(str(args.get("text", ""))) > 40_000:
            raise SlackApiFailure("msg_too_long")
        message: JSON = dict(
            base
            or {
                "type": "message",
                "user": self.bot_user_id,
                "bot_id": BOT_ID,
                "app_id": APP_ID,
                "team": self.team_id,
                "ts": ts,
            }
        )
        for key in ("text", "blocks", "attachments", "thread_ts", "metadata"):
            if key in args:
                message[key] = args[key]
        message.setdefault("text", "")
        return message

    def _trigger(self, call: Call) -> None:
        trigger_id = _require(call, "trigger_id", "invalid_arguments")
        if trigger_id in self.used_triggers:
            raise SlackApiFailure("trigger_exchanged")
        if trigger_id in self.expired_triggers:
            raise SlackApiFailure("trigger_expired")
        self.used_triggers.add(trigger_id)

    def _view(self, call: Call, *, kind: str | None = None, previous: JSON | None = None) -> JSON:
        spec = call.args.get("view")
        if not isinstance(spec, dict):
            raise _invalid("[ERROR] must provide an object [json-pointer:/view]")
        problems = []
        view_type = spec.get("type")
        if view_type not in ("modal", "home") or (kind is not None and view_type != kind):
            problems.append(f"[ERROR] unsupported type: {view_type!r} [json-pointer:/view/type]")
        if view_type == "modal" and not isinstance(spec.get("title"), dict):
            problems.append("[ERROR] missing required field: title [json-pointer:/view]")
        if len(spec.get("blocks") or []) > 100:
            problems.append("[ERROR] no more than 100 items allowed [json-pointer:/view/blocks]")
        if len(spec.get("private_metadata") or "") > 3000:
            problems.append("[ERROR] must be less than 3001 characters [json-pointer:/view/private_metadata]")
        for key in ("title", "submit", "close"):
            if isinstance(spec.get(key), dict) and len(spec[key].get("text", "")) > 24:
                problems.append(f"[ERROR] must be less than 25 characters [json-pointer:/view/{key}/text]")
        if problems:
            raise _invalid(*problems)
        expected_hash = call.args.get("hash")
        if previous is not None and expected_hash and expected_hash != previous["hash"]:
            raise SlackApiFailure("hash_conflict")
        view_id = previous["id"] if previous is not None else self._next_id("V")
        return {
            "id": view_id,
            "team_id": self.team_id,
            "type": view_type,
            "blocks": spec.get("blocks", []),
            "private_metadata": spec.get("private_metadata", ""),
            "callback_id": spec.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": spec.get("title"),
            "clear_on_close": spec.get("clear_on_close", False),
            "notify_on_close": spec.get("notify_on_close", False),
            "close": spec.get("close"),
            "submit": spec.get("submit"),
            "previous_view_id": None,
            "root_view_id": previous["root_view_id"] if previous is not None else view_id,
            "app_id": APP_ID,
            "external_id": spec.get("external_id", ""),
            "app_installed_team_id": self.team_id,
            "bot_id": BOT_ID,
        }

    def _views_open(self, call: Call) -> JSON:
        self._trigger(call)
        view = self._view(call, kind="modal")
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_push(self, call: Call) -> JSON:
        self._trigger(call)
        view = self._view(call, kind="modal")
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _views_update(self, call: Call) -> JSON:
        view_id, external_id = call.args.get("view_id"), call.args.get("external_id")
        if not view_id and not external_id:
            raise _invalid("[ERROR] view_id or external_id is required")
        old = (
            self.views.get(view_id)
            if view_id
            else next(
                (v for v in self.views.values() if external_id and v.get("external_id") == external_id), None
            )
        )
        if old is None:
            raise SlackApiFailure("not_found")
        view = self._view(call, previous=old)
        self.views[view["id"]] = view
        if view["type"] == "home":
            for user, home in self.home_views.items():
                if home["id"] == view["id"]:
                    self.home_views[user] = view
        return {"ok": True, "view": view}

    def _views_publish(self, call: Call) -> JSON:
        user_id = _require(call, "user_id", "invalid_arguments")
        if self.users.get(user_id, {}) is None:
            raise SlackApiFailure("user_not_found")
        view = self._view(call, kind="home", previous=self.home_views.get(user_id))
        self.home_views[user_id] = self.views[view["id"]] = view
        return {"ok": True, "view": view}

    def _usergroups_users_list(self, call: Call) -> JSON:
        group = _require(call, "usergroup", "invalid_arguments")
        if group not in self.usergroups:
            raise SlackApiFailure("no_such_subteam")
        return {"ok": True, "users": list(self.usergroups[group])}

    def _users_info(self, call: Call) -> JSON:
        user_id = _require(call, "user", "user_not_found")
        override = self.users.get(user_id, {})
        if override is None:
            raise SlackApiFailure("user_not_found")
        name = user_id.lower()
        user: JSON = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": False,
            "color": "9f69e7",
            "real_name": f"User {user_id}",
            "tz": "Europe/London",
            "tz_label": "Greenwich Mean Time",
            "tz_offset": 0,
            "profile": {
                "real_name": f"User {user_id}",
                "real_name_normalized": f"User {user_id}",
                "display_name": name,
                "display_name_normalized": name,
                "email": f"{name}@example.com",
                "team": self.team_id,
            },
            "is_admin": False,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": user_id == self.bot_user_id,
            "is_app_user": False,
            "updated": 1_700_000_000,
        }
        user.update(override)
        return {"ok": True, "user": user}

    def _conversations_info(self, call: Call) -> JSON:
        channel_id = _require(call, "channel", "channel_not_found")
        override = self.channels.get(channel_id, {})
        if override is None:
            raise SlackApiFailure("channel_not_found")
        is_im = channel_id.startswith("D")
        channel: JSON = {
            "id": channel_id,
            "name": f"channel-{channel_id.lower()}",
            "is_channel": not is_im,
            "is_group": False,
            "is_im": is_im,
            "is_mpim": False,
            "is_private": channel_id.startswith("G"),
            "is_archived": False,
            "is_general": False,
            "is_shared": False,
            "is_ext_shared": False,
            "is_org_shared": False,
            "is_member": True,
            "created": 1_700_000_000,
            "creator": "W012A3BCD",
            "topic": {"value": "", "creator": "", "last_set": 0},
            "purpose": {"value": "", "creator": "", "last_set": 0},
        }
        channel.update(override)
        return {"ok": True, "channel": channel}


async def settle_bolt_tasks(timeout: float = 5) -> None:
    """Wait for the work Bolt left running in the background.

    Bolt answers Slack as soon as a listener calls ``ack()`` and lets the listener go on in an
    ``asyncio.ensure_future`` task (Socket Mode: one task per envelope). Await this before the event loop
    closes, so no listener is cut off with an aiohttp session open.
    """
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done() and _is_bolt_work(t)]
    if pending:
        _, not_done = await asyncio.wait(pending, timeout=timeout)
        if not_done:
            raise TimeoutError(f"Bolt listeners still running after {timeout}s: {not_done}")


def _is_bolt_work(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and ("slack_bolt" in code.co_filename or code.co_name == "run_message_listeners")


def _require(call: Call, key: str, error: str) -> str:
    value = call.args.get(key)
    if not value:
        raise SlackApiFailure(error)
    return str(value)


def _invalid(*messages: str, error: str = "invalid_arguments") -> SlackApiFailure:
    return SlackApiFailure(error, response_metadata={"messages": list(messages)})


async def _read_args(request: web.Request, args: dict[str, Any]) -> bool:
    """Merge a POST's JSON or form body into ``args`` (the query's), then decode the fields
    Slack takes as JSON in a string, as Slack does; False when a JSON body does not parse."""
    if request.method == "POST" and request.can_read_body:
        raw = await request.read()
        if request.content_type == "application/json":
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                return False
            if isinstance(body, dict):
                args.update(body)
        elif request.content_type in _FORM_TYPES:
            form = await request.post()
            for key, item in form.items():
                args[key] = item if isinstance(item, str) else getattr(item, "filename", "")
    for key in _JSON_FIELDS:
        value = args.get(key)
        if isinstance(value, str) and value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                args[key] = json.loads(value)
    return True
