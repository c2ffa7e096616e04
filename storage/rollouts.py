"""What the router driver (``core.runtime.rollouts``) reads and holds: the rollouts under way,
and a lease per router so that of several replicas one sets it at a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from core.rollout import Rollout
from core.states import RunStatus, StageStatus
from storage.store import SqlStore
from storage.tables import metadata

STAGE, RUN, LEASE = metadata.tables["stage"], metadata.tables["run"], metadata.tables["router_lease"]
STATE = metadata.tables["router_state"]


def live_pools(conn: Connection, env: str) -> dict[str, str]:
    """Router → its serving pool in ``env``, for the routers a blue/green promotion switched."""
    rows = conn.execute(sa.select(STATE.c.key, STATE.c.live_pool).where(STATE.c.key.startswith(f"{env}/")))
    return {key.split("/", 1)[1]: pool for key, pool in rows}


def set_live_pool(conn: Connection, env: str, router: str, pool: str, now: datetime) -> None:
    key = f"{env}/{router}"
    done = conn.execute(sa.update(STATE).where(STATE.c.key == key).values(live_pool=pool, updated_at=now))
    if done.rowcount == 0:
        conn.execute(sa.insert(STATE).values(key=key, live_pool=pool, updated_at=now))


@dataclass(frozen=True, slots=True)
class ActiveRollout:
    """A stage rolling out, with what the driver needs to move it on."""

    run_id: str
    run_status: RunStatus
    stage_index: int
    environment: str
    rollout: Rollout

    @property
    def router_key(self) -> str:
        return f"{self.environment}/{self.rollout.router}"


class RolloutStore:
    """Each call a transaction of its own."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def active(self) -> list[ActiveRollout]:
        """Every stage rolling out (one per environment at most: few)."""
        query = (
            sa.select(STAGE.c.run_id, STAGE.c.position, STAGE.c.environment, STAGE.c.rollout, RUN.c.status)
            .join(RUN, RUN.c.id == STAGE.c.run_id)
            .where(STAGE.c.status == StageStatus.ROLLING_OUT.value)
        )
        with self.store.reading() as tx:
            rows = tx.conn.execute(query).mappings().all()
        return [
            ActiveRollout(
                run_id=r["run_id"],
                run_status=RunStatus(r["status"]),
                stage_index=r["position"],
                environment=r["environment"],
                rollout=Rollout.from_json(r["rollout"]),
            )
            for r in rows
            if r["rollout"] is not None and r["environment"] is not None
        ]

    def hold(self, key: str, holder: str, now: datetime, until: datetime) -> bool:
        """Take (or keep) the lease on router ``key`` until ``until``; False while another
        holder's lease runs."""
        with self.store.transaction() as tx:
            taken = tx.conn.execute(
                sa.update(LEASE)
                .where(LEASE.c.key == key, sa.or_(LEASE.c.holder == holder, LEASE.c.until <= now))
                .values(holder=holder, until=until)
            )
            if taken.rowcount == 1:
                return True
            try:
                with tx.conn.begin_nested():
                    tx.conn.execute(sa.insert(LEASE).values(key=key, holder=holder, until=until))
            except IntegrityError:
                return False  # another holder's lease runs
            return True

    def release(self, key: str, holder: str) -> None:
        with self.store.transaction() as tx:
            tx.conn.execute(sa.delete(LEASE).where(LEASE.c.key == key, LEASE.c.holder == holder))
