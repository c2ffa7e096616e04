"""``shipyard manifest`` (the Slack app manifest for this deployment, see ``bot.slack.manifest``)
and ``shipyard console`` (the bot's commands in a terminal, see ``bot.console``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_USAGE = 0, 2


def register(sub: Any) -> None:
    s = sub.add_parser(
        "manifest",
        help="print the Slack app manifest (paste it into Create New App → From an app manifest)",
        description="Print the Slack app manifest (YAML) for Shipyard. Paste it into "
        "https://api.slack.com/apps → Create New App → From an app manifest.",
    )
    s.add_argument(
        "--url",
        metavar="URL",
        help="where Slack reaches Shipyard, e.g. https://shipyard.example.com (it posts to URL/slack/events)",
    )
    s.add_argument(
        "--socket-mode",
        action="store_true",
        help="connect to Slack over a WebSocket (no public URL needed; needs an app-level token)",
    )
    s.add_argument("--name", default="Shipyard", help="the app's name in Slack (default: %(default)s)")
    s.set_defaults(func=cmd_manifest)

    from bot.console import DEFAULT_USER

    s = sub.add_parser("console", help="talk to the bot in this terminal: /deploy … lines, buttons by number")
    s.add_argument(
        "--user",
        default=DEFAULT_USER,
        help="who you are: a named user has exactly the roles the database gives them "
        "(shipyard access grant), as a Slack user does; the default user, %(default)s, may also "
        "deploy, for this session only, when the database gives it no role (nothing is granted)",
    )
    s.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    import logging

    from bot.config import load_settings
    from bot.console import main

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return main(load_settings(), args.user)


def cmd_manifest(args: argparse.Namespace) -> int:
    from bot.slack.manifest import render

    if args.url is None and not args.socket_mode:
        print("shipyard: give --url https://your-host, or --socket-mode", file=sys.stderr)
        return EXIT_USAGE
    try:
        text = render(args.url, socket_mode=args.socket_mode, name=args.name)
    except ValueError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    return EXIT_OK
