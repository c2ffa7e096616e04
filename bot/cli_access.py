"""``shipyard token …``, ``shipyard access …`` and ``shipyard audit …``: who may do what, and the
record of what was done. These act on the database directly (an operator's tools), and
every change they make, or refuse to make, is audited with the channel ``cli``."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from datetime import UTC, datetime
from typing import Any

from bot.config import load_settings
from core.access import Role
from core.audit import verify
from core.errors import ShipyardError
from core.ports import AuditEntry
from storage.audit_head import checkpoint
from storage.directory import PRINCIPAL_LEN, Directory, check_name
from storage.migrate import upgrade
from storage.reads import Reads
from storage.store import SqlStore

ROLES = [str(r) for r in Role]
#: what no database stores as text: NUL, and the surrogates standing for bytes that were not UTF-8
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def register(sub: Any) -> None:
    token = sub.add_parser("token", help="API tokens: create, list, revoke")
    tsub = token.add_subparsers(metavar="ACTION", required=True)
    s = tsub.add_parser("create", help="create a token and print it once")
    s.add_argument("name", help="the principal the token acts as, e.g. ci-deployer")
    # (roles are checked by the command, not by choices=, so that a refused one is audited)
    s.add_argument("--role", action="append", required=True, help=f"{', '.join(ROLES)}; repeat for several")
    s.add_argument("--group", action="append", default=[], help="a group, e.g. release-managers")
    s.add_argument(
        "--label",
        action="append",
        default=[],
        help="a label its runner may carry, e.g. production; repeat for several (runners only)",
    )
    s.set_defaults(func=cmd_token_create)
    s = tsub.add_parser("list", help="tokens and their roles (never the secrets)")
    s.set_defaults(func=cmd_token_list)
    s = tsub.add_parser("rotate", help="a new secret for a token, printed once; the old one stops working")
    s.add_argument("name")
    s.set_defaults(func=cmd_token_rotate)
    s = tsub.add_parser("revoke", help="revoke a token; it stops working within seconds")
    s.add_argument("name")
    s.set_defaults(func=cmd_token_revoke)

    access = sub.add_parser("access", help="roles and groups of any principal (tokens, Slack users)")
    asub = access.add_subparsers(metavar="ACTION", required=True)
    for verb in ("grant", "revoke"):
        s = asub.add_parser(verb, help=f"{verb} a role, a group membership or a runner label")
        s.add_argument("principal")
        s.add_argument(
            "what",
            metavar="ROLE|group:NAME|label:NAME",
            help=f"one of {', '.join(ROLES)}, group:NAME, or label:NAME (a label its runner may carry)",
        )
        s.set_defaults(func=cmd_access, verb=verb)
    s = asub.add_parser("show", help="what a principal holds now")
    s.add_argument("principal")
    s.set_defaults(func=cmd_access_show)

    audit = sub.add_parser("audit", help="the audit log")
    ausub = audit.add_subparsers(metavar="ACTION", required=True)
    s = ausub.add_parser("verify", help="check the hash chain; exits 1 at the first altered or removed entry")
    s.set_defaults(func=cmd_audit_verify)
    s = ausub.add_parser("list", help="the latest entries")
    s.add_argument("--limit", type=_count, default=20, help=f"how many (1-{MOST_LISTED}, default 20)")
    s.set_defaults(func=cmd_audit_list)


#: the most entries ``audit list`` prints (more would not fit a database's integer either)
MOST_LISTED = 1_000_000


def _count(text: str) -> int:
    n = int(text) if text.strip().lstrip("+-").isdecimal() else 0
    if not 1 <= n <= MOST_LISTED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MOST_LISTED}")
    return n


def _store() -> SqlStore:
    settings = load_settings()
    upgrade(settings.database_url)
    return SqlStore(settings.database_url, pool_size=1)


def _now() -> datetime:
    return datetime.now(UTC)


def _storable(value: Any) -> Any:
    """``value`` as a database can store it: the bytes of an argument that were not UTF-8
    arrive as surrogates, which no database stores, so a refusal of them is recorded with
    U+FFFD in their place."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items()}
    return value


def _audit(
    store: SqlStore,
    action: str,
    target: str,
    detail: dict[str, Any],
    outcome: str = "accepted",
    reason: str = "",
) -> None:
    store.append_audit(
        AuditEntry(
            at=_now(),
            actor=getpass.getuser(),
            channel="cli",
            action=action,
            target=_storable(target),
            outcome=outcome,
            reason=_storable(reason),
            detail=_storable(detail),
        )
    )


def _refuse(store: SqlStore, action: str, target: str, detail: dict[str, Any], reason: str) -> int:
    """Audit a refused command, tell the operator why, and exit 2."""
    _audit(store, action, target, detail, "rejected", reason)
    print(f"shipyard: {reason}", file=sys.stderr)
    return 2


def cmd_token_create(args: argparse.Namespace) -> int:
    store = _store()
    detail = {"roles": args.role, "groups": args.group, "labels": args.label}
    unknown = [r for r in args.role if r not in ROLES]
    if unknown:
        reason = f"unknown role {', '.join(map(repr, unknown))} (roles: {', '.join(ROLES)})"
        return _refuse(store, "token_create", args.name, detail, reason)
    if args.label and "runner" not in args.role:
        reason = "--label is for runner tokens: add --role runner (labels say which jobs a runner may claim)"
        return _refuse(store, "token_create", args.name, detail, reason)
    try:
        secret = Directory(store).create_token(
            args.name,
            [Role(r) for r in args.role],
            _now(),
            by=getpass.getuser(),
            groups=args.group,
            labels=args.label,
        )
    except ShipyardError as exc:
        return _refuse(store, "token_create", args.name, detail, exc.message)
    _audit(store, "token_create", args.name, detail)
    print(secret)
    labels = f"; labels {', '.join(sorted(set(args.label)))}" if args.label else ""
    print(
        f"token for {args.name} ({', '.join(args.role)}{labels}); it is shown only now: "
        "store it in your CI's secrets",
        file=sys.stderr,
    )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = Directory(_store()).tokens()
    if not tokens:
        print("no tokens yet (shipyard token create NAME --role ROLE)")
    for t in tokens:
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        labels = f" labels {','.join(t.labels)}" if t.labels else ""
        print(
            f"{t.name:24} {','.join(t.roles) or '-':28} {state:24} "
            f"created {t.created_at:%Y-%m-%d} by {t.created_by}{labels}"
        )
    return 0


