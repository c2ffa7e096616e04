"""``shipyard secret …`` as an operator runs it: a real process on a real database (SQLite and
PostgreSQL), the value on standard input, a key rotation that leaves the old key useless."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.secrets import SecretKeyMismatch
from storage.secrets import SecretBox, generate_key
from tests.factory import cli_environment

VALUE = "cli-S3cret-value"


def shipyard(
    url: str, cwd: Path, *args: str, key: str | None, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    settings: dict[str, object] = {"database_url": url}
    if key is not None:
        settings["secret_key"] = key
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "secret", *args],
        cwd=cwd,
        env={**cli_environment(**settings), **env},
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def ciphertext(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found: str = conn.execute(sa.text("SELECT ciphertext FROM environment_secret")).scalar_one()
            return found
    finally:
        engine.dispose()


def test_set_reads_stdin_list_names_rotate_reencrypts(db_url: str, tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    refused = shipyard(db_url, tmp_path, "set", "production", "DEPLOY_KEY", key=None, stdin=VALUE)
    assert refused.returncode == 2 and "SHIPYARD_SECRET_KEY" in refused.stderr

    done = shipyard(db_url, tmp_path, "set", "production", "DEPLOY_KEY", key=old, stdin=VALUE + "\n")
    assert done.returncode == 0, done.stderr
    assert "created" in done.stdout and VALUE not in done.stdout + done.stderr
    stored = ciphertext(db_url)
    assert VALUE not in stored and SecretBox(old).open("production", "DEPLOY_KEY", stored) == VALUE

    listed = shipyard(db_url, tmp_path, "list", "production", key=old)
    assert listed.stdout.startswith("DEPLOY_KEY\t") and VALUE not in listed.stdout

    (tmp_path / "new.key").write_text(new + "\n")
    wrong = shipyard(db_url, tmp_path, "rotate-key", "--new-key-file", "new.key", key=generate_key())
    assert wrong.returncode == 2 and "does not decrypt secret DEPLOY_KEY" in wrong.stderr
    assert "Traceback" not in wrong.stderr and ciphertext(db_url) == stored  # nothing changed

    rotated = shipyard(db_url, tmp_path, "rotate-key", "--new-key-file", "new.key", key=old)
    assert rotated.returncode == 0, rotated.stderr
    assert "1 secrets re-encrypted" in rotated.stdout
    now = ciphertext(db_url)
    assert SecretBox(new).open("production", "DEPLOY_KEY", now) == VALUE
    with pytest.raises(SecretKeyMismatch):
        SecretBox(old).open("production", "DEPLOY_KEY", now)

    by_env = shipyard(db_url, tmp_path, "rotate-key", key=new, SHIPYARD_NEW_SECRET_KEY=old)
    assert by_env.returncode == 0 and SecretBox(old).open("production", "DEPLOY_KEY", ciphertext(db_url))

    bad = shipyard(db_url, tmp_path, "list", "production", key="not-a-key")
    assert bad.returncode == 2 and "SHIPYARD_SECRET_KEY: not a secret key" in bad.stderr
    assert "not-a-key" not in bad.stderr

    gone = shipyard(db_url, tmp_path, "delete", "production", "DEPLOY_KEY", key=old)
    assert gone.returncode == 0 and "deleted" in gone.stdout
    audit = subprocess.run(
        [sys.executable, "-m", "bot.cli", "audit", "list", "--limit", "10"],
        cwd=tmp_path,
        env=cli_environment(database_url=db_url),
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "secret_set /environments/production/secrets/DEPLOY_KEY" in audit
    assert "secret_rotate_key" in audit and "secret_delete" in audit and VALUE not in audit


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_a_value_that_is_not_utf8_is_refused_whatever_the_locale(
    sqlite_url: str, tmp_path: Path, locale: str
) -> None:
    """Bytes that are not UTF-8 (a binary key piped in) could not be sent to a runner: refused,
    with no traceback, and nothing stored."""
    env = {**cli_environment(database_url=sqlite_url, secret_key=generate_key()), "LC_ALL": locale}
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "secret", "set", "production", "DEPLOY_KEY"],
        cwd=tmp_path,
        env={**env, "PYTHONUTF8": "0"},
        capture_output=True,
        timeout=60,
        input=b"\xffkey-bytes\x80\n",
    )
    assert done.returncode == 2 and b"not UTF-8 text" in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr
    engine = sa.create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM environment_secret")).scalar_one() == 0
    finally:
        engine.dispose()
