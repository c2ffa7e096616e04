"""Events: what happened, appended to the log in the same transaction as the change itself.

Every status transition yields one ``Event`` named ``<subject>.<new status>`` (``job.succeeded``,
``gate.open``). A few facts that are not transitions have names of their own
(``gate.approval_added``, ``run.created``). Consumers (Slack messages, webhooks, the event
stream, ``shipyard run``) read the log by sequence number, so a crash loses no notification.

Resources outside runs append to the same log in the transaction that changes them, named
``<subject>.<what happened>``: an environment lock's ``lock.acquired``, ``lock.expired`` …,
``artifact.registered``, ``artifact.marked_bad``, ``schedule.created``, ``schedule.deleted``,
``webhook.subscribed``, ``webhook.disabled``, ``webhook.enabled``, ``webhook.unsubscribed``,
``webhook.redelivery_queued``, ``trigger.created``, ``trigger.deleted``, ``review.opened``,
``review.acknowledged``, and an environment's ``environment.health_changed`` (subject ``env``,
its from/to statuses the health states). They carry ``NO_RUN`` as their run (a review names its run in
``subject_id`` and ``data``), so whatever follows a run's events (its Slack thread, its event
stream, ``shipyard run``) sees only those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    name: str
    run_id: str
    subject: str  #: run | stage | job | gate, or a resource outside runs (lock, artifact, ...)
    subject_id: str
    at: datetime
    from_status: str | None = None
    to_status: str | None = None
    data: Mapping[str, object] = field(default_factory=dict)
    #: assigned by the store when appended; strictly increasing in commit order
    seq: int = 0


#: the ``run_id`` of an event that belongs to no run
NO_RUN = ""


def resource_event(subject: str, happened: str, subject_id: str, at: datetime, **data: object) -> Event:
    """The event of a change to a resource outside runs (``artifact.registered``, ...)."""
    return Event(
        name=f"{subject}.{happened}", run_id=NO_RUN, subject=subject, subject_id=subject_id, at=at, data=data
    )
