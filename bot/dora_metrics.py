"""DORA's four keys as ``/metrics`` gauges, per environment, over the last 30 days.

Read at most once a minute (``REFRESH_S``), whatever the scrape interval: each read is one
indexed query per environment (``Reads.dora_facts``), and the figures move by deployments, not by
seconds. Every replica reads the same database, so every replica reports the same values: take
``max`` over instances, not ``sum`` (docs/operations.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.dora import DEFAULT_WINDOW, FourKeys, four_keys, parse_window
from core.errors import DatabaseUnreachable
from storage.reads import Reads

#: seconds between two reads of the figures
REFRESH_S = 60.0


class DoraCollector(Collector):
    """The last figures read, one series per environment and key, with what they rest on."""

    def __init__(self, reads: Reads, window: timedelta | None = None) -> None:
        self.reads = reads
        self.window = window or parse_window(DEFAULT_WINDOW)
        self.keys: list[FourKeys] = []
        self._read_at: float | None = None

    @property
    def due(self) -> bool:
        """Whether the last read is older than ``REFRESH_S``."""
        return self._read_at is None or time.monotonic() - self._read_at >= REFRESH_S

    def read(self) -> None:
        """Read the figures again (blocking: run it off the event loop)."""
        until = datetime.now(UTC)
        since = until - self.window
        try:
            self.keys = [
                four_keys(env, self.reads.dora_facts(env, since, until), since, until)
                for env in self.reads.environment_names()
            ]
        except DatabaseUnreachable:  # (the engine's health says so): the last figures stand
            return
        self._read_at = time.monotonic()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        window = f"{int(self.window.total_seconds() // 86400)}d"
        labels = ["environment", "window"]
        frequency = GaugeMetricFamily(
            "shipyard_dora_deployments_per_day", "Successful changes deployed per day", labels=labels
        )
        changes = GaugeMetricFamily(
            "shipyard_dora_changes",
            "Changes deployed (successful or not): what the rates rest on",
            labels=labels,
        )
        lead = GaugeMetricFamily(
            "shipyard_dora_lead_time_seconds",
            "Median from a commit to its successful deployment (absent when no commit time is known)",
            labels=labels,
        )
        failures = GaugeMetricFamily(
            "shipyard_dora_change_failure_ratio",
            "Changes that failed, failed verification, were rolled back or marked bad, over changes",
            labels=labels,
        )
        restore = GaugeMetricFamily(
            "shipyard_dora_time_to_restore_seconds",
            "Median from a failed deployment to the next that left the environment healthy",
            labels=labels,
        )
        for keys in self.keys:
            at = [keys.environment, window]
            frequency.add_metric(at, keys.deployment_frequency.per_day)
            changes.add_metric(at, keys.change_failure_rate.deployments)
            if keys.lead_time.median_s is not None:
                lead.add_metric(at, keys.lead_time.median_s)
            if keys.change_failure_rate.rate is not None:
                failures.add_metric(at, keys.change_failure_rate.rate)
            if keys.time_to_restore.median_s is not None:
                restore.add_metric(at, keys.time_to_restore.median_s)
        yield from (frequency, changes, lead, failures, restore)
