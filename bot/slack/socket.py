"""Socket Mode, kept connected in the background: the service never waits for Slack.

``shipyard serve`` serves HTTP, runs the engine, the runner and the schedules whether or not
Slack answers; :class:`SocketLink` connects to Slack beside them and keeps connecting, with a
growing wait (``backoff``: 1 s doubling to 30 s, a little jitter) after each failed try and
none after a connection that had held: a lost connection is tried again at once. What it is
doing shows in ``/readyz`` (``detail``), and each change of state is one log line: connecting,
connected, not connected (with the error; the tries after it are logged at DEBUG only).

The websocket is slack_sdk's own aiohttp Socket Mode client (its envelopes, acks, pings and
stale-connection checks), with its connecting handed to the link: the SDK's own loop retries
every few seconds forever, with a traceback each time, reusing a URL that may have expired.
Here one call of ``connect`` is one try with a fresh URL; a drop the SDK notices (a close, a
ping unanswered, Slack's ``disconnect``) wakes the link, which reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import aiohttp
from slack_bolt.adapter.socket_mode.async_internals import run_async_bolt_app, send_async_response
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import SlackCalls
from core.runtime.waiting import wait_event

log = logging.getLogger(__name__)
#: the first wait after a failed try, and the longest
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
#: a connection that held this long was a good one: after it drops, try again at once
STABLE_S = 60.0
#: the most one try may take (a Slack that does not answer at all)
TRY_TIMEOUT_S = 30.0
#: how often the websocket is pinged (Bolt's default); unanswered for 4 pings, it is stale
PING_S = 10.0


class LinkState(StrEnum):
    CONNECTING = "connecting"  # the first try is under way
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # a try failed, or the connection dropped: trying again


def backoff(failures: int, first: float = BACKOFF_FIRST_S, most: float = BACKOFF_MAX_S) -> float:
    """The wait after ``failures`` failed tries in a row: ``first`` doubling up to ``most``."""
    return 0.0 if failures < 1 else min(most, first * 2 ** min(failures - 1, 32))


def describe(exc: BaseException) -> str:
    """A failed try, in one line: what Slack answered, or why it could not be reached."""
    if isinstance(exc, SlackApiError):
        return f"Slack answered {exc.response.get('error')} (HTTP {exc.response.status_code})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {TRY_TIMEOUT_S:.0f} s"
    return f"{type(exc).__name__}: {exc}"[:300]


class _Client(SocketModeClient):
    """slack_sdk's aiohttp Socket Mode client with the connecting left to :class:`SocketLink`."""

    def __init__(self, app_token: str, web_client: AsyncWebClient, wake: Callable[[bool], None]) -> None:
        super().__init__(app_token, logger=_sdk_logger(), web_client=web_client, ping_interval=PING_S)
        self._wake = wake

    async def connect(self) -> None:
        """One try: a fresh URL from ``apps.connections.open``, a websocket to it, and the
        SDK's receiving and monitoring on it. Raises when Slack cannot be reached or refuses."""
        await self.drop()
        if self.aiohttp_client_session.closed:
            self.aiohttp_client_session = aiohttp.ClientSession()
        answer = await self.web_client.apps_connections_open(app_token=self.app_token)
        self.wss_uri = str(answer["url"])
        session = await self.aiohttp_client_session.ws_connect(
            self.wss_uri,
            autoping=False,
            heartbeat=self.ping_interval,
            proxy=self.proxy,
            ssl=self.web_client.ssl if self.web_client.ssl is not None else True,
        )
        try:
            await session.ping(f"sdk-ping-pong:{time.time()}".encode())
        except BaseException:
            await session.close()
            raise
        self.current_session, self.stale, self.last_ping_pong_time = session, False, None
        self.auto_reconnect_enabled = True  # (the SDK's checks then call connect_to_new_endpoint)
        self.current_session_monitor = asyncio.ensure_future(self.monitor_current_session())
        self.message_receiver = asyncio.ensure_future(self.receive_messages())

    async def drop(self) -> None:
        """End the SDK's loops on the current websocket and close it (a close of ours is no drop)."""
        self.auto_reconnect_enabled = False
        for task in (self.current_session_monitor, self.message_receiver):
            if task is not None:
                task.cancel()
        self.current_session_monitor = self.message_receiver = None
        session, self.current_session = self.current_session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except Exception as exc:  # (a connection reset on the way out)
                log.debug("closing the old Socket Mode connection: %r", exc)

    async def connect_to_new_endpoint(self, force: bool = False) -> None:
        """The SDK's reconnect (on a close, a stale ping, or Slack's ``disconnect`` when
        ``force``): the link does it."""
        self._wake(force)


