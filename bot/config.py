"""Settings: environment variables ``SHIPYARD_*`` over an optional YAML file (``SHIPYARD_CONFIG``).

Every bad value is reported by name with what was expected; nothing starts half-configured.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from core.definition import UniqueKeyLoader
from core.environments import EnvironmentPolicy, Environments
from core.labels import BUILTIN, check_labels, parse_labels

#: settings whose values an error message never quotes
SECRETS = frozenset(
    {
        "secret_key",
        "admin_token",
        "metrics_token",
        "slack_bot_token",
        "slack_signing_secret",
        "slack_app_token",
    }
)


#: ``SHIPYARD_*`` variables that are no settings: the config file's name, the CLI's, what a job
#: is given (``core.assignment``, the executor, rollouts) and the test suite's; never warned of
OTHER_VARIABLES = frozenset(
    {
        "SHIPYARD_CONFIG",
        "SHIPYARD_RUNNER_TOKEN",
        "SHIPYARD_NEW_SECRET_KEY",
        "SHIPYARD_RUN_ID",
        "SHIPYARD_RUN_NUMBER",
        "SHIPYARD_PIPELINE",
        "SHIPYARD_PIPELINE_VERSION",
        "SHIPYARD_STAGE",
        "SHIPYARD_ENVIRONMENT",
        "SHIPYARD_SOURCE_REVISION",
        "SHIPYARD_TRIGGERED_BY",
        "SHIPYARD_JOB",
        "SHIPYARD_JOB_ID",
        "SHIPYARD_ATTEMPT",
        "SHIPYARD_GATE",
        "SHIPYARD_WORKSPACE",
        "SHIPYARD_OUTPUT",
    }
)
OTHER_PREFIXES = (
    "SHIPYARD_PARAM_",
    "SHIPYARD_OUTPUT_",
    "SHIPYARD_ARTIFACT_",
    "SHIPYARD_ROUTER",
    "SHIPYARD_ROLLOUT_",
    "SHIPYARD_TEST_",
    "SHIPYARD_REQUIRE_",
    "SHIPYARD_BENCH_",
)


class ConfigError(Exception):
    """The configuration is invalid; the message lists every problem."""


class _ConfigFile(YamlConfigSettingsSource):
    """The ``SHIPYARD_CONFIG`` file, read as pipeline files are: a key written twice is refused
    with its line (PyYAML kept the last one, so a second ``environments:`` dropped the first)."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        with file_path.open(encoding="utf-8") as text:
            found = yaml.load(text, Loader=UniqueKeyLoader) or {}  # (a SafeLoader)
        if not isinstance(found, dict):
            raise ValueError("it must be a mapping of settings (database_url: …)")
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPYARD_", extra="forbid", validate_default=True)

    database_url: str = Field("sqlite:///shipyard.db", description="SQLite file or postgresql+psycopg:// URL")
    pipelines_dir: Path = Field(Path("examples/pipelines"), description="directory of pipeline YAML files")
    work_dir: Path = Field(Path(".shipyard"), description="where runs get their working directories")
    host: str = Field("127.0.0.1", description="address or host name to listen on; never empty")
    port: int = Field(8080, ge=0, le=65535)
    runner_name: str | None = Field(None, description="default: <hostname>:<port>")
    runner_capacity: int = Field(
        4, ge=0, le=256, description="jobs the built-in runner runs at once; 0 disables it"
    )
    runner_labels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="labels of the built-in runner besides `builtin` (comma-separated; docs/runners.md)",
    )
    lease_seconds: float = Field(30.0, ge=1.0, le=3600.0)
    stuck_after_seconds: float = Field(
        3600.0,
        ge=1.0,
        le=3650 * 86400,  # (a longer one overflows the date arithmetic of /deploy runs --stuck)
        description="an unfinished run unchanged this long is reported stuck (a zombie)",
    )
    poll_interval: float = Field(1.0, ge=0.05, le=60.0)
    max_log_bytes: int = Field(1 << 20, ge=1024)
    kill_grace_seconds: float = Field(5.0, ge=0.0, le=300.0)
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="text: a line for a person; json: a JSON object a line (bot/logs.py)"
    )
    admin_token: SecretStr | None = Field(
        None, description="bootstraps an admin API token (the principal `admin`) at start-up"
    )
    secret_key: SecretStr | None = Field(
        None,
        description="encrypts environment secrets (docs/secrets.md): 32 random bytes in URL-safe "
        "base64, from `shipyard secret generate-key`; without it there are no secrets",
    )
    metrics_token: SecretStr | None = Field(
        None, description="bearer token a scraper sends to GET /metrics on the main port (docs/operations.md)"
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve GET /metrics on this port of its own (on `host`) instead of the main port",
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, le=64 << 20, description="largest request body accepted")
    idempotency_hours: float = Field(
        24.0,
        ge=24.0,
        le=24 * 3650,  # (a longer one overflows the date arithmetic of the hourly purge)
        description="how long Idempotency-Key responses are kept",
    )
    measurement_keep_days: float = Field(
        14.0,
        gt=0,
        le=3650,
        description="how long health-watch measurements are kept (verifications' stay with their runs)",
    )
    idempotency_lease_seconds: float = Field(
        10.0,
        ge=1.0,
        le=300.0,
        description="a request's claim on its Idempotency-Key lapses this long after its process dies",
    )

    # -- Slack (the platform's own variable names, without our prefix) ----------------------
    slack_bot_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_BOT_TOKEN", "slack_bot_token")
    )
    slack_signing_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET", "slack_signing_secret")
    )
    slack_app_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SLACK_APP_TOKEN", "slack_app_token"),
        description="xapp-… token: connect over Socket Mode instead of receiving HTTP",
    )
    slack_api_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SLACK_API_URL", "slack_api_url"),
        description="base URL of Slack's Web API (default https://slack.com/api/)",
    )
    slack_channel: str | None = Field(
        None, description="channel for runs started outside Slack when their pipeline names none"
    )
    schedule_owner: str = Field(
        "scheduler", description="the principal that runs the schedules declared in pipeline files"
    )
    environments: Environments = Field(
        default_factory=Environments,
        description="the promotion path in order, each environment with its protection rules "
        "(core/environments.py): confirm, approvals, pipelines, branches, freezes, concurrency, …",
    )
    slack_roles: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Slack user IDs (U…) and user-group IDs (S…) mapped to roles",
    )

    # -- webhooks (docs/webhooks.md) -------------------------------------------------------
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="the URL receivers reach this server at, for links and gate callbacks "
        "(default http://<host>:<port>)",
    )

    @property
    def base_url(self) -> str:
        """Where people and receivers reach this server: ``public_url``, else its host and port."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    web_session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="how long a web view sign-in lasts (docs/web.md)"
    )
    webhook_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs and host names webhooks may reach although they are private, loopback "
        "or link-local (comma-separated); nothing by default",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=120, description="per delivery attempt")
    webhook_retry_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 28800.0],
        description="the longest wait before each retry (the wait is random below it: full jitter); "
        "after the last one a delivery is given up",
    )
    webhook_disable_after_failures: int = Field(
        100, ge=1, description="a subscription is disabled after this many failed attempts in a row"
    )
    webhook_disable_after_hours: float = Field(
        24.0, gt=0, le=24 * 3650, description="…or when every attempt failed for this long"
    )
    webhook_deliver: bool = Field(True, description="run the webhook outbox and deliveries in this process")
    webhook_keep_days: float = Field(
        30.0,
        gt=0,
        le=3650,  # (as measurement_keep_days: a longer one overflows the date arithmetic)
        description="finished deliveries (and their attempts) older than this are deleted",
    )

    @field_validator("runner_labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        return parse_labels(value) if isinstance(value, str) else value

    @field_validator("runner_labels")
    @classmethod
    def _checked_labels(cls, value: list[str]) -> list[str]:
        return check_labels(value)

    @field_validator("webhook_allow", "webhook_retry_seconds", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_allow")
    @classmethod
    def _allow_list(cls, value: list[str]) -> list[str]:
        from bot.webhooks.policy import AllowList

        AllowList.parse(value)  # names the entry that is neither an address, a CIDR nor a host
        return value

    @field_validator("webhook_retry_seconds")
    @classmethod
    def _retries(cls, value: list[float]) -> list[float]:
        if len(value) > 30 or any(not 0 < v <= 7 * 86400 for v in value):
            raise ValueError("at most 30 waits, each more than 0 and at most a week (in seconds)")
        return value

    @field_validator("secret_key")
    @classmethod
    def _secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from storage.secrets import check_key

        return SecretStr(check_key(value.get_secret_value()))

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql")) or value in (
            "sqlite:///",
            "sqlite:///:memory:",
        ):
            raise ValueError("use sqlite:///path/to/file.db or postgresql+psycopg://user@host/db")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # empty, asyncio listens on every interface: never what an unset variable meant
        if not value.strip():
            raise ValueError("give an address or host name to listen on (127.0.0.1, 0.0.0.0, ::)")
        return value.strip()

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("use DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    def environment(self, name: str) -> EnvironmentPolicy:
        return self.environments.policy(name)

    @property
    def slack_enabled(self) -> bool:
        return self.slack_bot_token is not None and (
            self.slack_signing_secret is not None or self.slack_app_token is not None
        )

    @field_validator("slack_roles")
    @classmethod
    def _slack_roles(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        known = {"viewer", "deployer", "approver", "admin"}
        for who, roles in value.items():
            if who[:1] not in ("U", "W", "S"):
                raise ValueError(f"{who!r}: use a Slack user ID (U…/W…) or user-group ID (S…)")
            if unknown := set(roles) - known:
                raise ValueError(f"{who}: unknown roles {sorted(unknown)} (roles: {sorted(known)})")
        return value

    @property
    def runner(self) -> str:
        return self.runner_name or f"{socket.gethostname()}:{self.port}"

    @property
    def builtin_labels(self) -> list[str]:
        """The built-in runner's labels: ``builtin`` and ``runner_labels``."""
        return check_labels([BUILTIN, *self.runner_labels])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("SHIPYARD_CONFIG")
        if config_file:
            sources.append(_ConfigFile(settings_cls, yaml_file=config_file))
        return tuple(sources)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``SHIPYARD_*`` variables no setting reads (names are read whatever their case), each
    with the variable of the setting it most resembles, if any: a typo is otherwise silently
    ignored. Warned of, not refused, since other tools may use the prefix."""
    known: dict[str, str] = {}  # without the prefix -> the variable as people write it
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        spelled = str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"SHIPYARD_{name.upper()}"
        known[spelled.upper().removeprefix("SHIPYARD_")] = spelled
    found = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("SHIPYARD_") or upper in OTHER_VARIABLES or upper.startswith(OTHER_PREFIXES):
            continue
        bare = upper.removeprefix("SHIPYARD_")
        if f"SHIPYARD_{bare}" == known.get(bare):
            continue
        close = difflib.get_close_matches(bare, known, n=1, cutoff=0.75)
        found.append((variable, known[close[0]] if close else None))
    return found


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, the config file and ``overrides``; ``ConfigError`` if bad."""
    config_file = os.environ.get("SHIPYARD_CONFIG")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"SHIPYARD_CONFIG: no such file: {config_file}")
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            # the setting as its variable; inside it (environments.production…) as the file spells it
            setting, *inside = [str(p) for p in error["loc"]] or [""]
            name = ".".join([f"SHIPYARD_{setting.upper()}", *inside]) if setting else "configuration"
            got = (
                f" (got {error['input']!r})"
                if "input" in error and not isinstance(error["input"], dict) and setting not in SECRETS
                else ""
            )
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown setting"
            lines.append(f"{name}: {message}{got}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except yaml.MarkedYAMLError as exc:  # one line: where, and what (a key written twice, …)
        where = f"{config_file}:{exc.problem_mark.line + 1}" if exc.problem_mark else config_file
        raise ConfigError(f"SHIPYARD_CONFIG: cannot read {where}: {exc.problem or exc}") from None
    except Exception as exc:  # a YAML file that does not parse
        raise ConfigError(f"SHIPYARD_CONFIG: cannot read {config_file}: {exc}") from None
