"""Errors the engine raises, each with a message a person can act on.

The hierarchy::

    ShipyardError
      + DefinitionError            a pipeline file is invalid (carries every problem found)
      + IllegalTransition          a state machine refused a transition
      + CommandRefused             a command was understood but the run's state does not allow it
        - NotFound                 the run, gate, pipeline or job does not exist
        - Forbidden                the caller may not do this (role, separation of duties)
        - InvalidInput             the request itself is wrong (parameters, names)
      + Conflict                   a concurrent writer changed the row first (retry the command)
      + DatabaseUnreachable        the database cannot be reached (retry after a while)

The class docstring is the default message (procrastinate's habit).
"""

from __future__ import annotations


class ShipyardError(Exception):
    """Shipyard could not do what was asked."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class DefinitionError(ShipyardError):
    """A pipeline definition is invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class IllegalTransition(ShipyardError):
    """A state machine refused a transition."""


class CommandRefused(ShipyardError):
    """The command cannot be applied in the current state."""

    #: why, for adapters that map refusals to their own codes (HTTP status, Slack wording)
    kind = "conflict"


class NotFound(CommandRefused):
    """No such resource."""

    kind = "not_found"


class Forbidden(CommandRefused):
    """The caller may not do this."""

    kind = "forbidden"


class InvalidInput(CommandRefused):
    """The request is invalid."""

    kind = "invalid"


class Conflict(ShipyardError):
    """Another writer changed this resource first; load it again and retry."""


class DatabaseUnreachable(ShipyardError):
    """The database is unreachable; try again shortly."""
