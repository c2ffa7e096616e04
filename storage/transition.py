"""The one way a row's status changes in storage: checked against its table, then written on
the status read.

``move`` asks ``core.states.check`` (an illegal move raises ``IllegalTransition`` before
anything is written) and then sends ``UPDATE … SET status = <new> WHERE <row> AND status =
<old>``. Of two writers that read the same status, exactly one matches the row; the other gets
0 and decides again on what it finds. What a command changes in a run is checked the same way
by the engine when it makes a ``Change``, and written in batches by ``SqlTx``: stages, jobs
and gates with the same ``WHERE status = <expected>`` (``storage.queries.Q.update``), the run
row on its version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from core import states
from storage.tables import metadata


def _as_is(status: str) -> Any:
    return status


def _is_bad(status: str) -> Any:
    return status == states.ArtifactStatus.BAD


@dataclass(frozen=True, slots=True)
class StatusColumn:
    """Where a resource keeps its status, and how a status is stored there."""

    table: sa.Table
    column: str
    #: the column's value for a status (artifacts keep a ``bad`` flag rather than a word)
    encode: Callable[[str], Any] = _as_is


#: every resource whose status is a column, by its table's name in ``core.states.TABLES`` (a
#: lock has none: its state is the row's presence and expiry, written on holder and ``since``)
COLUMNS: Final[Mapping[str, StatusColumn]] = {
    "run": StatusColumn(metadata.tables["run"], "status"),
    "stage": StatusColumn(metadata.tables["stage"], "status"),
    "job": StatusColumn(metadata.tables["job"], "status"),
    "gate": StatusColumn(metadata.tables["gate"], "status"),
    "artifact": StatusColumn(metadata.tables["artifact"], "bad", _is_bad),
    "webhook": StatusColumn(metadata.tables["webhook"], "status"),
    "delivery": StatusColumn(metadata.tables["webhook_delivery"], "state"),
    "slack_post": StatusColumn(metadata.tables["slack_post"], "status"),
}


def move(
    conn: Connection,
    kind: str,
    ident: str,
    where: Any,
    old: str,
    new: str,
    values: Mapping[str, Any] | None = None,
) -> int:
    """Move the rows ``where`` selects (usually one) from ``old`` to ``new``, setting
    ``values`` too, if they still have ``old``; ``IllegalTransition`` if the table forbids the
    move. Returns how many rows this writer moved (0: another writer moved them first)."""
    states.check(kind, ident, old, new)
    spec = COLUMNS[kind]
    status = spec.table.c[spec.column]
    update = (
        sa.update(spec.table)
        .where(where, status == spec.encode(old))
        .values({**(values or {}), spec.column: spec.encode(new)})
    )
    return int(conn.execute(update).rowcount)