def cmd_token_rotate(args: argparse.Namespace) -> int:
    store = _store()
    try:
        secret = Directory(store).rotate_token(args.name)
    except ShipyardError as exc:
        return _refuse(store, "token_rotate", args.name, {}, exc.message)
    _audit(store, "token_rotate", args.name, {})
    print(secret)
    print(
        f"new token for {args.name} (same roles and labels); the old one stops working within "
        "seconds: store this one in your CI's secrets",
        file=sys.stderr,
    )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    store = _store()
    try:
        Directory(store).revoke_token(args.name, _now())
    except ShipyardError as exc:
        return _refuse(store, "token_revoke", args.name, {}, exc.message)
    _audit(store, "token_revoke", args.name, {})
    print(f"revoked {args.name}")
    return 0


def _parse_what(what: str) -> tuple[str, str] | None:
    for kind in ("group", "label"):
        if what.startswith(f"{kind}:") and len(what) > len(kind) + 1:
            return kind, what[len(kind) + 1 :]
    if what in ROLES:
        return "role", what
    return None


def cmd_access(args: argparse.Namespace) -> int:
    store = _store()
    parsed = _parse_what(args.what)
    if parsed is None:
        reason = f"{args.what!r} is neither a role ({', '.join(ROLES)}), group:NAME nor label:NAME"
        return _refuse(store, f"access_{args.verb}", args.principal, {"what": args.what}, reason)
    kind, value = parsed
    directory = Directory(store)
    try:
        if args.verb == "grant":
            directory.grant(args.principal, kind, value, _now())
        elif not directory.revoke_grant(args.principal, kind, value, _now()):
            reason = _not_held(directory, args.principal, kind, value)
            return _refuse(store, "access_revoke", args.principal, {kind: value}, reason)
    except ShipyardError as exc:
        return _refuse(store, f"access_{args.verb}", args.principal, {kind: value}, exc.message)
    _audit(store, f"access_{args.verb}", args.principal, {kind: value})
    done = "granted" if args.verb == "grant" else "revoked"
    after = (
        "from its runner's next claim (jobs it holds run to their end)"
        if kind == "label"
        else "gates already open keep the approvers they had"
    )
    print(f"{args.principal}: {done} {args.what} ({after})")
    return 0


def _not_held(directory: Directory, name: str, kind: str, value: str) -> str:
    """Why there is nothing to revoke, and what to revoke instead when the role comes with a group."""
    at = _now()
    held = directory.principal(name, at)
    if kind == "group":
        groups = ", ".join(sorted(held.groups)) or "none"
        return f"{name} is not in group {value}, so there is nothing to revoke (groups: {groups})"
    if kind == "label":
        via = sorted(g for g in held.groups if value in directory.principal(g, at).labels)
        if via:
            return (
                f"{name} may carry label {value} only through group {via[0]}: "
                f"revoke label:{value} from {via[0]}"
            )
        labels = ", ".join(sorted(held.labels)) or "none"
        return f"{name} may not carry label {value}, so there is nothing to revoke (labels: {labels})"
    via = sorted(g for g in held.groups if value in directory.principal(g, at).roles)
    if via:
        return (
            f"{name} holds {value} only through group {', '.join(via)}: revoke group:{via[0]} "
            f"from {name}, or {value} from {via[0]}"
        )
    roles = ", ".join(sorted(held.roles)) or "none"
    return f"{name} does not hold {value}, so there is nothing to revoke (roles: {roles})"


def cmd_access_show(args: argparse.Namespace) -> int:
    try:
        check_name("principal", args.principal, PRINCIPAL_LEN)
    except ShipyardError as exc:
        print(f"shipyard: {exc.message}", file=sys.stderr)
        return 2
    p = Directory(_store()).principal(args.principal, _now())
    print(
        f"{p.name}: roles {', '.join(sorted(p.roles)) or 'none'}; "
        f"groups {', '.join(sorted(p.groups)) or 'none'}; "
        f"runner labels {', '.join(sorted(p.labels)) or 'none'}"
    )
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    store = _store()
    head = checkpoint(store)  # first: entries appended while the chain is read come after it
    if head is None:
        print("audit log BROKEN: its checkpoint (the audit_head row) was deleted", file=sys.stderr)
        return 1
    verdict = verify(Reads(store).audit_chain(), head)
    if verdict.ok:
        print(f"audit log intact: {verdict.checked} entries verified")
        return 0
    print(f"audit log BROKEN after {verdict.checked} entries: {verdict.problem}", file=sys.stderr)
    return 1


def cmd_audit_list(args: argparse.Namespace) -> int:
    for c in reversed(Reads(_store()).audit(None, args.limit)):
        e = c.entry
        why = f" ({e.reason})" if e.reason else ""
        print(
            f"{c.id:6} {e.at:%Y-%m-%d %H:%M:%S} {e.actor} via {e.channel}: "
            f"{e.action} {e.target} {e.outcome}{why}"
        )
    return 0
