"""Environment secrets in the database, encrypted (``core.secrets`` has the rules).

Values are sealed with Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``) under the
key in ``SHIPYARD_SECRET_KEY`` before they reach the database, and opened only when a job is
handed to its runner (``open_assignment``). The environment and name are bound to each token
(they are sealed with the value and checked on opening), so a token copied to another row does
not open there: a job cannot be given another environment's secret by moving rows.

Every change is audited with the secret's environment and name and who changed it, never its
value. ``rotate`` re-seals every secret under a new key in one transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.engine import Connection

from core.assignment import Assignment
from core.commands import CompleteJob
from core.errors import NotFound
from core.ports import AuditEntry
from core.secrets import Masker, SecretKeyMismatch, SecretsDisabled, check_name, check_value, is_utf8
from storage.store import SqlStore
from storage.tables import metadata

SECRET = metadata.tables["environment_secret"]
C = SECRET.c


def generate_key() -> str:
    return Fernet.generate_key().decode()


def check_key(key: str) -> str:
    """``key`` if it is a Fernet key (32 bytes, URL-safe base64); ``ValueError`` saying so if not."""
    try:
        Fernet(key.strip().encode())
    except (ValueError, TypeError):
        raise ValueError(
            "not a secret key: use 32 random bytes in URL-safe base64, as "
            "`shipyard secret generate-key` prints"
        ) from None
    return key.strip()


class SecretBox:
    """Seals and opens secret values under one key."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(check_key(key).encode())

    def seal(self, environment: str, name: str, value: str) -> str:
        payload = json.dumps({"environment": environment, "name": name, "value": value})
        return self._fernet.encrypt(payload.encode()).decode()

    def open(self, environment: str, name: str, token: str) -> str:
        try:
            payload = json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError):
            raise SecretKeyMismatch(
                f"SHIPYARD_SECRET_KEY does not decrypt secret {name} of {environment}: the key is not "
                "the one it was stored with (rotate keys with `shipyard secret rotate-key`)"
            ) from None
        if payload.get("environment") != environment or payload.get("name") != name:
            raise SecretKeyMismatch(f"secret {name} of {environment} was sealed for another secret")
        return str(payload["value"])


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """What anyone is told about a secret: never its value."""

    environment: str
    name: str
    updated_at: datetime
    updated_by: str


def sealed_secrets(conn: Connection, environment: str) -> dict[str, str]:
    """``environment``'s secrets by name, as stored (the claim's transaction reads them)."""
    rows = conn.execute(sa.select(C.name, C.ciphertext).where(C.environment == environment))
    return {name: token for name, token in rows}


def open_assignment(assignment: Assignment, box: SecretBox | None) -> Assignment:
    """``assignment`` as its runner gets it: its secrets decrypted into its environment and
    listed for masking. Without a key it runs without them (its log says so); with a key that
    does not open them it must not run (``refusal``)."""
    if not assignment.sealed:
        return assignment
    names = ", ".join(sorted(assignment.sealed))
    if box is None:
        notice = (
            f"shipyard: the secrets of {assignment.secrets_from} ({names}) are not given to this job: "
            "SHIPYARD_SECRET_KEY is not set\n"
        )
        return replace(assignment, sealed={}, notice=notice)
    env = dict(assignment.env)
    env_name = assignment.secrets_from or ""
    try:
        opened = {name: box.open(env_name, name, token) for name, token in assignment.sealed.items()}
    except SecretKeyMismatch as exc:
        return replace(assignment, sealed={}, refusal=exc.message)
    if unsendable := sorted(name for name, value in opened.items() if not is_utf8(value)):
        # (stored before ``check_value`` refused them; the claim would fail as it is answered)
        refusal = f"secrets {', '.join(unsendable)} of {env_name} are not UTF-8 text: set them again"
        return replace(assignment, sealed={}, refusal=refusal)
    env.update(opened)
    return replace(assignment, env=env, sealed={}, masked=tuple(opened.values()))


