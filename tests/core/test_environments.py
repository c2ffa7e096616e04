"""Environment policies: the configuration shape, the promotion path, validation messages, and
the pipeline and branch rules a pipeline file cannot override."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import core.environments
from bot.config import ConfigError, load_settings
from core.environments import (
    ApprovalRule,
    EnvironmentPolicy,
    Environments,
    branch_refusal,
    pipeline_refusal,
)

CONFIG = """
environments:
  dev:
  staging: {}
  production:
    confirm: true
    approvals: {from: [release-managers, role:approver, U024BE7LH], count: 2}
    pipelines: [web, "api-*"]
    branches: [main, "release/*"]
    freezes:
      - {every: "0 16 * * 5", until: "0 8 * * 1", timezone: Europe/Berlin, reason: weekend}
      - {from: "2026-12-24T00:00", to: "2026-12-27T00:00", timezone: Europe/Berlin, reason: holidays}
    on_freeze: fail
    concurrency: supersede
    rollback_skips_approvals: true
    break_glass_review: 2h
    lock_reminder: 5m
"""


def environments(text: str = CONFIG) -> Environments:
    return Environments.model_validate(yaml.safe_load(text)["environments"])


def policy(**fields: Any) -> EnvironmentPolicy:
    return EnvironmentPolicy.model_validate(fields)


# -- shape and path --------------------------------------------------------------------------


def test_the_declaration_order_is_the_promotion_path() -> None:
    envs = environments()
    assert envs.path == ["dev", "staging", "production"]  # as written, not sorted
    assert envs.previous("production") == "staging"
    assert envs.previous("staging") == "dev"
    assert envs.previous("dev") is None
    assert envs.previous("preview") is None  # not on the path
    assert envs.required_previous("production") == "staging"


def test_every_rule_is_read_from_the_file() -> None:
    production = environments().policy("production")
    assert production.confirm is True
    assert production.approvals is not None
    assert production.approvals.count == 2
    assert production.approvals.approvers == ["release-managers", "role:approver", "U024BE7LH"]
    assert production.approvals.gate_approvers == ("release-managers", "approver", "U024BE7LH")
    assert [f.reason for f in production.freezes] == ["weekend", "holidays"]
    assert (production.on_freeze, production.concurrency) == ("fail", "supersede")
    assert production.rollback_skips_approvals is True
    assert (production.break_glass_review, production.lock_reminder) == (7200.0, 300.0)


def test_an_environment_declared_empty_or_not_at_all_gets_the_defaults() -> None:
    envs = environments()
    for name in ("dev", "staging", "preview"):
        rules = envs.policy(name)
        assert rules == EnvironmentPolicy()
        assert (rules.confirm, rules.approvals, rules.pipelines, rules.branches, rules.freezes) == (
            False,
            None,
            [],
            [],
            [],
        )
        assert (rules.on_freeze, rules.concurrency, rules.requires_previous) == ("wait", "fifo", True)
        assert (rules.break_glass_review, rules.lock_reminder) == (24 * 3600.0, 15 * 60.0)
    assert "preview" not in envs
    assert environments("environments:\n").path == []


def test_promotion_order_can_be_switched_off_per_environment() -> None:
    envs = environments("environments: {staging: {}, production: {requires_previous: false}}")
    assert envs.previous("production") == "staging"
    assert envs.required_previous("production") is None


def test_the_example_in_the_module_docstring_is_valid() -> None:
    doc = core.environments.__doc__ or ""
    block = re.search(r"::\n\n(.*?)\n\n", doc, re.S)
    assert block is not None
    envs = environments(textwrap.dedent(block.group(1)))
    assert envs.path == ["staging", "production"]
    assert envs.policy("production").concurrency == "supersede"


def test_a_policy_survives_a_json_round_trip_with_its_aliases() -> None:
    """The engine may keep a snapshot of the rules a run met; ``from``/``to`` are aliases."""
    production = environments().policy("production")
    again = EnvironmentPolicy.model_validate(production.model_dump(mode="json", by_alias=True))
    assert again == production
    assert [f.describe() for f in again.freezes] == [
        '"0 16 * * 5" until "0 8 * * 1" (Europe/Berlin): weekend',
        "Thu 24 Dec 2026 00:00 CET to Sun 27 Dec 2026 00:00 CET: holidays",
    ]


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"approvals": {"from": [], "count": 1}}, "at least 1 item"),
        ({"approvals": {"count": 1}}, r"approvals\.from\n  Field required"),
        ({"approvals": {"from": ["role:boss"]}}, "'role:boss' is not a role .*role:approver"),
        ({"approvals": {"from": ["release managers"]}}, "is not a name"),
        ({"approvals": {"from": ["bob", "bob"]}}, "named twice"),
        ({"approvals": {"from": ["bob"], "count": 0}}, "greater than or equal to 1"),
        ({"aprovals": {"from": ["bob"]}}, "Extra inputs are not permitted"),
        ({"concurrency": "lifo"}, "'fifo' or 'supersede'"),
        ({"on_freeze": "skip"}, "'wait' or 'fail'"),
        ({"lock_reminder": "soon"}, "invalid duration 'soon'"),
        ({"break_glass_review": "0s"}, "invalid duration"),
        ({"branches": ["main", ""]}, "cannot be empty"),
        ({"pipelines": [" web"]}, "start or end with spaces"),
        (
            {"freezes": [{"every": "0 16 * * 5", "until": "0 8 * * 1", "timezone": "Berlin"}]},
            "unknown time zone",
        ),
        ({"freezes": [{"from": "2026-12-27", "to": "2026-12-24"}]}, "must be after `from`"),
        ({"slack_channel": "deploys-prod"}, r"slack_channel\n.*'deploys-prod' is not a Slack channel"),
        ({"slack_channel": "#Deploys Prod"}, "is not a Slack channel: give its ID .* or its name"),
    ],
)
def test_a_bad_policy_is_refused_saying_what_is_wrong(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        EnvironmentPolicy.model_validate(fields)


@pytest.mark.parametrize("channel", ["C0123ABCD", "G01PRIVATE", "#deploys-prod", "#ops_alerts"])
def test_an_environment_may_name_the_slack_channel_of_its_health_posts(channel: str) -> None:
    assert EnvironmentPolicy.model_validate({"slack_channel": channel}).slack_channel == channel
    assert EnvironmentPolicy().slack_channel is None  # (the default channel)


def test_environment_names_follow_the_pipeline_file_rules() -> None:
    with pytest.raises(ValidationError, match="'Production' is not an environment name"):
        Environments.model_validate({"staging": {}, "Production": {}})


# -- rules a pipeline cannot override --------------------------------------------------------


def test_only_the_listed_pipelines_may_deploy() -> None:
    rules = policy(pipelines=["web", "api-*"])
    assert pipeline_refusal(rules, "production", "web") is None
    assert pipeline_refusal(rules, "production", "api-orders") is None
    assert pipeline_refusal(rules, "production", "web-preview") == (
        "pipeline web-preview may not deploy to production (allowed pipelines: web, api-*)"
    )
    assert pipeline_refusal(policy(), "production", "anything") is None


def test_only_the_listed_branches_may_be_deployed() -> None:
    rules = policy(branches=["main", "release/*"])
    assert branch_refusal(rules, "production", "main") is None
    assert branch_refusal(rules, "production", "refs/heads/main") is None
    assert branch_refusal(rules, "production", "release/1.4") is None
    assert branch_refusal(rules, "production", "Main") is not None  # case-sensitive, like git
    assert branch_refusal(rules, "production", "feature/login") == (
        "branch feature/login may not be deployed to production (allowed branches: main, release/*)"
    )
    assert branch_refusal(rules, "production", None) == (
        "production only takes deployments from branches main, release/*, and this run names no branch"
    )
    assert branch_refusal(policy(), "production", None) is None


def test_an_approval_rule_defaults_to_one_approver_who_did_not_start_the_run() -> None:
    rule = ApprovalRule.model_validate({"from": ["S0123ABCD"]})
    assert (rule.count, rule.allow_self_approval) == (1, False)


# -- the service configuration ---------------------------------------------------------------


def test_the_config_file_keeps_the_order_and_confirm_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "shipyard.yml"
    config.write_text(CONFIG)
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config))
    settings = load_settings()
    assert settings.environments.path == ["dev", "staging", "production"]
    assert settings.environment("production").confirm is True
    assert settings.environment("nowhere").confirm is False


def test_a_bad_environment_in_the_config_file_names_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "shipyard.yml"
    config.write_text(
        "environments:\n  production:\n    freezes:\n      - {every: '0 16 * * 5', until: nope}\n"
    )
    monkeypatch.setenv("SHIPYARD_CONFIG", str(config))
    with pytest.raises(
        ConfigError, match=r"SHIPYARD_ENVIRONMENTS\.production\.freezes\.0\.until: cron 'nope'"
    ):
        load_settings()