def _sdk_logger() -> logging.Logger:
    """The SDK's own lines (a session established, "Reconnecting...") say again what the link
    logs once: only its warnings and errors are kept, unless the root logs DEBUG."""
    logger = logging.getLogger(f"{__name__}.sdk")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(logging.WARNING)
    return logger


class SocketLink:
    """The Socket Mode connection of one Bolt app, kept up by a background task."""

    def __init__(
        self,
        bolt: AsyncApp,
        app_token: str,
        api_url: str | None = None,
        *,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.bolt = bolt
        self.state = LinkState.CONNECTING
        self.since = datetime.now(UTC)
        #: failed tries since the last connection (the backoff grows with them)
        self.failures = 0
        self.error: str | None = None
        #: the wait before the next try, while not connected
        self.wait_s: float | None = None
        self._on_connected = on_connected
        self._wake = asyncio.Event()
        self._asked = False  # Slack asked for a new connection (``disconnect``)
        # apps.connections.open without the client's retries on connection errors: the link retries
        web = AsyncWebClient(
            base_url=api_url or AsyncWebClient.BASE_URL,
            retry_handlers=[SlackCalls(), AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
        )
        self.client = _Client(app_token, web, self._woken)
        self.client.socket_mode_request_listeners.append(self._handle)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background; returns at once."""
        log.info("Slack: connecting over Socket Mode")
        self._task = asyncio.create_task(self._run(), name="shipyard-slack-socket")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()  # type: ignore[no-untyped-call]

    def detail(self) -> dict[str, Any]:
        """For ``/readyz``: the state, since when, and while not connected the failed tries,
        the last error and the wait before the next try."""
        detail: dict[str, Any] = {
            "mode": "socket",
            "state": str(self.state),
            "since": self.since.isoformat().replace("+00:00", "Z"),
        }
        if self.state is not LinkState.CONNECTED:
            detail.update(failures=self.failures, error=self.error, retry_in_s=self.wait_s)
        return detail

    async def _handle(self, client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        """An envelope, through Bolt as ``AsyncSocketModeHandler`` does it, acked with its answer."""
        start = time.time()
        await send_async_response(client, request, await run_async_bolt_app(self.bolt, request), start)

    def _woken(self, asked: bool) -> None:
        self._asked = self._asked or asked
        self._wake.set()

    async def _run(self) -> None:
        flaps = 0  # connections in a row that dropped before they held: the backoff goes on
        while True:
            if await self._try():
                connected_at = time.monotonic()
                self.error = await self._dropped()
                held = time.monotonic() - connected_at >= STABLE_S
                flaps = 0 if held or self._asked else flaps + 1
                self._enter(LinkState.DISCONNECTED, self.error)
                self._asked = False
                wait = backoff(flaps)  # (none after a connection that held)
            else:
                self.failures += 1
                if self.state is LinkState.CONNECTING:
                    self._enter(LinkState.DISCONNECTED, self.error)
                else:
                    log.debug("Slack: Socket Mode try %d failed: %s", self.failures, self.error)
                wait = backoff(flaps + self.failures)
            self.wait_s = round(wait * random.uniform(0.85, 1.15), 2)
            await asyncio.sleep(self.wait_s)

    async def _try(self) -> bool:
        try:
            async with asyncio.timeout(TRY_TIMEOUT_S):
                await self.client.connect()
        except Exception as exc:  # Slack unreachable, or refusing: the loop tries again
            self.error = describe(exc)
            return False
        self._wake.clear()
        self.failures, self.error, self.wait_s = 0, None, None
        self._enter(LinkState.CONNECTED)
        if self._on_connected is not None:
            self._on_connected()
        return True

    async def _dropped(self) -> str:
        """Wait for the connection to end; returns why."""
        while True:
            await wait_event(self._wake, PING_S)  # (and look anyway now and then)
            self._wake.clear()
            if self._asked:
                return "Slack asked for a new connection"
            if not await self.client.is_connected():
                return "the connection was lost"

    def _enter(self, state: LinkState, error: str | None = None) -> None:
        """One log line per change of state."""
        was, self.state, self.since = self.state, state, datetime.now(UTC)
        if state is LinkState.CONNECTED:
            log.info("Slack: connected over Socket Mode")
        elif was is LinkState.CONNECTED and self._asked:
            log.info("Slack: Socket Mode reconnecting (%s)", error)
        else:
            log.warning(
                "Slack: Socket Mode not connected (%s); trying again, waiting up to %.0f s between "
                "tries; HTTP, runs and schedules go on, run messages are posted once Slack answers",
                error,
                BACKOFF_MAX_S,
            )
