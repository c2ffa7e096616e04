"""Web view benchmark: a real ``shipyard serve`` (SQLite, built-in runner) and Debian's Chromium
driven by Playwright.

* **page load**: a run page whose job wrote 1 MB of log, from navigation until the whole log is
  on the page (``--loads`` times, a fresh page each time): median and p90 in ms.
* **live line**: a job prints a line with the time it was printed every ``--every`` seconds
  while the page follows it; how long until each line is on the page: median and max in ms.

    python -m bench.web

Targets (from the issue): the page with a 1 MB log loads in <= 300 ms; a new line appears
within 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench.api import TOKEN, Server
from bench.runners import call

#: the page's log text (its job is folded away when it succeeded: read, not looked at)
TEXT = "() => document.querySelector('pre.log').textContent"
ENDED = "() => document.querySelector('pre.log').textContent.endsWith('the-end\\n')"
SIZE = "() => document.querySelector('pre.log').textContent.length"
TARGET_LOAD_MS = 300.0
TARGET_LINE_MS = 1000.0
CHROMIUM = "/usr/bin/chromium"

#: 1 MB of log: 10,000 lines of 100 characters, then one saying it is the last
BIG = (
    "name: big\nstages:\n  - name: s\n    jobs: [{name: j, run: "
    "\"python3 -c \\\"import sys; sys.stdout.write(('x' * 99 + '\\\\n') * 10000 + 'the-end\\\\n')\\\"\"}]\n"
)


def _live(lines: int, every: float) -> str:
    script = f"import time\\nfor i in range({lines}):\\n    print('at', repr(time.time()), flush=True)\\n"
    script += f"    time.sleep({every})\\n"
    return f'name: live\nstages:\n  - name: s\n    jobs: [{{name: j, run: ["python3", "-c", "{script}"]}}]\n'


def _trigger(server: Server, pipeline: str) -> dict[str, object]:
    return dict(call(server, "POST", f"/pipelines/{pipeline}/runs", {}))


def _wait_done(server: Server, run_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if call(server, "GET", f"/runs/{run_id}")["status"] in ("succeeded", "failed", "canceled"):
            return
        time.sleep(0.1)
    raise SystemExit(f"run {run_id} did not finish within {timeout:.0f} s")


async def _signed_in(browser: object, server: Server) -> object:
    context = await browser.new_context()  # type: ignore[attr-defined]
    page = await context.new_page()
    await page.goto(f"{server.base}/ui/sign-in")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{server.base}/ui/runs")
    return context


async def measure(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        work = Path(tmp)
        server = Server(work, f"sqlite:///{work / f'web-{uuid.uuid4().hex[:6]}.db'}", capacity=4)
        for name, text in {"big": BIG, "live": _live(args.lines, args.every)}.items():
            (work / "pipelines" / f"{name}.yml").write_text(text)
        server.start()
        try:
            big = _trigger(server, "big")
            _wait_done(server, str(big["id"]))
            async with async_playwright() as driver:
                browser = await driver.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                context = await _signed_in(browser, server)
                url = f"{server.base}/ui/runs/big/{big['number']}"
                loads = []
                for _ in range(args.loads + 1):  # (the first warms the server's caches: not counted)
                    page = await context.new_page()  # type: ignore[attr-defined]
                    t0 = time.perf_counter()
                    await page.goto(url)
                    await page.wait_for_function(ENDED, timeout=30_000)
                    loads.append((time.perf_counter() - t0) * 1000)
                    assert await page.evaluate(SIZE) >= 1_000_000
                    await page.close()
                loads = loads[1:]

                live = _trigger(server, "live")
                page = await context.new_page()  # type: ignore[attr-defined]
                await page.goto(f"{server.base}/ui/runs/live/{live['number']}")
                seen: dict[str, float] = {}
                deadline = time.monotonic() + args.lines * args.every + 30
                while len(seen) < args.lines and time.monotonic() < deadline:
                    text = await page.evaluate(TEXT)
                    now = time.time()
                    for line in text.splitlines():
                        if line.startswith("at ") and line not in seen:
                            seen[line] = now
                    await asyncio.sleep(0.02)
                lags = [(at - float(line.split()[1])) * 1000 for line, at in seen.items()][1:]
                await browser.close()
        finally:
            server.stop()
    return loads, lags


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loads", type=int, default=20, help="page loads measured (20)")
    parser.add_argument("--lines", type=int, default=20, help="live lines measured (20)")
    parser.add_argument("--every", type=float, default=0.7, help="seconds between live lines (0.7)")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"the browser ({CHROMIUM})")
    args = parser.parse_args(argv)
    loads, lags = asyncio.run(measure(args))
    loads.sort()
    p90 = loads[int(0.9 * (len(loads) - 1))]
    load_verdict = "met" if statistics.median(loads) <= TARGET_LOAD_MS else "NOT met"
    line_verdict = "met" if lags and max(lags) <= TARGET_LINE_MS else "NOT met"
    print("| figure | median | worst (p90 / max) | target |")
    print("|---|---:|---:|---|")
    print(
        f"| run page with a 1 MB log, loaded with all of it ({len(loads)} loads) | "
        f"{statistics.median(loads):.0f} ms | {p90:.0f} ms | <= {TARGET_LOAD_MS:.0f} ms: {load_verdict} |"
    )
    if lags:
        print(
            f"| a new log line on the page ({len(lags)} lines) | {statistics.median(lags):.0f} ms | "
            f"{max(lags):.0f} ms | <= {TARGET_LINE_MS:.0f} ms: {line_verdict} |"
        )


if __name__ == "__main__":
    main()
