"""Shipyard's Slack app: what it asks of Slack (``manifest``), the Bolt app (``bot``), run
messages (``notifier``) and App Home (``home``). ``setup`` mounts it in the web application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from bot.config import Settings

log = logging.getLogger(__name__)


def setup(app: web.Application, settings: Settings) -> Callable[[Any], AsyncIterator[None]] | None:
    """Mount the Slack app if it is configured; returns its lifecycle (given the running
    Shipyard), or None after saying once that Slack is off."""
    if not settings.slack_enabled:
        log.info(
            "Slack is off: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (HTTP) or SLACK_APP_TOKEN "
            "(Socket Mode) to turn it on; `shipyard console` speaks the same commands"
        )
        return None
    from bot.chat.verbs import ChatBackend
    from bot.slack.bot import Backlog, build_bolt, make_client, mount
    from bot.slack.notifier import Notifier

    backend = ChatBackend()
    client = make_client(settings)
    work = Backlog()
    bolt = build_bolt(settings, backend, client, work)
    if settings.slack_signing_secret is not None:
        mount(app, bolt)

    async def lifecycle(shipyard: Any) -> AsyncIterator[None]:
        import asyncio

        from bot.slack import roles

        backend.bind(shipyard)
        syncing = None
        if settings.slack_roles:
            await roles.sync(backend, client, settings.slack_roles)
            syncing = asyncio.create_task(roles.keep_synced(backend, client, settings.slack_roles))
        notifier = Notifier(backend, client, settings.slack_channel)
        await notifier.start()
        socket = None
        if settings.slack_app_token is not None:
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            socket = AsyncSocketModeHandler(bolt, app_token=settings.slack_app_token.get_secret_value())
            await socket.connect_async()  # type: ignore[no-untyped-call]
            log.info("Slack: connected over Socket Mode")
        else:
            log.info("Slack: receiving commands and events at /slack/events")
        try:
            yield
        finally:
            if socket is not None:
                await socket.close_async()  # type: ignore[no-untyped-call]
            await work.drain()
            await notifier.stop()
            if syncing is not None:
                syncing.cancel()
                await asyncio.gather(syncing, return_exceptions=True)
            backend.close()

    return lifecycle
