"""``shipyard audit verify`` and ``audit list`` as an operator runs them: real processes on a
throwaway SQLite file, whose audit log is written by real ``shipyard token``/``access``
commands (refused ones too) and then tampered with through sqlite3, as someone with the file
would."""

from __future__ import annotations

import getpass
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from core.audit import entry_hash
from core.ports import AuditEntry
from storage.migrate import alembic_config
from tests.factory import cli_environment

#: what the log holds, in order: (command, accepted); the refused ones are audited too
WRITTEN = [
    (("token", "create", "ci-deployer", "--role", "deployer"), True),
    (("token", "create", "ci-deployer", "--role", "deployer"), False),  # exists
    (("token", "revoke", "nosuch"), False),
    (("access", "grant", "bob", "group:release-managers"), True),
    (("access", "grant", "bob", "wizard"), False),  # neither a role nor a group
    (("token", "create", "ci-viewer", "--role", "bogus"), False),
    (("token", "revoke", "ci-deployer"), True),
]


def shipyard(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=db.parent,
        env=cli_environment(database_url=f"sqlite:///{db}"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database whose audit log the commands in ``WRITTEN`` wrote (entries 1 to 7)."""
    db = tmp_path_factory.mktemp("audit") / "shipyard.db"
    for args, accepted in WRITTEN:
        result = shipyard(db, *args)
        assert (result.returncode == 0) is accepted, (args, result.stderr)
    return db


@pytest.fixture
def db(written: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "shipyard.db"
    shutil.copy(written, copy)
    return copy


@pytest.fixture
def sql(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db, isolation_level=None)
    yield conn
    conn.close()


def verify(db: Path) -> tuple[int, str]:
    result = shipyard(db, "audit", "verify")
    assert "Traceback" not in result.stderr
    return result.returncode, (result.stdout + result.stderr).strip()


def broken(db: Path) -> str:
    """What ``audit verify`` says of a log that does not verify (it exits 1)."""
    code, out = verify(db)
    assert code == 1, out
    return out


def append_one(db: Path) -> None:
    """One more entry, as any command writes it (a refused token revoke)."""
    assert shipyard(db, "token", "revoke", "nosuch").returncode == 2


def test_refused_access_commands_are_audited_with_their_reason(db: Path) -> None:
    result = shipyard(db, "audit", "list", "--limit", "20")
    lines = result.stdout.splitlines()
    me = getpass.getuser()
    assert len(lines) == len(WRITTEN)
    assert all(f" {me} via cli: " in line for line in lines)
    assert [line.split(": ", 1)[1] for line in lines] == [
        "token_create ci-deployer accepted",
        "token_create ci-deployer rejected "
        "(a token named 'ci-deployer' exists; token names are not reused: pick another name)",
        "token_revoke nosuch rejected (no active token named 'nosuch')",
        "access_grant bob accepted",
        "access_grant bob rejected "
        "('wizard' is neither a role (viewer, deployer, approver, admin, runner), group:NAME nor label:NAME)",
        "token_create ci-viewer rejected "
        "(unknown role 'bogus' (roles: viewer, deployer, approver, admin, runner))",
        "token_revoke ci-deployer accepted",
    ]


def test_an_intact_log_verifies(db: Path) -> None:
    assert verify(db) == (0, "audit log intact: 7 entries verified")


def test_an_edited_middle_entry_is_named(db: Path, sql: sqlite3.Connection) -> None:
    sql.execute("UPDATE audit SET outcome = 'accepted' WHERE id = 3")
    assert "entry 3 was altered after it was written" in broken(db)


def test_a_deleted_first_entry_is_noticed_at_the_new_first(db: Path, sql: sqlite3.Connection) -> None:
    sql.execute("DELETE FROM audit WHERE id = 1")
    out = broken(db)
    assert (
        "entry 2 is the oldest entry but links to an earlier one: the entries before it were removed" in out
    )


def test_deleted_last_entries_are_noticed_by_the_checkpoint(db: Path, sql: sqlite3.Connection) -> None:
    sql.execute("DELETE FROM audit WHERE id > 4")
    out = broken(db)
    assert "the newest entries were removed: the log ends at entry 4, but the checkpoint counts 3 more" in out

    # the next entry links to where the chain really ended, so the gap stays visible
    append_one(db)
    assert "entry 5 does not link to entry 4: an entry between them was removed" in broken(db)


def test_a_deleted_checkpoint_is_reported(db: Path, sql: sqlite3.Connection) -> None:
    sql.execute("DELETE FROM audit_head")
    assert verify(db) == (1, "audit log BROKEN: its checkpoint (the audit_head row) was deleted")

    # the next append starts a new one, counting from there: the two still disagree
    append_one(db)
    assert "entry 8 is where the checkpoint says the chain ended, but not as it recorded it" in broken(db)


def test_a_blanked_hash_is_named(db: Path, sql: sqlite3.Connection) -> None:
    sql.execute("UPDATE audit SET hash = '' WHERE id = 5")
    assert "entry 5 has no hash, though the chain started before it" in broken(db)


def test_the_first_entry_altered_and_its_hash_blanked_is_named(db: Path, sql: sqlite3.Connection) -> None:
    """Blanking its hash would make entry 1 pass for one written before the chain existed."""
    sql.execute("UPDATE audit SET hash = '', outcome = 'rejected' WHERE id = 1")
    out = broken(db)
    assert "entry 1 has no hash: entry 2 links to an earlier chained entry, so entry 1 was altered" in out

    sql.execute("UPDATE audit SET outcome = 'accepted' WHERE id = 1")  # only the hash blanked
    assert "entry 1 has no hash: its hash was blanked (entry 2 links to it)" in broken(db)


def test_a_log_written_before_the_checkpoint_existed_verifies_after_the_upgrade(tmp_path: Path) -> None:
    """Upgrading records where an existing chain ends, after entries from before the chain."""
    db = tmp_path / "old.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        config = alembic_config(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0010")
        rows, prev = [], ""
        for i in range(4):
            entry = AuditEntry(
                at=datetime(2026, 11, 26, 12, i, tzinfo=UTC),
                actor="alice",
                channel="rest",
                action="approve_gate",
                target=f"web#{i}",
                outcome="accepted",
            )
            chained = i >= 1  # the first was written before the chain existed
            digest = entry_hash(prev, entry) if chained else ""
            rows.append(
                {
                    "at": f"2026-11-26 12:0{i}:00.000000",
                    **{k: getattr(entry, k) for k in ("actor", "channel", "action", "target", "outcome")},
                    "reason": "",
                    "detail": "{}",
                    "prev_hash": prev,
                    "hash": digest,
                }
            )
            prev = digest
        with engine.begin() as conn:
            conn.execute(sa.insert(sa.table("audit", *(sa.column(k) for k in rows[0]))), rows)
    finally:
        engine.dispose()

    assert verify(db) == (0, "audit log intact: 3 entries verified")
    with sqlite3.connect(db) as sql:
        sql.execute("DELETE FROM audit WHERE id = 4")
    assert "the log ends at entry 3, but the checkpoint counts 1 more, up to entry 4" in broken(db)


def test_revoking_what_a_principal_does_not_hold_is_refused_and_audited(tmp_path: Path) -> None:
    db = tmp_path / "shipyard.db"
    for args in (
        ("access", "grant", "bob", "viewer"),
        ("access", "grant", "bob", "group:release-managers"),
        ("access", "grant", "release-managers", "approver"),
    ):
        assert shipyard(db, *args).returncode == 0, args

    refusals = [
        (("admin",), "bob does not hold admin, so there is nothing to revoke (roles: approver, viewer)"),
        (
            ("approver",),
            "bob holds approver only through group release-managers: "
            "revoke group:release-managers from bob, or approver from release-managers",
        ),
        (("group:ops",), "bob is not in group ops, so there is nothing to revoke (groups: release-managers)"),
    ]
    for (what,), reason in refusals:
        result = shipyard(db, "access", "revoke", "bob", what)
        assert (result.returncode, result.stdout, result.stderr) == (2, "", f"shipyard: {reason}\n")
    assert shipyard(db, "access", "show", "bob").stdout == (
        "bob: roles approver, viewer; groups release-managers; runner labels none\n"
    )

    done = shipyard(db, "access", "revoke", "bob", "group:release-managers")
    assert (done.returncode, done.stdout) == (
        0,
        "bob: revoked group:release-managers (gates already open keep the approvers they had)\n",
    )
    again = shipyard(db, "access", "revoke", "bob", "group:release-managers")
    assert again.returncode == 2 and "bob is not in group release-managers" in again.stderr
    assert (
        shipyard(db, "access", "show", "bob").stdout == "bob: roles viewer; groups none; runner labels none\n"
    )

    lines = shipyard(db, "audit", "list").stdout.splitlines()
    assert [line.split(" via cli: ", 1)[1] for line in lines[3:]] == [
        *(f"access_revoke bob rejected ({reason})" for _, reason in refusals),
        "access_revoke bob accepted",
        "access_revoke bob rejected (bob is not in group release-managers, so there is nothing to revoke "
        "(groups: none))",
    ]
    assert shipyard(db, "audit", "verify").returncode == 0


def test_names_no_database_can_store_are_refused_in_one_line_and_audited(tmp_path: Path) -> None:
    db = tmp_path / "shipyard.db"
    not_utf8 = os.fsdecode(b"bo\xffb")  # (as a shell hands over bytes that are not UTF-8)
    refusals = [
        (("access", "grant", not_utf8, "viewer"), r"principal 'bo\udcffb'"),
        (("access", "grant", "", "viewer"), "principal ''"),
        (("access", "grant", "a\tb", "viewer"), r"principal 'a\tb'"),
        (("access", "grant", "bob", "group:" + "g" * 101), "group 'ggg"),
        (("access", "revoke", not_utf8, "viewer"), r"principal 'bo\udcffb'"),
        (("token", "create", "ci", "--role", "viewer", "--group", "\x01"), r"group '\x01'"),
        (("token", "create", not_utf8, "--role", "viewer"), r"token name 'bo\udcffb'"),
        (("token", "revoke", not_utf8), r"token name 'bo\udcffb'"),
        (("access", "show", not_utf8), r"principal 'bo\udcffb'"),
    ]
    for args, named in refusals:
        result = shipyard(db, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(f"shipyard: {named}") and result.stderr.count("\n") == 1, args

    lines = shipyard(db, "audit", "list").stdout.splitlines()
    assert [line.split(" via cli: ", 1)[1].split(" (")[0] for line in lines] == [
        "access_grant bo\ufffdb rejected",
        "access_grant  rejected",
        "access_grant a\tb rejected",
        "access_grant bob rejected",
        "access_revoke bo\ufffdb rejected",
        "token_create ci rejected",
        "token_create bo\ufffdb rejected",
        "token_revoke bo\ufffdb rejected",
    ]
    assert shipyard(db, "audit", "verify").returncode == 0
    assert shipyard(db, "token", "list").stdout == "no tokens yet (shipyard token create NAME --role ROLE)\n"


def test_audit_list_refuses_a_limit_that_is_not_a_positive_number(db: Path) -> None:
    for limit in ("99999999999999999999", "0", "-3", "x"):
        result = shipyard(db, "audit", "list", "--limit", limit)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (limit, result.stderr)
        assert f"argument --limit: '{limit}' is not a whole number from 1 to" in result.stderr
    assert len(shipyard(db, "audit", "list", "--limit", "2").stdout.splitlines()) == 2


def test_runner_labels_are_granted_with_the_token_or_later_and_audited(tmp_path: Path) -> None:
    """A runner carries only labels granted to it (an environment's secrets go by them)."""
    db = tmp_path / "shipyard.db"
    made = shipyard(
        db, "token", "create", "prod-1", "--role", "runner", "--label", "prod-eu", "--label", "linux"
    )
    assert made.returncode == 0 and made.stdout.startswith("shy_"), made.stderr
    assert "token for prod-1 (runner; labels linux, prod-eu)" in made.stderr
    assert shipyard(db, "access", "show", "prod-1").stdout == (
        "prod-1: roles runner; groups none; runner labels linux, prod-eu\n"
    )
    listed = shipyard(db, "token", "list").stdout
    assert "prod-1" in listed and listed.rstrip().endswith("labels linux,prod-eu")

    refused = [
        (
            ("token", "create", "ci", "--role", "deployer", "--label", "prod-eu"),
            "--label is for runner tokens",
        ),
        (
            ("token", "create", "eu-2", "--role", "runner", "--label", "Prod EU"),
            "'Prod EU' is not a runner label",
        ),
        (("access", "grant", "prod-1", "label:-x"), "'-x' is not a runner label"),
        (
            ("access", "revoke", "prod-1", "label:gpu"),
            "prod-1 may not carry label gpu, so there is nothing to revoke",
        ),
    ]
    for args, reason in refused:
        result = shipyard(db, *args)
        assert result.returncode == 2 and reason in result.stderr, (args, result.stderr)

    granted = shipyard(db, "access", "grant", "prod-1", "label:gpu")
    assert (
        granted.stdout
        == "prod-1: granted label:gpu (from its runner's next claim (jobs it holds run to their end))\n"
    )
    assert shipyard(db, "access", "revoke", "prod-1", "label:prod-eu").returncode == 0
    assert shipyard(db, "access", "show", "prod-1").stdout.endswith("runner labels gpu, linux\n")
    lines = [line.split(" via cli: ", 1)[1] for line in shipyard(db, "audit", "list").stdout.splitlines()]
    assert lines[0] == "token_create prod-1 accepted" and lines[-2:] == [
        "access_grant prod-1 accepted",
        "access_revoke prod-1 accepted",
    ]
    assert [line.split(" (")[0] for line in lines[1:5]] == [
        "token_create ci rejected",
        "token_create eu-2 rejected",
        "access_grant prod-1 rejected",
        "access_revoke prod-1 rejected",
    ]

    # a new secret for the same runner: its labels stay, and the change is audited
    rotated = shipyard(db, "token", "rotate", "prod-1")
    assert rotated.returncode == 0 and rotated.stdout.startswith("shy_") and rotated.stdout != made.stdout
    assert "new token for prod-1 (same roles and labels)" in rotated.stderr
    assert shipyard(db, "access", "show", "prod-1").stdout.endswith("runner labels gpu, linux\n")
    last = shipyard(db, "audit", "list", "--limit", "1").stdout
    assert last.rstrip().endswith("via cli: token_rotate prod-1 accepted")
