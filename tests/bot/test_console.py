"""``shipyard console`` as a person without Slack uses it: a whole approve-and-deploy
conversation through the same verbs and buttons the Slack bot has, scripted on stdin; the same
thread posts as Slack (the gate card with what it deploys, what is live and the compare link;
a failure the run goes on after, with Cancel run); the lock buttons; run messages printed while
the console waits for input; the end of the input waiting for the session's runs to settle;
and who may do what (nothing granted behind anyone's back)."""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from bot.chat import block_kit, lock_blocks
from bot.chat.environments import REVIEW_ACK, ROLLBACK
from bot.chat.verbs import BUTTONS
from bot.console import SETTLE_S
from bot.slack.bot import pressable
from tests.factory import ROOT, cli_environment, write_pipelines
from tests.pipelines import GOING_ON, gated, one_build, ship

CONSOLE_GATED = gated(compile='["sh", "-c", "echo built"]')
QUICK = one_build("quick", '["sh", "-c", "sleep 0.5; echo built"]')
FOREVER = one_build("forever", '["sleep", "60"]')
OLD, NEW = "aaaaaaa1111111", "bbbbbbb2222222"


def environment(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "shipyard.yml"
    if not config.exists():
        config.write_text("environments:\n  production: {lock_reminder: 10m}\n")
    return cli_environment(
        config=config,
        database_url=f"sqlite:///{tmp_path}/shipyard.db",
        pipelines_dir=tmp_path / "pipelines",
        work_dir=tmp_path / "work",
        poll_interval=0.05,
    )


def shipyard(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment(tmp_path),
        timeout=60,
        cwd=ROOT,
    )


def grant(tmp_path: Path, *grants: tuple[str, str]) -> None:
    for who, what in grants:
        done = shipyard(tmp_path, "access", "grant", who, what)
        assert done.returncode == 0, done.stderr


class Console:
    """``shipyard console`` in a subprocess, typed into line by line while its output is read."""

    def __init__(self, tmp_path: Path, user: str) -> None:
        self.errors = (tmp_path / "stderr.txt").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "console", "--user", user],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
            env=environment(tmp_path),
            cwd=ROOT,
        )
        self.stderr = tmp_path / "stderr.txt"
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            for line in self.process.stdout:
                self.lines.put(line)
        except ValueError:  # closed when the test ends early
            pass

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def until(self, text: str, timeout: float = 20) -> list[str]:
        """The lines printed up to the first one holding ``text``."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while not any(text in line for line in seen):
            try:
                seen.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {seen}") from None
        return seen

    def close(self) -> None:
        """End the input and wait for the console to exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0, self.stderr.read_text()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        self.errors.close()


def test_a_console_conversation_triggers_is_refused_self_approval_and_deploys(tmp_path: Path) -> None:
    write_pipelines(tmp_path, {"gated": CONSOLE_GATED})
    grant(tmp_path, ("alice", "deployer"), ("alice", "approver"), ("bob", "approver"))
    grant(tmp_path, ("bob", "group:release-managers"))
    script = textwrap.dedent(
        """\
        /deploy lsit
        /deploy run gated
        wait gated#1 waiting
        press 2
        as bob
        press 2
        wait gated#1
        /deploy status gated#1
        """
    )
    done = shipyard(tmp_path, "console", "--user", "alice", stdin=script)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "Did you mean `list`?" in out
    assert "Started gated#1" in out
    # a button keeps its number however often its message is printed again (Cancel is [1])
    assert "gated#1 waits for approval before production" in out and "[2] Approve  [3] Reject" in out
    assert "[1] Cancel" in out and "[4] Cancel" not in out
    assert "alice triggered gated#1 and cannot approve its own gate production" in out
    assert "gated#1 — succeeded" in out.split("(you are now bob)")[1]
    assert out.rstrip().endswith("gated#1: succeeded")
    assert "alice has deployer" not in out and "has no role" not in out


