"""What Shipyard asks of Slack, in one place: the slash command, the events, the Web API methods the
bot calls and the scopes they need, and the app manifest built from them.

``render()`` produces a v1 app manifest (YAML) to paste into "Create New App → From an app
manifest" at https://api.slack.com/apps. ``manifest.yml`` at the repository root is its output for
an example host; ``shipyard manifest --url https://your-host`` prints one for yours.

With a base URL, Slack sends slash commands, interactions and events over HTTP to
``<base_url>/slack/events``. Without one (socket mode) the URLs are left out; the bot then connects
with an app-level token (scope ``connections:write``, created by hand under "Basic Information",
since a manifest cannot declare it) through ``apps.connections.open``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import yaml

COMMAND = "/deploy"
COMMAND_DESCRIPTION = "Run deployment pipelines, follow them and approve their gates"
USAGE_HINT = "run <pipeline> [key=value…] | status <run> | approve <run> | help"

#: the path Slack posts slash commands, interactions and events to (one endpoint for all three)
EVENTS_PATH = "/slack/events"

#: the Events API events the bot subscribes to
BOT_EVENTS: tuple[str, ...] = ("app_home_opened",)

#: every Slack Web API method Shipyard's own code calls, and the bot-token scope it needs (None:
#: none needed); tests/slack_manifest scans ``bot/`` and keeps this equal to what it finds
METHOD_SCOPES: dict[str, str | None] = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "chat.delete": "chat:write",  # a bot token deletes only its own messages
    "views.open": None,
    "views.push": None,
    "views.update": None,
    "views.publish": None,
    "usergroups.users.list": "usergroups:read",
    # Socket Mode (bot/slack/socket.py) opens its connection with the app-level token, whose
    # ``connections:write`` is not a bot scope
    "apps.connections.open": None,
}

#: methods the Slack libraries call for the bot, with the module that calls them; none needs a
#: bot scope: Bolt's single-workspace authorization asks ``auth.test`` who the token is
LIBRARY_METHODS: dict[str, str] = {
    "auth.test": "slack_bolt.middleware.authorization.async_single_team_authorization",
}

#: scopes needed for something other than a Web API call
OTHER_SCOPES: tuple[str, ...] = ("commands",)  # the slash command

#: the bot scopes the app requests: exactly what the methods above and the slash command need
SCOPES: tuple[str, ...] = tuple(
    sorted({scope for scope in METHOD_SCOPES.values() if scope is not None} | set(OTHER_SCOPES))
)

BOT_DISPLAY_NAME = "shipyard"
APP_DESCRIPTION = "Deployment pipelines you drive from Slack"
BACKGROUND_COLOR = "#1d3557"

#: hosts for which plain http is accepted (local testing, e.g. behind a tunnel)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})

# limits from Slack's manifest schema (v1)
_MAX_NAME = 35
_MAX_COMMAND_URL = 3000


def events_url(base_url: str) -> str:
    """``<base_url>/slack/events`` for a valid base URL; ``ValueError`` (with the reason) otherwise."""
    return check_base_url(base_url) + EVENTS_PATH


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash, if Slack can (and should) post to it.

    It must be https, or http on 127.0.0.1 / localhost for local testing, with a host and no query,
    fragment or credentials. Raises ``ValueError`` saying what is wrong otherwise.
    """
    shown = repr(base_url)
    try:
        parts = urlsplit(base_url.strip())
        host = parts.hostname
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"base URL {shown} is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http"):
        raise ValueError(
            f"base URL {shown} must start with https:// (Slack only posts to https), "
            "e.g. https://shipyard.example.com"
        )
    if not host:
        raise ValueError(f"base URL {shown} has no host; it must look like https://host[:port][/path]")
    if parts.scheme == "http" and host not in LOCAL_HOSTS:
        raise ValueError(
            f"base URL {shown} must use https: Slack only posts to https "
            f"(http is accepted for {' and '.join(sorted(LOCAL_HOSTS))} only, for local testing)"
        )
    if parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise ValueError(f"base URL {shown} must not have a query, a fragment or credentials")
    base = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    if base.endswith(EVENTS_PATH):
        raise ValueError(f"base URL {shown} must not end with {EVENTS_PATH}: give the base, it is added")
    if len(base) + len(EVENTS_PATH) > _MAX_COMMAND_URL:
        raise ValueError(f"base URL {shown} is too long for Slack (at most {_MAX_COMMAND_URL} characters)")
    return base


def build(
    base_url: str | None = None, *, socket_mode: bool = False, name: str = "Shipyard"
) -> dict[str, Any]:
    """The manifest as data; see ``render``."""
    if base_url is None and not socket_mode:
        raise ValueError("a base URL is needed (where Slack posts to) unless the app uses socket mode")
    if not name.strip() or len(name) > _MAX_NAME:
        raise ValueError(f"app name {name!r} must be 1 to {_MAX_NAME} characters")
    url = events_url(base_url) if base_url is not None else None
    at_url: dict[str, str] = {"url": url} if url else {}
    at_request_url: dict[str, str] = {"request_url": url} if url else {}
    at_options_url: dict[str, str] = {"message_menu_options_url": url} if url else {}
    return {
        "display_information": {
            "name": name,
            "description": APP_DESCRIPTION,
            "background_color": BACKGROUND_COLOR,
        },
        "features": {
            "app_home": {
                "home_tab_enabled": True,
                "messages_tab_enabled": False,
                "messages_tab_read_only_enabled": False,
            },
            "bot_user": {"display_name": BOT_DISPLAY_NAME, "always_online": True},
            "slash_commands": [
                {
                    "command": COMMAND,
                    **at_url,
                    "description": COMMAND_DESCRIPTION,
                    "usage_hint": USAGE_HINT,
                    "should_escape": False,
                }
            ],
        },
        "oauth_config": {"scopes": {"bot": list(SCOPES)}},
        "settings": {
            "event_subscriptions": {**at_request_url, "bot_events": list(BOT_EVENTS)},
            # (options: the trigger form's pipeline picker past 100 pipelines, an external_select)
            "interactivity": {"is_enabled": True, **at_request_url, **at_options_url},
            "org_deploy_enabled": False,
            "socket_mode_enabled": socket_mode,
            "token_rotation_enabled": False,
        },
    }


def render(base_url: str | None = None, *, socket_mode: bool = False, name: str = "Shipyard") -> str:
    """The Slack app manifest (v1, YAML) for Shipyard.

    ``base_url`` is where Shipyard is reachable from Slack (https; http only on 127.0.0.1 or
    localhost); commands, interactions and events go to ``<base_url>/slack/events``. Leave it out
    with ``socket_mode=True``: the manifest then has no URLs. Raises ``ValueError`` for a bad base
    URL or name, or for neither a base URL nor socket mode.
    """
    data = build(base_url, socket_mode=socket_mode, name=name)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
