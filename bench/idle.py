"""Idle server benchmark: the CPU a ``shipyard serve`` with nothing to do uses, with metrics
off and on (scraped every 15 s, as Prometheus would), on a fresh SQLite database with the
built-in runner and one pipeline.

Each server is started, left 5 s to finish starting (pipelines registered, the first look of
every loop), then measured for ``--seconds``: its user + system CPU from ``/proc``, all its
threads, against the wall time.

    python -m bench.idle --seconds 60

Target: 0.2 % of a core, metrics on or off.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.api import TOKEN, Server

TARGET_PCT = 0.2
SETTLE_S = 5.0
SCRAPE_EVERY_S = 15.0


def measure(metrics: bool, seconds: float) -> tuple[float, float, int]:
    """(% of a core, CPU seconds, scrapes) of an idle server over ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        work = Path(tmp)
        server = Server(work, f"sqlite:///{work / 'idle.db'}", capacity=4, metrics=metrics)
        server.start()
        try:
            time.sleep(SETTLE_S)
            cpu0, t0 = server.cpu(), time.monotonic()
            scrapes = 0
            while (left := seconds - (time.monotonic() - t0)) > 0:
                if metrics:
                    request = urllib.request.Request(
                        f"{server.base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
                    )
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        answer.read()
                        scrapes += answer.status == 200
                time.sleep(min(SCRAPE_EVERY_S, left))
            wall = time.monotonic() - t0
            cpu = server.cpu() - cpu0
        finally:
            server.stop()
    return 100 * cpu / wall, cpu, scrapes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds measured per server (60)")
    args = parser.parse_args(argv)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"bench.idle: {args.seconds:.0f} s per server; load average {load}")
    for metrics in (False, True):
        pct, cpu, scrapes = measure(metrics, args.seconds)
        what = f"metrics on ({scrapes} scrapes)" if metrics else "metrics off"
        verdict = "met" if pct <= TARGET_PCT else "NOT met"
        print(f"  {what:<26} {pct:5.2f} % of a core ({cpu:.2f} s CPU)   target <= {TARGET_PCT} %: {verdict}")


if __name__ == "__main__":
    main()
