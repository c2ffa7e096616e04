"""``shipyard secret …``: environment secrets (docs/secrets.md), on the database directly.

``set`` reads the value from standard input (never from the command line, where ``ps`` and the
shell's history would keep it); nothing prints a value. Every change is audited with the
channel ``cli``: the secret's environment and name, and who, never the value."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import load_settings
from core.errors import ShipyardError
from core.secrets import SecretsDisabled
from storage.migrate import upgrade
from storage.secrets import SecretBox, SecretStore, check_key, generate_key
from storage.store import SqlStore

#: where ``rotate-key`` finds the new key when no ``--new-key-file`` is given
NEW_KEY_VARIABLE = "SHIPYARD_NEW_SECRET_KEY"


def register(sub: Any) -> None:
    secret = sub.add_parser("secret", help="environment secrets: set, list, delete, rotate the key")
    ssub = secret.add_subparsers(metavar="ACTION", required=True)
    s = ssub.add_parser("set", help="set a secret; the value is read from standard input")
    s.add_argument("environment")
    s.add_argument("name", help="the environment variable jobs get it as, e.g. DEPLOY_KEY")
    s.set_defaults(func=cmd_secret_set)
    s = ssub.add_parser("list", help="an environment's secrets: names only, never values")
    s.add_argument("environment")
    s.set_defaults(func=cmd_secret_list)
    s = ssub.add_parser("delete", help="delete a secret")
    s.add_argument("environment")
    s.add_argument("name")
    s.set_defaults(func=cmd_secret_delete)
    s = ssub.add_parser(
        "rotate-key",
        help=f"re-encrypt every secret under a new key (from --new-key-file or ${NEW_KEY_VARIABLE})",
    )
    s.add_argument("--new-key-file", type=Path, help="a file holding the new key")
    s.set_defaults(func=cmd_secret_rotate)
    s = ssub.add_parser("generate-key", help="print a new random key for SHIPYARD_SECRET_KEY")
    s.set_defaults(func=cmd_secret_generate_key)


def _secrets() -> SecretStore:
    settings = load_settings()
    upgrade(settings.database_url)
    key = settings.secret_key
    box = SecretBox(key.get_secret_value()) if key is not None else None
    return SecretStore(SqlStore(settings.database_url, pool_size=1), box)


def _fail(message: str) -> int:
    print(f"shipyard: {message}", file=sys.stderr)
    return 2


def _now() -> datetime:
    return datetime.now(UTC)


def cmd_secret_set(args: argparse.Namespace) -> int:
    secrets = _secrets()
    if secrets.box is None:  # (before reading: nothing would be done with the value)
        return _fail(SecretsDisabled().message)
    if sys.stdin.isatty():
        print(f"value for {args.name} (then Enter):", file=sys.stderr)
        raw = sys.stdin.buffer.readline()
    else:
        raw = sys.stdin.buffer.read()
    # (bytes that are not UTF-8 stay surrogates, whatever the locale, for ``set`` to refuse)
    value = raw.decode(errors="surrogateescape").removesuffix("\n")  # (``echo x |`` adds one)
    try:
        created = secrets.set(args.environment, args.name, value, getpass.getuser(), _now(), "cli")
    except ShipyardError as exc:
        return _fail(exc.message)
    print(f"secret {args.name} of {args.environment} {'created' if created else 'replaced'}")
    return 0


def cmd_secret_list(args: argparse.Namespace) -> int:
    found = _secrets().names(args.environment)
    if not found:
        print(f"{args.environment} has no secrets")
    for info in found:
        print(f"{info.name}\tset by {info.updated_by} at {info.updated_at:%Y-%m-%d %H:%M:%S}Z")
    return 0


def cmd_secret_delete(args: argparse.Namespace) -> int:
    try:
        _secrets().delete(args.environment, args.name, getpass.getuser(), _now(), "cli")
    except ShipyardError as exc:
        return _fail(exc.message)
    print(f"secret {args.name} of {args.environment} deleted")
    return 0


def cmd_secret_rotate(args: argparse.Namespace) -> int:
    secrets = _secrets()
    if secrets.box is None:
        return _fail("SHIPYARD_SECRET_KEY must hold the current key to rotate it")
    try:
        if args.new_key_file is not None:
            text = args.new_key_file.read_text()
        else:
            text = os.environ.get(NEW_KEY_VARIABLE, "")
            if not text.strip():
                return _fail(f"give the new key with --new-key-file or ${NEW_KEY_VARIABLE}")
        new = SecretBox(check_key(text))
    except OSError as exc:
        return _fail(f"--new-key-file: cannot read {args.new_key_file}: {exc.strerror}")
    except ValueError as exc:
        return _fail(f"the new key: {exc}")
    try:
        count = secrets.rotate(new, getpass.getuser(), _now(), "cli")
    except ShipyardError as exc:
        return _fail(f"{exc.message}; nothing was changed")
    print(f"{count} secrets re-encrypted; set SHIPYARD_SECRET_KEY to the new key and restart the servers")
    return 0


def cmd_secret_generate_key(args: argparse.Namespace) -> int:
    print(generate_key())
    return 0
