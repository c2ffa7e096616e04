"""Make the web view's screenshots in docs/screenshots/ from a real server and Chromium.

    python docs/screenshots.py            # needs /usr/bin/chromium and pip install playwright

A ``shipyard serve`` on a fresh SQLite file with two pipelines: ``shop`` builds an artifact and
deploys it to staging, then to production behind a gate; ``web`` is a canary through a command
router. It releases shop 1.0.0 and 2.0.0 (the second waits at its gate), starts a canary that
waits at 25 %, and photographs the run page, the board and the canary run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import TOKEN, Server  # noqa: E402
from core.access import Role  # noqa: E402
from storage.directory import Directory  # noqa: E402
from storage.store import SqlStore  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
CONFIG = """
environments:
  staging: {}
  production:
    routers:
      web:
        command: [sh, -c, 'echo "${SHIPYARD_ROUTER_WEIGHTS:-stable=100,canary=0}"']
        pools: {stable: [web-1], canary: [web-2]}
"""
SHOP = """
name: shop
parameters:
  - {name: version, required: true}
stages:
  - name: build
    jobs:
      - name: image
        run: |
          echo "building shop $SHIPYARD_PARAM_VERSION"; sleep 1
          for step in fetch compile test package; do echo "$step: ok"; done
          v="$SHIPYARD_PARAM_VERSION"; digest="sha256:$(printf %064d "${v//./}")"
          echo "artifact=shop@$v digest=$digest uri=oci://registry.example/shop:$v" >> "$SHIPYARD_OUTPUT"
      - name: lint
        run: echo "lint clean"
  - name: staging
    environment: staging
    jobs:
      - {name: deploy, run: 'echo "deploying shop@$SHIPYARD_ARTIFACT_VERSION to staging"; sleep 1'}
  - name: production
    environment: production
    gate: {approvers: [approver]}
    jobs:
      - {name: deploy, run: 'echo "deploying $SHIPYARD_ARTIFACT_VERSION to production"; sleep 1'}
"""
WEB = """
name: web
parameters:
  - {name: version, required: true}
stages:
  - name: production
    environment: production
    strategy:
      canary:
        router: web
        steps:
          - set_weight: 25
          - pause: {approvers: ["role:approver"]}
          - set_weight: 100
    jobs:
      - {name: deploy-canary, run: 'echo "web $SHIPYARD_PARAM_VERSION on the canary pool"'}
"""


def call(server: Server, token: str, method: str, path: str, body: object = None) -> dict[str, object]:
    request = urllib.request.Request(
        f"{server.base}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return dict(json.loads(answer.read()))
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {path}: {exc.code} {exc.read().decode()}") from None


def wait(server: Server, run_id: str, statuses: tuple[str, ...]) -> dict[str, object]:
    for _ in range(600):
        run = call(server, TOKEN, "GET", f"/runs/{run_id}")
        if run["status"] in statuses:
            return run
        time.sleep(0.1)
    raise SystemExit(f"run {run_id} never reached {statuses}")


async def shoot(server: Server, pages: dict[str, str]) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{server.base}/ui/sign-in")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        for name, path in pages.items():
            await page.goto(server.base + path)
            await page.wait_for_timeout(800)  # (the logs arrive)
            await page.screenshot(path=str(OUT / f"{name}.png"), full_page=False)
        await browser.close()


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shipyard-shots-") as tmp:
        work = Path(tmp)
        url = f"sqlite:///{work / 'shots.db'}"
        (work / "shipyard.yml").write_text(CONFIG)
        server = Server(work, url, capacity=4, env={"SHIPYARD_CONFIG": str(work / "shipyard.yml")})
        for name, text in {"shop": SHOP, "web": WEB}.items():
            (work / "pipelines" / f"{name}.yml").write_text(text)
        server.start()
        try:
            store = SqlStore(url)
            people = Directory(store)
            now = datetime.now(UTC)
            alice = people.create_token("alice", [Role.DEPLOYER], now, by="screenshots")
            bob = people.create_token("bob", [Role.APPROVER], now, by="screenshots")
            store.dispose()
            for version in ("1.0.0", "2.0.0"):
                body = {"parameters": {"version": version}}
                run = call(server, alice, "POST", "/pipelines/shop/runs", body)
                waiting = wait(server, str(run["id"]), ("waiting",))
                if version == "1.0.0":
                    path = f"/runs/{waiting['id']}/gates/production/approve"
                    call(server, bob, "POST", path, {"comment": "release notes checked"})
                    wait(server, str(run["id"]), ("succeeded",))
            shop2 = waiting
            canary = call(server, alice, "POST", "/pipelines/web/runs", {"parameters": {"version": "2.1.0"}})
            wait(server, str(canary["id"]), ("waiting",))
            asyncio.run(
                shoot(
                    server,
                    {
                        "run": f"/ui/runs/shop/{shop2['number']}",
                        "board": "/ui/environments",
                        "canary": f"/ui/runs/web/{canary['number']}",
                    },
                )
            )
        finally:
            server.stop()
    print("\n".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
