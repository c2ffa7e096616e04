"""Users, for the canary walkthrough in examples/canary/README.md: requests through nginx, and
every few seconds a line saying who answered them::

    python3 examples/canary/traffic.py                 # 20 requests/s to http://127.0.0.1:8100/
    14:02:11  stable 1.0.0: 36  canary 2.0.0: 4         (10 % on the canary)
    14:02:13  stable 1.0.0: 20  canary 2.0.0: 20        (50 %)

A failed request counts as ``… failed`` (the version answered 500) or ``no answer``. Each
request opens its own connection, so each one is balanced by itself, as nginx's weights say.
Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import time
from collections import Counter


def get(host: str, port: int) -> str:
    """Who answered: ``stable 1.0.0``, ``canary 2.0.0 failed`` or ``no answer (...)``."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            return conn.getresponse().read().decode().strip() or "empty answer"
        finally:
            conn.close()
    except OSError as exc:
        return f"no answer ({exc.__class__.__name__})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100, help="nginx's port (8100)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (20)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds per line (2)")
    args = parser.parse_args()
    tally: Counter[str] = Counter()
    start = next_line = time.monotonic()
    sent = 0
    while True:
        tally[get(args.host, args.port)] += 1
        sent += 1
        now = time.monotonic()
        if now >= next_line + args.every:
            total = sum(tally.values())
            canary = sum(n for who, n in tally.items() if who.startswith("canary"))
            line = "  ".join(f"{who}: {n}" for who, n in sorted(tally.items()))
            print(
                f"{time.strftime('%H:%M:%S')}  {line}    ({100 * canary / total:.0f} % on the canary)",
                flush=True,
            )
            tally.clear()
            next_line = now
        time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))


if __name__ == "__main__":
    main()
