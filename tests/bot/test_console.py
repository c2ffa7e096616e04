"""``shipyard console`` as a person without Slack uses it: a whole approve-and-deploy
conversation through the same verbs and buttons the Slack bot has, scripted on stdin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

GATED = """
name: gated
stages:
  - name: build
    jobs: [{name: compile, run: ["sh", "-c", "echo built"]}]
  - name: production
    environment: production
    gate: {approvers: [release-managers]}
    jobs: [{name: deploy, run: ["true"]}]
"""


def shipyard(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SHIPYARD_DATABASE_URL": f"sqlite:///{tmp_path}/shipyard.db",
        "SHIPYARD_PIPELINES_DIR": str(tmp_path / "pipelines"),
        "SHIPYARD_WORK_DIR": str(tmp_path / "work"),
        "SHIPYARD_POLL_INTERVAL": "0.05",
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )


def test_a_console_conversation_triggers_is_refused_self_approval_and_deploys(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "gated.yml").write_text(textwrap.dedent(GATED))
    for who, what in [("alice", "deployer"), ("alice", "approver"), ("bob", "approver")]:
        assert shipyard(tmp_path, "access", "grant", who, what).returncode == 0
    assert shipyard(tmp_path, "access", "grant", "bob", "group:release-managers").returncode == 0
    script = textwrap.dedent(
        """\
        /deploy lsit
        /deploy run gated
        wait gated#1 waiting
        press 3
        as bob
        press 3
        wait gated#1
        /deploy status gated#1
        """
    )
    done = shipyard(tmp_path, "console", "--user", "alice", stdin=script)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "Did you mean `list`?" in out
    assert "Started gated#1" in out
    assert "gated#1 waits for approval before production" in out and "[3] Approve" in out
    assert "alice triggered gated#1 and cannot approve its own gate production" in out
    assert "gated#1 — succeeded" in out.split("(you are now bob)")[1]
    assert "alice has deployer" not in out
