"""Sign-in for the web view: one-time login links and server-side sessions.

A login link (``/deploy login``) holds a random secret of which only the SHA-256 is kept; it
signs its person in once, within ``LINK_TTL``: the link is spent by a conditional update, so two
browsers opening it at once get one session between them. A session is a random cookie (again
only its SHA-256 is kept) with its own CSRF token and an expiry; signing out ends it. Every
sign-in, refused sign-in and sign-out is audited with channel ``web``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from core.ports import AuditEntry
from storage.directory import token_hash
from storage.store import SqlStore
from storage.tables import metadata

LOGIN = metadata.tables["web_login"]
SESSION = metadata.tables["web_session"]
#: how long a login link may wait to be opened
LINK_TTL = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in browser: who, how they signed in, the form token, until when."""

    principal: str
    via: str
    csrf: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A new session: the cookie's value (given to the browser once, never stored) and the session."""

    cookie: str
    session: WebSession


class LinkRefused(Exception):
    """A login link that signs nobody in, and why (said on the page and in the audit log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebSessions:
    def __init__(self, store: SqlStore, lifetime: timedelta) -> None:
        self.store = store
        self.lifetime = lifetime

    def new_link(self, principal: str, now: datetime) -> str:
        """A one-time login link's secret for ``principal``, valid for ``LINK_TTL``."""
        secret = secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            tx.conn.execute(
                sa.insert(LOGIN).values(
                    token_hash=token_hash(secret),
                    principal=principal,
                    created_at=now,
                    expires_at=now + LINK_TTL,
                )
            )
            tx.audit(_entry(now, principal, "web_login_link", "accepted", "a link to sign in was made"))
        return secret

    def redeem(self, secret: str, now: datetime) -> SignedIn:
        """Spend a login link: a new session for its person, or ``LinkRefused`` (unknown,
        already used, or expired), audited either way."""
        key = token_hash(secret)
        with self.store.transaction() as tx:
            spent = tx.conn.execute(
                sa.update(LOGIN)
                .where(LOGIN.c.token_hash == key, LOGIN.c.used_at.is_(None), LOGIN.c.expires_at > now)
                .values(used_at=now)
            ).rowcount
            columns = (LOGIN.c.principal, LOGIN.c.used_at)
            row = tx.conn.execute(sa.select(*columns).where(LOGIN.c.token_hash == key)).first()
            if spent != 1 or row is None:
                reason = (
                    "this sign-in link is not one of ours"
                    if row is None
                    else "this sign-in link was used already"
                    if row.used_at is not None
                    else "this sign-in link expired"
                )
                tx.audit(_entry(now, row.principal if row else "unknown", "web_sign_in", "refused", reason))
                refused = LinkRefused(reason)
            else:
                signed = self._open(tx.conn, row.principal, "slack", now)
                tx.audit(_entry(now, row.principal, "web_sign_in", "accepted", "with a Slack login link"))
                return signed
        raise refused  # (after the refusal's audit committed)

    def sign_in_with_token(self, principal: str, now: datetime) -> SignedIn:
        """A session for the holder of an API token (checked by the caller)."""
        with self.store.transaction() as tx:
            signed = self._open(tx.conn, principal, "token", now)
            tx.audit(_entry(now, principal, "web_sign_in", "accepted", "with an API token"))
        return signed

    def refused(self, who: str, action: str, target: str, reason: str, now: datetime) -> None:
        """Audit what the web view refused before anything else could (a wrong token at sign-in,
        a role that may not lock)."""
        with self.store.transaction() as tx:
            tx.audit(_entry(now, who, action, "refused", reason, target))

    def session(self, cookie: str, now: datetime) -> WebSession | None:
        """The live session ``cookie`` names, or None (unknown, expired, or signed out)."""
        with self.store.reading() as tx:
            row = tx.conn.execute(
                sa.select(SESSION.c.principal, SESSION.c.via, SESSION.c.csrf, SESSION.c.expires_at).where(
                    SESSION.c.token_hash == token_hash(cookie),
                    SESSION.c.ended_at.is_(None),
                    SESSION.c.expires_at > now,
                )
            ).first()
        return WebSession(row.principal, row.via, row.csrf, row.expires_at) if row is not None else None

    def sign_out(self, cookie: str, now: datetime) -> bool:
        with self.store.transaction() as tx:
            row = tx.conn.execute(
                sa.update(SESSION)
                .where(SESSION.c.token_hash == token_hash(cookie), SESSION.c.ended_at.is_(None))
                .values(ended_at=now)
                .returning(SESSION.c.principal)
            ).first()
            if row is not None:
                tx.audit(_entry(now, row.principal, "web_sign_out", "accepted", ""))
        return row is not None

    def purge(self, now: datetime, limit: int) -> int:
        """Forget up to ``limit`` links and ``limit`` sessions that can no longer be used (the
        hourly housekeeping); the audit log keeps who signed in and out."""
        dead_links = sa.select(LOGIN.c.token_hash).where(LOGIN.c.expires_at <= now).limit(limit)
        ended = sa.or_(SESSION.c.expires_at <= now, SESSION.c.ended_at.is_not(None))
        dead_sessions = sa.select(SESSION.c.token_hash).where(ended).limit(limit)
        with self.store.transaction() as tx:
            links = tx.conn.execute(sa.delete(LOGIN).where(LOGIN.c.token_hash.in_(dead_links))).rowcount
            sessions = tx.conn.execute(
                sa.delete(SESSION).where(SESSION.c.token_hash.in_(dead_sessions))
            ).rowcount
        return int(links) + int(sessions)

    def _open(self, conn: sa.Connection, principal: str, via: str, now: datetime) -> SignedIn:
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + self.lifetime
        conn.execute(
            sa.insert(SESSION).values(
                token_hash=token_hash(cookie),
                principal=principal,
                via=via,
                csrf=csrf,
                created_at=now,
                expires_at=expires,
            )
        )
        return SignedIn(cookie, WebSession(principal, via, csrf, expires))


def _entry(
    at: datetime, actor: str, action: str, outcome: str, reason: str, target: str = "/ui"
) -> AuditEntry:
    return AuditEntry(
        at=at, actor=actor, channel="web", action=action, target=target, outcome=outcome, reason=reason
    )
