"""Reading ``/metrics`` in tests: the exposition parsed with prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    """One scrape: every sample by name and labels; families by name."""

    samples: dict[Key, float]
    families: dict[str, str]  #: family name -> type

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[Key, float] = {}
        families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            families[family.name] = family.type
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(samples, families)

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when it is not there (a counter not yet incremented)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def names(self) -> set[str]:
        """Every sample name exported (``_total``, ``_bucket``, ``_count`` … included)."""
        return {name for name, _ in self.samples}

    def labelled(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def delta(self, before: Scrape, name: str, **labels: str) -> float:
        return self.value(name, **labels) - before.value(name, **labels)


#: the metrics token the tests' servers are started with
TOKEN = "metrics-token-for-tests"


async def fetch(client: TestClient, token: str | None = TOKEN) -> Scrape:  # type: ignore[type-arg]
    """``GET /metrics`` from a test server, with the metrics token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.get("/metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return Scrape.parse(await response.text())
