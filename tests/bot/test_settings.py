"""Settings an operator writes: a value the service cannot work with is refused by name at start-up,
never accepted to crash a worker or a command later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config import ConfigError, Settings, load_settings, unknown_variables
from core.zombies import diagnose
from storage.idempotency import IdempotencyStore
from storage.reads import Reads
from storage.store import SqlStore
from tests.core.test_engine import WEB, started


@pytest.mark.parametrize("huge", [1e9, float("inf")])
@pytest.mark.parametrize("setting", ["idempotency_hours", "stuck_after_seconds"])
def test_a_time_too_long_to_count_with_is_refused(setting: str, huge: float) -> None:
    """Meant as "forever", such a value overflowed the date arithmetic: the hourly purge of
    Idempotency-Keys, and every ``/deploy runs --stuck``."""
    with pytest.raises(ValidationError, match=setting):
        Settings(**{setting: huge})


def test_the_longest_times_accepted_still_count(sqlite_url: str) -> None:
    settings = Settings(idempotency_hours=24 * 3650, stuck_after_seconds=3650 * 86400)
    at = datetime.now(UTC)
    store = SqlStore(sqlite_url)
    try:
        assert IdempotencyStore(store, timedelta(hours=settings.idempotency_hours)).purge(at, 100) == 0
        assert Reads(store).unchanged_since(at - timedelta(seconds=settings.stuck_after_seconds)) == []
    finally:
        store.dispose()
    assert diagnose(started(WEB), at - timedelta(days=1), at, settings.stuck_after_seconds) is None


def test_a_key_written_twice_in_the_config_file_is_refused_by_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """YAML forbids it and PyYAML silently kept the last one: a second ``environments:``
    dropped every rule of the first."""
    config = tmp_path / "shipyard.yml"
    config.write_text("port: 8081\nlog_level: DEBUG\nport: 8082\n")
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"key 'port' is written twice \(first on line 1\)"):
        load_settings()


@pytest.mark.parametrize("host", ["", "  "])
def test_an_empty_host_is_refused_by_name(host: str) -> None:
    """Empty, the server listened on every interface (aiohttp's default), never what was meant."""
    with pytest.raises(ValidationError, match="host") as refused:
        Settings(host=host)
    assert "an address or host name to listen on" in str(refused.value)


def test_a_misspelled_variable_is_named_with_the_setting_it_resembles() -> None:
    environ = {
        "SHIPYARD_DATABSE_URL": "sqlite:///x.db",  # misspelled
        "shipyard_log_levl": "DEBUG",  # (variables are read whatever their case)
        "SHIPYARD_SLACK_BOT_TOKEN": "xoxb-1",  # Slack's own name has no prefix
        "SHIPYARD_PORT": "8080",  # known
        "SHIPYARD_CONFIG": "shipyard.yml",  # read besides the settings
        "SHIPYARD_RUN_ID": "r1",  # what a job is given
        "SHIPYARD_PARAM_REGION": "eu",
        "SHIPYARD_TEST_POSTGRES_URL": "postgresql+psycopg://x",
        "OTHER": "1",
    }
    assert unknown_variables(environ) == [
        ("SHIPYARD_DATABSE_URL", "SHIPYARD_DATABASE_URL"),
        ("SHIPYARD_SLACK_BOT_TOKEN", "SLACK_BOT_TOKEN"),
        ("shipyard_log_levl", "SHIPYARD_LOG_LEVEL"),
    ]
    assert unknown_variables({"SHIPYARD_COMPLETELY_ELSE": "1"}) == [("SHIPYARD_COMPLETELY_ELSE", None)]