def test_the_console_shows_the_gate_card_slack_posts(tmp_path: Path) -> None:
    write_pipelines(tmp_path, {"ship": ship()})
    grant(tmp_path, ("alice", "deployer"), ("bob", "approver"), ("bob", "group:release-managers"))
    script = textwrap.dedent(
        f"""\
        /deploy run ship version=1.0.0 revision={OLD}
        wait ship#1 waiting
        as bob
        press 2
        wait ship#1
        as alice
        /deploy run ship version=2.0.0 revision={NEW}
        wait ship#2 waiting
        """
    )
    done = shipyard(tmp_path, "console", "--user", "alice", stdin=script)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    first, second = out.split("Started ship#2", 1)
    assert f"deploys `ship@1.0.0` (revision `{OLD}`)" in first
    assert "live in production now: nothing yet" in first
    # once decided, the card is shown again as Slack edits it: who approved, no buttons
    decided = first.split("(you are now bob)", 1)[1]
    assert "production to production approved" in decided and "✓ approved by bob at " in decided
    # the second card: what it deploys, what is live beside it and the compare link, as in Slack
    card = second.split("ship#2 waits for approval before production to production", 1)[1]
    assert "asked by alice; approvers: release-managers" in card
    assert f"deploys `ship@2.0.0` (revision `{NEW}`)" in card
    assert f"live in production now: `ship@1.0.0` (revision `{OLD}`) · ship#1 since " in card
    assert f"<https://git.example/acme/ship/compare/{OLD}...{NEW}|compare aaaaaaa…bbbbbbb>" in card
    assert out.count("ship#2 waits for approval before production") == 1


def test_a_failure_the_run_goes_on_after_offers_cancel_run_in_the_console(tmp_path: Path) -> None:
    write_pipelines(tmp_path, {"going-on": GOING_ON})
    grant(tmp_path, ("alice", "deployer"))
    with Console(tmp_path, "alice") as console:
        console.type("/deploy run going-on")
        told = "".join(console.until("] Cancel run"))
        failure = told.split("build/lint failed", 1)[1]
        assert "It may fail (`allow_failure`): the run goes on." in failure and "lint: 3 warnings" in failure
        # the same button as the run message's Cancel, so the same number
        assert "[1] Cancel run" in failure and "Retry failed jobs" not in failure
        console.type("press 1")
        console.until("going-on#1 canceled")
        console.close()
        assert "going-on#1: canceled" in "".join(console.until("going-on#1: canceled"))


def test_the_lock_buttons_work_in_the_console(tmp_path: Path) -> None:
    write_pipelines(tmp_path, {})
    grant(tmp_path, ("alice", "deployer"), ("bob", "deployer"))
    script = textwrap.dedent(
        """\
        /deploy lock production "incident 4711" for 5m
        press 1
        as bob
        /deploy lock production hotfix
        press 3
        as alice
        press 5
        as bob
        press 3
        as alice
        press 4
        /deploy locks
        """
    )
    done = shipyard(tmp_path, "console", "--user", "alice", stdin=script)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "not one of mine" not in out
    # the reminder the keeper would send (the lock expires within production's lock_reminder)
    reminder, rest = out.split("[1] Extend 1h  [2] Release", 1)
    assert "alice, your lock on production expires " in reminder and "incident 4711" in reminder
    extended, rest = rest.split("(you are now bob)", 1)
    assert "🔒 production is locked by alice" in extended and "incident 4711" in extended
    asked, rest = rest.split("(you are now alice)", 1)
    assert "[3] Ask alice to hand it over" in asked
    assert "Asked alice to hand over the lock on production; their answer comes here." in asked
    kept, rest = rest.split("(you are now bob)", 1)
    assert "✋ alice, bob asks for your lock on production (incident 4711)." in kept
    assert "[4] Hand over  [5] Keep it" in kept and "You keep the lock on production." in kept
    handed = rest.split("(you are now alice)", 1)[1]
    assert "[4] Hand over  [5] Keep it" in handed  # asked again: the same question, the same buttons
    assert "You handed the lock on production to bob." in handed
    assert "🔒 production is locked by bob" in handed.split("You handed", 1)[1]


