"""A real ``shipyard serve`` process for end-to-end tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.factory import cli_environment, write_pipelines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        root: Path,
        database_url: str,
        *,
        runner: str = "e2e-runner",
        capacity: int = 4,
        port: int | None = None,
        **settings: object,
    ) -> None:
        """``shipyard serve`` on ``database_url``, its files under ``root``; ``settings`` add to
        or replace the ones it is given here (as ``cli_environment`` takes them)."""
        self.root = root
        self.port = port or free_port()
        defaults: dict[str, object] = {
            "database_url": database_url,
            "pipelines_dir": write_pipelines(root, {}),
            "work_dir": root / "work",
            "runner_name": runner,
            "runner_capacity": capacity,
            "poll_interval": 0.1,
            "lease_seconds": 3,
            "kill_grace_seconds": 1,
            "log_level": "INFO",
        }
        self.env = cli_environment(**{**defaults, **settings})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"server-{self.port}.log"

    def pipeline(self, name: str, text: str) -> None:
        write_pipelines(self.root, {name: text})

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log.read_text()}")

    def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