def mask_report(store: SqlStore, box: SecretBox | None, report: CompleteJob) -> CompleteJob:
    """``report`` with the secrets of its job's environment masked in its outputs (names and
    values) and its detail, before anything of it is stored. The runner masks what a job writes
    as it runs; this is the server's own line behind it, and the only one for a result recovered
    after a restart, when the runner no longer holds the values it was given."""
    if box is None or not (report.outputs or report.detail):
        return report
    stage, job = metadata.tables["stage"].c, metadata.tables["job"].c
    with store.reading() as tx:
        environment = tx.conn.execute(
            sa.select(stage.environment)
            .join_from(metadata.tables["job"], metadata.tables["stage"], stage.run_id == job.run_id)
            .where(job.id == report.job_id, stage.position == job.stage_index)
        ).scalar()
        sealed = sealed_secrets(tx.conn, environment) if environment else {}
    values = []
    for name, token in sealed.items():
        try:
            values.append(box.open(environment or "", name, token))
        except SecretKeyMismatch:  # (sealed under another key: that job was given none of it)
            continue
    if not values:
        return report
    masker = Masker(values)
    outputs = {masker.mask(k): masker.mask(v) for k, v in report.outputs.items()}
    return replace(report, outputs=outputs, detail=masker.mask(report.detail))


class SecretStore:
    """Set, list, delete and rotate secrets; each change audited in its own transaction."""

    def __init__(self, store: SqlStore, box: SecretBox | None) -> None:
        self.store = store
        self.box = box

    def _require_box(self) -> SecretBox:
        if self.box is None:
            raise SecretsDisabled()
        return self.box

    def set(self, environment: str, name: str, value: str, actor: str, now: datetime, channel: str) -> bool:
        """Store ``value`` (sealed) as ``name`` of ``environment``; True if it is new."""
        check_name(name)
        check_value(name, value)
        token = self._require_box().seal(environment, name, value)
        with self.store.transaction() as tx:
            conn = tx.conn
            key = sa.and_(C.environment == environment, C.name == name)
            values = {"ciphertext": token, "updated_at": now, "updated_by": actor}
            created = conn.execute(sa.update(SECRET).where(key).values(**values)).rowcount == 0
            if created:
                conn.execute(sa.insert(SECRET).values(environment=environment, name=name, **values))
            tx.audit(_entry(now, actor, channel, "secret_set", environment, name, {"created": created}))
        return created

    def delete(self, environment: str, name: str, actor: str, now: datetime, channel: str) -> SecretInfo:
        """Delete ``name`` of ``environment``; returns what it was (never the value)."""
        with self.store.transaction() as tx:
            key = sa.and_(C.environment == environment, C.name == name)
            row = tx.conn.execute(sa.select(C.updated_at, C.updated_by).where(key)).first()
            if row is None or tx.conn.execute(sa.delete(SECRET).where(key)).rowcount == 0:
                raise NotFound(f"{environment} has no secret {name}")
            tx.audit(_entry(now, actor, channel, "secret_delete", environment, name, {}))
        return SecretInfo(environment, name, row.updated_at, row.updated_by)

    def names(self, environment: str) -> list[SecretInfo]:
        with self.store.reading() as tx:
            rows = tx.conn.execute(
                sa.select(C.environment, C.name, C.updated_at, C.updated_by)
                .where(C.environment == environment)
                .order_by(C.name)
            )
            return [SecretInfo(*row) for row in rows]

    def rotate(self, new: SecretBox, actor: str, now: datetime, channel: str) -> int:
        """Re-seal every secret under ``new``, all or none; returns how many. The current key
        must open every one of them (else nothing changes and ``SecretKeyMismatch`` says which)."""
        old = self._require_box()
        with self.store.transaction() as tx:
            rows = tx.conn.execute(sa.select(C.environment, C.name, C.ciphertext)).all()
            for environment, name, token in rows:
                value = old.open(environment, name, token)
                tx.conn.execute(
                    sa.update(SECRET)
                    .where(C.environment == environment, C.name == name)
                    .values(ciphertext=new.seal(environment, name, value))
                )
            tx.audit(_entry(now, actor, channel, "secret_rotate_key", "*", "*", {"secrets": len(rows)}))
        self.box = new
        return len(rows)


def _entry(
    at: datetime,
    actor: str,
    channel: str,
    action: str,
    environment: str,
    name: str,
    detail: dict[str, object],
) -> AuditEntry:
    return AuditEntry(
        at=at,
        actor=actor,
        channel=channel,
        action=action,
        target=f"/environments/{environment}/secrets/{name}",
        outcome="accepted",
        detail={"environment": environment, "name": name, **detail},
    )