def test_every_button_the_slack_app_answers_goes_through_the_shared_press() -> None:
    # the Slack app listens for exactly these (and Reject and a rollout's Abort, which ask for a
    # reason in a form); the console presses them through the same verbs.press
    answered_by_press = {
        block_kit.APPROVE,
        block_kit.CANCEL,
        block_kit.RETRY,
        block_kit.IGNORE,
        block_kit.FAIL,
        block_kit.LOOKS_GOOD,
        block_kit.VERIFY_ROLLBACK,
        block_kit.PROMOTE,
        block_kit.PROMOTE_FULLY,
        block_kit.PAUSE,
        block_kit.RESUME,
        block_kit.CONFIRM,
        *BUTTONS,
    }
    assert set(pressable()) == answered_by_press
    assert {*lock_blocks.ACTIONS, ROLLBACK, block_kit.ROLLBACK_ASK, REVIEW_ACK} <= set(BUTTONS)


def test_run_messages_are_printed_as_they_happen_while_the_console_waits_for_input(
    tmp_path: Path,
) -> None:
    write_pipelines(tmp_path, {"quick": QUICK})
    grant(tmp_path, ("alice", "deployer"))
    errors = (tmp_path / "stderr.txt").open("w")
    with (
        errors,
        subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "console", "--user", "alice"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=environment(tmp_path),
            cwd=ROOT,
        ) as console,
    ):
        assert console.stdin is not None and console.stdout is not None
        out = console.stdout
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            try:
                for line in out:
                    lines.put(line)
            except ValueError:  # closed when the test ends early
                pass

        threading.Thread(target=read, daemon=True).start()

        def until(text: str, timeout: float = 20) -> list[str]:
            seen: list[str] = []
            deadline = time.monotonic() + timeout
            while not any(text in line for line in seen):
                try:
                    seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    raise AssertionError(f"no {text!r} in {seen}") from None
            return seen

        try:
            console.stdin.write("/deploy run quick\n")
            console.stdin.flush()
            until("Started quick#1")
            # nothing more is typed: the run's progress still shows, up to its end
            shown = "".join(until("quick#1 succeeded in"))  # the result, as in Slack's thread
            assert "quick#1 — succeeded" in shown
            console.stdin.write("/deploy whoami\n")
            console.stdin.close()
            assert console.wait(timeout=30) == 0, (tmp_path / "stderr.txt").read_text()
            rest = "".join(until("quick#1: succeeded"))
            assert "You are alice" in rest
        finally:
            if console.poll() is None:
                console.kill()


def test_the_end_of_the_input_waits_for_the_sessions_runs_and_says_where_each_is(tmp_path: Path) -> None:
    write_pipelines(tmp_path, {"quick": QUICK, "gated": CONSOLE_GATED, "forever": FOREVER})
    script = "/deploy run quick\n/deploy run gated\n/deploy run forever\n"
    started = time.monotonic()
    done = shipyard(tmp_path, "console", stdin=script)  # the console's own user
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    end = done.stdout.rstrip().splitlines()[-3:]
    assert end == [
        "quick#1: succeeded",
        "gated#1: waiting (gate production is open)",
        "forever#1: still running; it goes on the next time Shipyard runs against this database "
        "(`shipyard serve` or `shipyard console`)",
    ]
    assert SETTLE_S <= took < SETTLE_S + 20  # it waited for quick#1, and no longer than it says


