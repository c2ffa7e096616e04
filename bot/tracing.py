"""Whether traces are exported: only with the ``otel`` extra installed and
``OTEL_EXPORTER_OTLP_ENDPOINT`` set. This module imports nothing of OpenTelemetry; ``bot.otel``
does, and is imported only when this says yes."""

from __future__ import annotations

import importlib.util
import os
from typing import Protocol


def wanted() -> bool:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:  # (find_spec imports the parent package, which may be missing)
        return False


class Follower(Protocol):
    """What exports a run's spans as its events arrive (``bot.otel.RunTraces``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
