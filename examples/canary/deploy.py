"""The pipeline's jobs, for the canary walkthrough in examples/canary/README.md::

    python3 deploy.py canary     the new version ($SHIPYARD_PARAM_VERSION) on the canary server
    python3 deploy.py promote    the new version on the stable server (every step passed)
    python3 deploy.py abort      the canary server back to the stable server's version

A real deploy would ship an image; these tell examples/canary/service.py which version it runs
(``POST /deploy?version=X``). Each is safe to run again. Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
import urllib.request

STABLE = os.environ.get("STABLE_URL", "http://127.0.0.1:8101")
CANARY = os.environ.get("CANARY_URL", "http://127.0.0.1:8102")


def deploy(url: str, version: str) -> None:
    request = urllib.request.Request(f"{url}/deploy?version={urllib.parse.quote(version)}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        print(json.load(answer))


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "abort":
        with urllib.request.urlopen(f"{STABLE}/", timeout=10) as answer:
            stable_version = answer.read().decode().split()[1]  # "stable 1.0.0"
        deploy(CANARY, stable_version)
        return
    version = os.environ.get("SHIPYARD_PARAM_VERSION", "")
    if what not in ("canary", "promote") or not version:
        sys.exit("usage: SHIPYARD_PARAM_VERSION=X deploy.py canary|promote|abort")
    deploy(CANARY if what == "canary" else STABLE, version)


if __name__ == "__main__":
    main()
