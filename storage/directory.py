"""Principals' credentials and grants: API tokens (only their SHA-256 is stored) and the roles
and group memberships that ``core.access`` reasons about."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from core.access import Grant, Principal, Role
from core.errors import Conflict, InvalidInput, NotFound
from core.labels import check_labels
from storage.store import SqlStore
from storage.tables import T

TOKEN, GRANT = T["access_token"], T["grant"]
#: tokens carry a recognisable prefix, so a leaked one is easy to find in logs and scanners
TOKEN_PREFIX = "shy_"
#: who "made" the admin token given in ``SHIPYARD_ADMIN_TOKEN``
ADMIN_FROM_ENV = "SHIPYARD_ADMIN_TOKEN"


#: the longest principal and group names (their columns' widths)
PRINCIPAL_LEN, GROUP_LEN = 200, 100


def check_name(what: str, name: str, longest: int) -> None:
    """Raise ``InvalidInput`` unless ``name`` can be stored and read back as typed: 1 to
    ``longest`` printable characters (no NUL or other control character, and no bytes that
    were not UTF-8, which arrive from a command line as surrogates)."""
    if not name.strip() or len(name) > longest or not name.isprintable():
        raise InvalidInput(f"{what} {name!r}: use 1-{longest} printable characters")


def _check_grant(principal: str, kind: str, value: str) -> None:
    check_name("principal", principal, PRINCIPAL_LEN)
    if kind == "group":
        check_name("group", value, GROUP_LEN)
    elif kind == "label":
        _check_label(value)


def _check_label(label: str) -> None:
    try:
        check_labels([label])
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    principal: str
    roles: tuple[str, ...]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    #: the labels its runner may carry (its own label grants)
    labels: tuple[str, ...] = ()


class Directory:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- tokens -----------------------------------------------------------------------------
    def create_token(
        self,
        name: str,
        roles: list[Role],
        now: datetime,
        *,
        by: str,
        groups: list[str] | None = None,
        labels: list[str] | None = None,
    ) -> str:
        """A new token for the principal ``name``; returns the secret, which is not kept.
        ``labels``: those a runner holding it may carry (granted with it)."""
        if not name or len(name) > 100 or not all(c.isalnum() or c in "-_.@" for c in name):
            raise InvalidInput(f"token name {name!r}: use 1-100 letters, digits, '-', '_', '.', '@'")
        for group in groups or []:
            check_name("group", group, GROUP_LEN)
        for label in labels or []:
            _check_label(label)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.engine.begin() as conn:
            found = conn.execute(sa.select(TOKEN.c.revoked_at).where(TOKEN.c.name == name)).first()
            if found is not None:
                # (a revoked token's row stays for the audit, so its name stays taken)
                was = "was revoked" if found[0] is not None else "exists"
                raise Conflict(f"a token named {name!r} {was}; token names are not reused: pick another name")
            conn.execute(
                sa.insert(TOKEN).values(
                    name=name,
                    token_hash=token_hash(secret),
                    principal=name,
                    created_at=now,
                    created_by=by,
                )
            )
            grants = [("role", str(r)) for r in roles] + [("group", g) for g in groups or []]
            self._grant(conn, name, grants + [("label", label) for label in labels or []], now)
        return secret

    def rotate_token(self, name: str) -> str:
        """A new secret for the active token ``name`` (same principal, grants and history); the
        old secret stops working at once. Returns the new secret, which is not kept."""
        check_name("token name", name, 100)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(TOKEN)
                .where(
                    TOKEN.c.name == name, TOKEN.c.revoked_at.is_(None), TOKEN.c.created_by != ADMIN_FROM_ENV
                )
                .values(token_hash=token_hash(secret))
            )
            if done.rowcount == 1:
                return secret
            found = conn.execute(sa.select(TOKEN.c.created_by).where(TOKEN.c.name == name)).first()
        if found is not None and found[0] == ADMIN_FROM_ENV:
            # (each start makes the variable's secret the admin's again)
            raise InvalidInput(
                f"{name!r} is SHIPYARD_ADMIN_TOKEN's: set the variable anew and restart the service"
            )
        raise NotFound(f"no active token named {name!r}")

    def revoke_token(self, name: str, now: datetime) -> None:
        check_name("token name", name, 100)
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(TOKEN)
                .where(TOKEN.c.name == name, TOKEN.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if done.rowcount != 1:
                raise NotFound(f"no active token named {name!r}")

    def tokens(self) -> list[TokenInfo]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(TOKEN).order_by(TOKEN.c.name)).mappings().all()
            grants = conn.execute(sa.select(GRANT).where(GRANT.c.revoked_at.is_(None))).mappings().all()
        held: dict[tuple[str, str], list[str]] = {}
        for g in grants:
            held.setdefault((g["kind"], g["principal"]), []).append(g["value"])
        return [
            TokenInfo(
                r["name"],
                r["principal"],
                tuple(sorted(held.get(("role", r["principal"]), []))),
                r["created_at"],
                r["created_by"],
                r["revoked_at"],
                tuple(sorted(held.get(("label", r["principal"]), []))),
            )
            for r in rows
        ]

    def authenticate(self, secret: str, now: datetime) -> Principal | None:
        """The principal an unrevoked token belongs to, with what it holds now."""
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(TOKEN.c.principal).where(
                    TOKEN.c.token_hash == token_hash(secret), TOKEN.c.revoked_at.is_(None)
                )
            ).first()
            if row is None:
                return None
            return Principal.from_grants(row[0], self._grants(conn, row[0]), now)

    def ensure_admin_token(self, secret: str, now: datetime, name: str = "admin") -> None:
        """Make ``secret`` (from ``SHIPYARD_ADMIN_TOKEN``) an admin's token, idempotently."""
        digest = token_hash(secret)
        with self.store.engine.begin() as conn:
            found = conn.execute(sa.select(TOKEN.c.name).where(TOKEN.c.token_hash == digest)).first()
            if found is not None:
                return
            conn.execute(sa.delete(TOKEN).where(TOKEN.c.name == name))
            conn.execute(
                sa.insert(TOKEN).values(
                    name=name,
                    token_hash=digest,
                    principal=name,
                    created_at=now,
                    created_by=ADMIN_FROM_ENV,
                )
            )
            held = Principal.from_grants(name, self._grants(conn, name), now)
            if Role.ADMIN not in held.roles:
                self._grant(conn, name, [("role", "admin")], now)

    # -- grants -----------------------------------------------------------------------------
    def grant(self, principal: str, kind: str, value: str, now: datetime) -> None:
        _check_grant(principal, kind, value)
        with self.store.engine.begin() as conn:
            self._grant(conn, principal, [(kind, value)], now)

    def revoke_grant(self, principal: str, kind: str, value: str, now: datetime) -> bool:
        """Whether ``principal`` held the grant itself (one held through a group is not revoked)."""
        _check_grant(principal, kind, value)
        with self.store.engine.begin() as conn:
            done = conn.execute(
                sa.update(GRANT)
                .where(
                    GRANT.c.principal == principal,
                    GRANT.c.kind == kind,
                    GRANT.c.value == value,
                    GRANT.c.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            return done.rowcount > 0

    def principal(self, name: str, now: datetime) -> Principal:
        with self.store.engine.connect() as conn:
            return Principal.from_grants(name, self._grants(conn, name), now)

    def standing(self, name: str, now: datetime) -> Principal | None:
        """What ``name`` may do now through something it set up earlier (an incoming trigger):
        what ``principal`` says, or None when ``name`` had API tokens and all of them were
        revoked. A principal that never had a token (a Slack user) stands on its grants."""
        with self.store.engine.connect() as conn:
            revoked = list(
                conn.execute(sa.select(TOKEN.c.revoked_at).where(TOKEN.c.principal == name)).scalars()
            )
            if revoked and None not in revoked:
                return None
            return Principal.from_grants(name, self._grants(conn, name), now)

    def members(self, group: str, at: datetime) -> list[Principal]:
        """Who was in ``group`` at ``at`` by their own membership (a Slack user group put in
        it, not its members), each with what they held then: to mention who may clear a gate."""
        with self.store.engine.connect() as conn:
            names = conn.execute(
                sa.select(GRANT.c.principal)
                .where(
                    GRANT.c.kind == "group",
                    GRANT.c.value == group,
                    GRANT.c.granted_at <= at,
                    sa.or_(GRANT.c.revoked_at.is_(None), GRANT.c.revoked_at > at),
                )
                .distinct()
                .order_by(GRANT.c.principal)
            ).scalars()
            return [Principal.from_grants(n, self._grants(conn, n), at) for n in list(names)]

    def _grants(self, conn: sa.Connection, principal: str) -> list[Grant]:
        """The principal's grants, its groups' (whose roles it holds while a member) and those
        of the groups its groups are in (``Principal.from_grants``)."""
        rows = list(conn.execute(sa.select(GRANT).where(GRANT.c.principal == principal)).mappings())
        seen = {principal}
        for _ in range(2):
            groups = sorted({r["value"] for r in rows if r["kind"] == "group"} - seen)
            if not groups:
                break
            seen.update(groups)
            rows += conn.execute(sa.select(GRANT).where(GRANT.c.principal.in_(groups))).mappings()
        return [Grant(r["principal"], r["kind"], r["value"], r["granted_at"], r["revoked_at"]) for r in rows]

    def sync_members(self, group: str, members: set[str], now: datetime) -> tuple[int, int]:
        """Make ``members`` exactly the principals in ``group`` from now on; returns (added,
        removed). Membership is a grant, so what a member could do at a moment stays known."""
        with self.store.engine.begin() as conn:
            held = set(
                conn.execute(
                    sa.select(GRANT.c.principal).where(
                        GRANT.c.kind == "group", GRANT.c.value == group, GRANT.c.revoked_at.is_(None)
                    )
                ).scalars()
            )
            for member in sorted(members - held):
                conn.execute(
                    sa.insert(GRANT).values(principal=member, kind="group", value=group, granted_at=now)
                )
            gone = sorted(held - members)
            if gone:
                conn.execute(
                    sa.update(GRANT)
                    .where(
                        GRANT.c.kind == "group",
                        GRANT.c.value == group,
                        GRANT.c.principal.in_(gone),
                        GRANT.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=now)
                )
        return len(members - held), len(gone)

    def sync_roles(self, principal: str, roles: set[str], now: datetime) -> None:
        """Make ``roles`` exactly the roles ``principal`` holds from now on."""
        with self.store.engine.begin() as conn:
            held = {
                g.value
                for g in self._grants(conn, principal)
                if g.principal == principal and g.kind == "role" and g.revoked_at is None
            }
            self._grant(conn, principal, [("role", r) for r in sorted(roles - held)], now)
            for role in held - roles:
                conn.execute(
                    sa.update(GRANT)
                    .where(
                        GRANT.c.principal == principal,
                        GRANT.c.kind == "role",
                        GRANT.c.value == role,
                        GRANT.c.revoked_at.is_(None),
                    )
                    .values(revoked_at=now)
                )

    def _grant(
        self, conn: sa.Connection, principal: str, grants: list[tuple[str, str]], now: datetime
    ) -> None:
        # (its own grants only: a role it also holds through a group is still granted to it, so
        # that leaving the group does not take the role away)
        held = {
            (g.kind, g.value)
            for g in self._grants(conn, principal)
            if g.principal == principal and g.revoked_at is None
        }
        for kind, value in grants:
            if kind == "role":
                Role(value)  # raises ValueError for an unknown role
            if (kind, value) not in held:
                conn.execute(
                    sa.insert(GRANT).values(principal=principal, kind=kind, value=value, granted_at=now)
                )
                held.add((kind, value))
