"""Incoming GitHub ``push`` events: which pipeline rule a push matches and what run it asks for.

A push names its branch in ``ref`` (``refs/heads/main``) and its commit in ``after``; the
pipeline's ``triggers: - push: {branches: [...]}`` rules (glob patterns, first match wins)
decide whether it starts a run. Tag pushes and branch deletions start nothing, and neither does
a branch no rule names: those are answered 200 with the reason, so GitHub does not count them as
failed deliveries.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from core.definition import PipelineDef, parameter_text

SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
ZERO = re.compile(r"^0+$")
#: the longest branch a run stores (the generic trigger's ``branch`` takes as many)
MAX_BRANCH = 255


class NotAPush(ValueError):
    """The body is not a GitHub push payload; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class Push:
    """A push that starts a run."""

    branch: str
    revision: str
    parameters: dict[str, str]
    #: the head commit's timestamp (None when the payload has none that reads as one)
    committed_at: datetime | None = None
    #: when it was pushed, the signed ``repository.pushed_at`` (None when the payload has none)
    pushed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str


def match_push(definition: PipelineDef, payload: object) -> Push | Ignored:
    """What a GitHub push payload asks of ``definition``; ``NotAPush`` if it is not one."""
    if not isinstance(payload, Mapping):
        raise NotAPush("a push payload is a JSON object with ref and after")
    ref, after = payload.get("ref"), payload.get("after")
    if not isinstance(ref, str) or not isinstance(after, str) or not SHA.match(after):
        raise NotAPush("a push payload has ref (refs/heads/<branch>) and after (the commit SHA)")
    if payload.get("deleted") is True or ZERO.match(after):
        return Ignored(f"{ref} was deleted; a deletion starts nothing")
    if not ref.startswith("refs/heads/"):
        return Ignored(f"{ref} is not a branch; only branch pushes start runs")
    if not definition.push:
        raise NotAPush(
            f"pipeline {definition.name} has no push trigger; add `triggers: - push: {{branches: [main]}}`"
        )
    branch = ref.removeprefix("refs/heads/")
    for rule in definition.push:
        if any(fnmatch.fnmatchcase(branch, pattern) for pattern in rule.branches):
            if len(branch) > MAX_BRANCH:
                raise NotAPush(
                    f"branch {branch[:80]}… has {len(branch)} characters; a run takes at most {MAX_BRANCH}"
                )
            parameters = parameter_text(rule.parameters)
            if rule.revision_parameter:
                parameters[rule.revision_parameter] = after
            if rule.branch_parameter:
                parameters[rule.branch_parameter] = branch
            return Push(branch, after, parameters, commit_time(payload), push_time(payload))
    patterns = ", ".join(p for rule in definition.push for p in rule.branches)
    return Ignored(f"branch {branch} matches no push trigger of {definition.name} (branches: {patterns})")


def commit_time(payload: Mapping[str, object]) -> datetime | None:
    """``head_commit.timestamp`` (ISO 8601 with its offset), for DORA's lead time, in UTC;
    anything else is unknown, never guessed (also a time whose offset carries it out of the
    years a datetime holds, which could not be stored)."""
    head = payload.get("head_commit")
    stamp = head.get("timestamp") if isinstance(head, Mapping) else None
    if not isinstance(stamp, str):
        return None
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return at.astimezone(UTC) if at.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


def push_time(payload: Mapping[str, object]) -> datetime | None:
    """``repository.pushed_at``: in a push event the Unix time of the push (other events give it
    as ISO 8601, which is read too), in UTC; anything else is unknown."""
    repository = payload.get("repository")
    stamp = repository.get("pushed_at") if isinstance(repository, Mapping) else None
    try:
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            return datetime.fromtimestamp(stamp, UTC)
        if isinstance(stamp, str):
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            return at.astimezone(UTC) if at.tzinfo is not None else None
    except (ValueError, OverflowError, OSError):
        return None
    return None
