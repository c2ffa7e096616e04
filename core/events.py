"""Events: what happened, appended to the log in the same transaction as the change itself.

Every status transition yields one ``Event`` named ``<subject>.<new status>`` (``job.succeeded``,
``gate.open``). A few facts that are not transitions have names of their own
(``gate.approval_added``, ``run.created``). An environment lock's changes are events too
(``lock.acquired``, ``lock.expired`` …, subject ``lock``, run ``NO_RUN``). Consumers (Slack messages,
webhooks, the event stream, ``shipyard run``) read the log by sequence number, so a crash
loses no notification.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    name: str
    run_id: str
    subject: str  #: run | stage | job | gate | lock
    subject_id: str
    at: datetime
    from_status: str | None = None
    to_status: str | None = None
    data: Mapping[str, object] = field(default_factory=dict)
    #: assigned by the store when appended; strictly increasing in commit order
    seq: int = 0


#: the ``run_id`` of an event that belongs to no run
NO_RUN = ""
