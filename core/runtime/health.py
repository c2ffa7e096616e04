"""Whether the database answers, as the requests and loops that use it find out.

Every trip to the database goes through the orchestrator's group commit, ``Orchestrator.db`` or
``Backend.read``, and each reports here how it went (reads only their failures: SQLite serves
readers while another process holds its write lock). The first failure to reach the database
starts an outage and is logged once (``database unreachable: <driver's words>``); the first
success after it ends the outage and is logged once with how long it lasted. Meanwhile the
failure reaches whoever asked as ``DatabaseUnreachable``: the REST API answers ``503`` with
``Retry-After``, chat says to try again shortly, and the loops log it at DEBUG and try again
on their next round, instead of each logging a traceback every second.

Used from the event loop only (reports come back from the database threads before they are
made), so it needs no lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.errors import DatabaseUnreachable

log = logging.getLogger(__name__)


class DatabaseHealth:
    def __init__(
        self, unreachable: Callable[[BaseException], str | None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: the store's judgement of a failure (``Store.unreachable``)
        self._unreachable = unreachable
        self._clock = clock
        #: when the outage under way began (monotonic), None while the database answers
        self.down_since: float | None = None
        #: what the database's driver said when the outage began
        self.error = ""

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def down_for(self) -> float:
        """Seconds since the outage under way began (0 when there is none)."""
        return 0.0 if self.down_since is None else self._clock() - self.down_since

    def now(self) -> float:
        """When a trip to the database sets out (for ``succeeded``)."""
        return self._clock()

    def succeeded(self, started: float) -> None:
        """A trip to the database that set out at ``started`` went through: an outage under way
        is over, unless the trip set out before the outage was noticed (a connection in use then
        may have finished its work; a new one would not have got through)."""
        if self.down_since is None or started < self.down_since:
            return
        lasted = self.down_for
        self.down_since = None
        log.warning("database reachable again after %.1f s", lasted)

    def failed(self, exc: BaseException) -> DatabaseUnreachable | None:
        """A trip to the database failed with ``exc``: ``DatabaseUnreachable`` to raise instead
        when the database could not be reached (the first starts an outage), None when ``exc``
        is something else and its own caller's to report."""
        if isinstance(exc, DatabaseUnreachable):  # counted where it was first seen
            return exc
        reason = self._unreachable(exc)
        if reason is None:
            return None
        if self.down_since is None:
            self.down_since = self._clock()
            self.error = reason
            log.warning("database unreachable: %s", reason)
        return _unreachable(exc)

    def classify(self, exc: BaseException) -> DatabaseUnreachable | None:
        """``exc`` as ``DatabaseUnreachable`` when it means the database could not be reached,
        else None; unlike ``failed`` it changes nothing."""
        if isinstance(exc, DatabaseUnreachable):
            return exc
        return None if self._unreachable(exc) is None else _unreachable(exc)


def _unreachable(cause: BaseException) -> DatabaseUnreachable:
    down = DatabaseUnreachable()
    down.__cause__ = cause
    return down


def log_trouble(logger: logging.Logger, exc: Exception, message: str, *args: object) -> None:
    """A failure a loop tries again after: at DEBUG while the database is unreachable (its
    ``DatabaseHealth`` says that once), else a warning with its traceback."""
    if isinstance(exc, DatabaseUnreachable):
        logger.debug(message + ": %s", *args, exc.__cause__ or exc)
    else:
        logger.warning(message, *args, exc_info=exc)