def test_the_consoles_own_user_may_deploy_for_the_session_only(tmp_path: Path) -> None:
    write_pipelines(tmp_path, {"quick": QUICK})
    done = shipyard(tmp_path, "console", stdin="/deploy whoami\n/deploy run quick\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "(you are `console`: you may deploy in this console session; nothing is granted in the "
        "database. For a lasting role: `shipyard access grant NAME deployer`)"
    )
    assert "Roles: deployer" in done.stdout and "Started quick#1" in done.stdout
    assert (
        shipyard(tmp_path, "access", "show", "console").stdout.strip()
        == "console: roles none; groups none; runner labels none"
    )
    audit = shipyard(tmp_path, "audit", "list")
    assert "grant" not in audit.stdout, audit.stdout


def test_a_named_user_without_a_role_is_refused_and_told_how_to_get_one(tmp_path: Path) -> None:
    write_pipelines(tmp_path, {"quick": QUICK})
    done = shipyard(tmp_path, "console", "--user", "carol", stdin="/deploy run quick\nas dave\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "(carol has no role here, so only what anyone may do works; an admin grants one with "
        "`shipyard access grant carol deployer`)"
    )
    assert lines[1] == "! carol has no role; trigger needs one of: admin, deployer"
    assert lines[2:] == [
        "(you are now dave)",
        "(dave has no role here, so only what anyone may do works; an admin grants one with "
        "`shipyard access grant dave deployer`)",
    ]
    assert (
        shipyard(tmp_path, "access", "show", "carol").stdout.strip()
        == "carol: roles none; groups none; runner labels none"
    )


def test_words_a_command_would_ignore_are_refused_with_its_usage(tmp_path: Path) -> None:
    """``status quick#1 quick#2`` must not answer for quick#1 alone as if that were all that
    was asked; verbs that take a reason still take every word of it."""
    write_pipelines(tmp_path, {"quick": QUICK})
    script = "\n".join(
        [
            "/deploy run quick",
            "/deploy status quick#1 quick#2",
            "/deploy whoami please",
            "/deploy envs region=eu",
            "/deploy dora production 30d extra",
            "/deploy retry quick#1 now",
            "/deploy status quick#1",
            "/deploy cancel quick#9 because it is wrong",
        ]
    )
    done = shipyard(tmp_path, "console", stdin=script + "\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "`status` does not take `quick#2`. Usage: `/deploy status <run>`" in out
    assert "`whoami` does not take `please`. Usage: `/deploy whoami`" in out
    assert "`envs` does not take `region=eu`. Usage: `/deploy envs`" in out
    assert "`dora` does not take `extra`. Usage: `/deploy dora <environment> [window]`" in out
    assert "`retry` does not take `now`. Usage: `/deploy retry <run>`" in out
    assert "Retrying" not in out and "quick#1" in out.split("`retry` does not take")[1]  # status said
    assert "No run `quick#9`" in out  # the reason's words are its own


def test_control_characters_a_job_wrote_reach_the_terminal_as_text(tmp_path: Path) -> None:
    """A job's output in a failure post could otherwise clear the screen, retitle the window or
    rewrite the clipboard (OSC 52) of the person at the console."""
    evil = one_build("evil", r'["sh", "-c", "printf \"a\\033]52;c;Zm9v\\007b\\033[2Jc\\n\"; exit 1"]')
    write_pipelines(tmp_path, {"evil": evil})
    grant(tmp_path, ("alice", "deployer"))
    with Console(tmp_path, "alice") as console:
        console.type("/deploy run evil")
        told = "".join(console.until("evil#1 failed"))
        console.close()
    assert "\x1b" not in told and "\x07" not in told
    assert r"a\x1b]52;c;Zm9v\x07b\x1b[2Jc" in told


def test_a_button_number_that_is_not_plain_digits_is_a_hint_not_the_end_of_the_console(
    tmp_path: Path,
) -> None:
    """Superscripts and other scripts' digits count as digits to Python; the console must not
    stop on them."""
    done = shipyard(tmp_path, "console", stdin="press \u00b2\npress \u0661\n/deploy whoami\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("say `/deploy help`, `press N [reason]`") == 2
    assert "Roles: deployer" in done.stdout
