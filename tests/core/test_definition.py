"""Pipeline files: parsing, error messages that point at the problem, parameters, digests."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.definition import (
    PipelineDef,
    env_key,
    load_pipeline_file,
    parse_pipeline,
    resolve_parameters,
)
from core.errors import CommandRefused, DefinitionError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"

# The format of examples/pipelines/web.yml (commands shortened).
WEB = """
name: web
description: Build and ship the web frontend
parameters:
  - {name: ref, required: true, pattern: "^[0-9a-f]{7,40}$", description: commit to deploy}
  - {name: dry_run, type: boolean, default: false}
stages:
  - name: build
    jobs:
      - name: compile
        timeout: 10m
        run: |
          echo "building web at $SHIPYARD_PARAM_REF"
          echo "image=registry.example.com/web:$SHIPYARD_PARAM_REF" >> "$SHIPYARD_OUTPUT"
      - name: lint
        allow_failure: true
        run: |
          echo "linting"
          exit 1
  - name: staging
    environment: staging
    jobs:
      - name: deploy
        retries: 1
        run: echo "deploying $SHIPYARD_OUTPUT_BUILD_IMAGE to $SHIPYARD_ENVIRONMENT"
  - name: production
    environment: production
    gate: {approvers: [release-managers], min_approvals: 1, timeout: 4h}
    jobs:
      - name: deploy
        run: echo "deploying $SHIPYARD_OUTPUT_BUILD_IMAGE to $SHIPYARD_ENVIRONMENT"
"""


def parse(text: str, source: str = "web.yml") -> PipelineDef:
    return parse_pipeline(textwrap.dedent(text).lstrip("\n"), source)


def problems(text: str, source: str = "web.yml") -> list[str]:
    with pytest.raises(DefinitionError) as info:
        parse(text, source)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def with_parameters(*params: str) -> PipelineDef:
    lines = "\n".join(f"  - {p}" for p in params)
    return parse(f"name: app\nparameters:\n{lines}\nstages:\n  - {{name: s, jobs: [{{name: j, run: x}}]}}\n")


# -- valid files --------------------------------------------------------------------------


def test_web_example_parses_with_defaults_and_durations_in_seconds() -> None:
    web = parse(WEB)
    assert web.name == "web"
    assert [p.name for p in web.parameters] == ["ref", "dry_run"]
    ref = web.parameter("ref")
    assert ref is not None and ref.required and ref.pattern == "^[0-9a-f]{7,40}$"
    assert web.parameter("nope") is None
    assert [s.name for s in web.stages] == ["build", "staging", "production"]
    compile_, lint = web.stages[0].jobs
    assert (compile_.name, compile_.timeout, compile_.retries, compile_.allow_failure) == (
        "compile",
        600.0,
        0,
        False,
    )
    assert (lint.name, lint.timeout, lint.allow_failure) == ("lint", 3600.0, True)
    assert web.stages[1].environment == "staging" and web.stages[1].jobs[0].retries == 1
    assert web.stages[0].gate is None
    gate = web.stages[2].gate
    assert gate is not None
    assert (gate.type, gate.approvers, gate.min_approvals, gate.timeout) == (
        "manual",
        ["release-managers"],
        1,
        14400.0,
    )


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_example_is_valid(path: Path) -> None:
    assert load_pipeline_file(path).name == path.stem


def test_automated_gate_parses_with_interval() -> None:
    pipeline = parse(
        """
        name: api
        stages:
          - name: production
            gate: {type: automated, run: ./healthy.sh, interval: 5s, timeout: 2m}
            jobs: [{name: deploy, run: ./deploy.sh}]
        """
    )
    gate = pipeline.stages[0].gate
    assert gate is not None
    assert (gate.type, gate.run, gate.interval, gate.timeout) == ("automated", "./healthy.sh", 5.0, 120.0)


# -- one problem, located -----------------------------------------------------------------

ONE_STAGE = "  - name: build\n    jobs: [{name: a, run: x}]\n"

INVALID = [
    pytest.param(
        """
        name: web
        stages:
          - name: build
            jobs:
              - {name: compile, run: make}
              - {name: test, run: make test, timeout: 10x}
        """,
        "web.yml:6: stages[0].jobs[1].timeout: invalid duration '10x' (use e.g. 30s, 10m, 4h, 1h30m)",
        id="bad-duration",
    ),
    pytest.param(
        """
        name: web
        stages:
          - name: build
            jobs:
              - name: compile
                run: make
                timout: 10m
        """,
        "web.yml:7: stages[0].jobs[0].timout: unknown field (check its spelling)",
        id="unknown-field",
    ),
    pytest.param(
        """
        name: web
        stages:
          - name: build
            jobs:
              - {name: compile, run: make}
              - {name: compile, run: make again}
        """,
        "web.yml:5: stages[0].jobs: job name 'compile' is used twice",
        id="duplicate-job",
    ),
    pytest.param(
        "name: web\nstages:\n" + ONE_STAGE + ONE_STAGE,
        "web.yml:3: stages: stage name 'build' is used twice",
        id="duplicate-stage",
    ),
    pytest.param(
        "name: web\nparameters:\n  - {name: ref}\n  - {name: REF}\nstages:\n" + ONE_STAGE,
        "web.yml:3: parameters: parameter name 'REF' is used twice",
        id="duplicate-parameter-case-insensitive",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: prod\n    gate: {timeout: 4h}\n    jobs: [{name: a, run: x}]\n",
        "web.yml:4: stages[0].gate: a manual gate needs `approvers` (users or groups)",
        id="manual-gate-without-approvers",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: prod\n    gate: {approvers: [bob], on_timeout: approve}\n"
        "    jobs: [{name: a, run: x}]\n",
        "web.yml:4: stages[0].gate: `on_timeout: approve` needs a `timeout`",
        id="approve-on-timeout-without-timeout",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: prod\n    gate: {approvers: [bob], timeout: 1h, on_timeout: skip}\n"
        "    jobs: [{name: a, run: x}]\n",
        "web.yml:4: stages[0].gate.on_timeout: Input should be 'reject' or 'approve'",
        id="unknown-on-timeout",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: prod\n    gate: {approvers: [bob], run: check}\n"
        "    jobs: [{name: a, run: x}]\n",
        "web.yml:4: stages[0].gate: `run` only applies to type: automated",
        id="manual-gate-with-run",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: prod\n    gate: {type: automated, timeout: 4h}\n"
        "    jobs: [{name: a, run: x}]\n",
        "web.yml:4: stages[0].gate: an automated gate needs `run`: a command that exits 0 to pass",
        id="automated-gate-without-run",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: prod\n    gate: {type: automated, run: check}\n"
        "    jobs: [{name: a, run: x}]\n",
        "web.yml:4: stages[0].gate: an automated gate needs `timeout` (how long to keep polling)",
        id="automated-gate-without-timeout",
    ),
    pytest.param(
        "name: Web App\nstages:\n" + ONE_STAGE,
        "web.yml:1: name: 'Web App' is not allowed here: "
        "use lowercase letters, digits and '-', starting with a letter or digit",
        id="bad-pipeline-name",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: build\n    environment: Prod_EU\n    jobs: [{name: a, run: x}]\n",
        "web.yml:4: stages[0].environment: 'Prod_EU' is not allowed here: use lowercase letters",
        id="bad-environment-name",
    ),
    pytest.param(
        "name: web\nparameters:\n  - {name: 1ref}\nstages:\n" + ONE_STAGE,
        "web.yml:3: parameters[0].name: '1ref' is not allowed here: "
        "use letters, digits and '_', not starting with a digit",
        id="bad-parameter-name",
    ),
    pytest.param(
        'name: web\nparameters:\n  - {name: ref, pattern: "[a-"}\nstages:\n' + ONE_STAGE,
        "web.yml:3: parameters[0].pattern: not a valid regular expression: ",
        id="invalid-regex",
    ),
    pytest.param(
        "name: web\nparameters:\n  - {name: ref, required: true, default: main}\nstages:\n" + ONE_STAGE,
        "web.yml:3: parameters[0]: a required parameter cannot have a default",
        id="required-with-default",
    ),
    pytest.param(
        "name: web\nparameters:\n  - {name: dry, type: boolean, default: maybe}\nstages:\n" + ONE_STAGE,
        "web.yml:3: parameters[0]: dry must be true or false, got 'maybe'",
        id="default-of-wrong-type",
    ),
    pytest.param(
        "name: web\nparameters:\n  - {name: region, type: choice}\nstages:\n" + ONE_STAGE,
        "web.yml:3: parameters[0]: a choice parameter needs `choices`",
        id="choice-without-choices",
    ),
    pytest.param(
        'name: web\nstages:\n  - name: build\n    jobs: [{name: a, run: x, env: {SHIPYARD_X: "1"}}]\n',
        "web.yml:4: stages[0].jobs[0].env: 'SHIPYARD_X': names starting with SHIPYARD_ are reserved",
        id="reserved-env-name",
    ),
    pytest.param(
        "name: web\n",
        "web.yml:1: stages: required field is missing",
        id="missing-stages",
    ),
    pytest.param(
        "name: web\nstages:\n  - name: build\n    jobs: [{name: a, run: x, retries: 11}]\n",
        "web.yml:4: stages[0].jobs[0].retries: Input should be less than or equal to 10",
        id="too-many-retries",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_definition_names_file_line_field_and_problem(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "name: web\nstages:\n  - name: build: x\n",
            "web.yml:3: not valid YAML: mapping values are not allowed here",
            id="mapping-in-scalar",
        ),
        pytest.param(
            "name: web\nstages:\n\t- name: a\n",
            "web.yml:3: not valid YAML: found character '\\t' that cannot start any token",
            id="tab",
        ),
    ],
)
def test_invalid_yaml_names_the_line(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_a_key_written_twice_is_refused_not_silently_overwritten() -> None:
    """PyYAML keeps the last of two equal keys: the second ``stages:`` dropped the first's."""
    text = """
        name: web
        stages:
          - name: build
            jobs: [{name: compile, run: make}]
        stages:
          - name: deploy
            jobs: [{name: ship, run: ./ship}]
        """
    assert problems(text) == ["web.yml:5: not valid YAML: key 'stages' is written twice (first on line 2)"]
    assert problems('{"name": "web", "stages": [{"name": "a", "jobs": [], "name": "b"}]}') == [
        "web.yml:1: not valid YAML: key 'name' is written twice (first on line 1)"
    ]


def test_aliases_that_expand_beyond_any_pipeline_are_refused_at_once() -> None:
    """A "billion laughs": a few lines of aliases of aliases took minutes to walk (one of ten
    levels hung ``shipyard validate`` and the server's reading of the pipelines directory)."""
    levels = ["name: web", 'x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 7)]
    assert problems("\n".join(levels)) == [
        "web.yml: too large: more than 100000 values once its aliases are expanded"
    ]


def test_a_job_list_shared_by_many_stages_cannot_make_a_pipeline_of_countless_jobs() -> None:
    """Every entry valid and each stage named apart: 200 stages sharing 200 jobs are 40000 jobs,
    which every run of it would lay out and store."""
    jobs = "\n".join(f"      - {{name: j{i}, run: make}}" for i in range(200))
    stages = "\n".join(f"  - {{name: s{i}, jobs: *jobs}}" for i in range(1, 200))
    text = f"name: web\nstages:\n  - name: s0\n    jobs: &jobs\n{jobs}\n{stages}\n"
    assert problems(text) == ["web.yml: too large: more than 100000 values once its aliases are expanded"]


def test_nesting_the_parser_takes_but_no_pipeline_has_is_a_problem_not_a_crash() -> None:
    """Lists a few hundred deep parsed, then overflowed the stack in the checks after parsing:
    ``shipyard validate`` ended in a traceback. Whatever the depth, it is one problem."""
    for depth in range(160, 640, 40):
        found = problems(f"name: web\nstages: {'[' * depth}{']' * depth}\n")
        assert len(found) == 1 and found[0].startswith("web.yml:"), depth


def test_anchors_and_merge_keys_may_still_override_what_they_merge() -> None:
    pipeline = parse(
        """
        name: web
        stages:
          - name: build
            jobs:
              - &job {name: compile, run: make, timeout: 10m}
              - {<<: *job, name: lint}
              - &test {<<: *job, name: test, run: make test}
              - {<<: *test, name: test-again}
        """
    )
    jobs = pipeline.stages[0].jobs
    assert [(j.name, j.run, j.timeout) for j in jobs] == [
        ("compile", "make", 600.0),
        ("lint", "make", 600.0),
        ("test", "make test", 600.0),
        ("test-again", "make test", 600.0),
    ]


@pytest.mark.parametrize(
    "text", ["", "- name: web\n", "just a string\n", "42\n"], ids=["empty", "list", "string", "number"]
)
def test_a_document_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert problems(text) == ["web.yml: a pipeline must be a mapping with name and stages"]


def test_several_problems_are_reported_at_once_in_file_order() -> None:
    found = problems(
        """
        name: Web
        stages:
          - name: build
            jobs:
              - {name: compile, run: make, timeout: forever}
              - {name: lint, run: make lint, retirs: 1}
          - name: deploy
            gate: {type: manual}
            jobs: []
        """
    )
    assert [p.split(": ", 2)[:2] for p in found] == [
        ["web.yml:1", "name"],
        ["web.yml:5", "stages[0].jobs[0].timeout"],
        ["web.yml:6", "stages[0].jobs[1].retirs"],
        ["web.yml:8", "stages[1].gate"],
        ["web.yml:9", "stages[1].jobs"],
    ]
    assert "invalid duration 'forever'" in found[1]
    assert found[2].endswith("unknown field (check its spelling)")
    assert "needs `approvers`" in found[3]
    assert "at least 1 item" in found[4]


def test_file_errors_name_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("name: web\nstages:\n  - name: build\n    jobs: [{name: a, run: x, timeout: 0}]\n")
    with pytest.raises(DefinitionError) as info:
        load_pipeline_file(path)
    assert info.value.problems == [
        f"{path}:4: stages[0].jobs[0].timeout: duration must be more than 0 and at most 365d, got 0",
    ]


def test_missing_file_is_a_definition_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(DefinitionError, match="cannot read") as info:
        load_pipeline_file(path)
    assert info.value.problems[0].startswith(f"{path}: cannot read: ")


@pytest.mark.parametrize(("timeout", "shown"), [(".inf", "inf"), (".nan", "nan"), ("1000000000d", "")])
def test_gate_timeout_that_cannot_be_a_deadline_is_refused(timeout: str, shown: str) -> None:
    # such a timeout would make the engine crash computing the gate's deadline when it opens
    found = problems(
        f"name: web\nstages:\n  - name: prod\n    gate: {{approvers: [bob], timeout: {timeout}}}\n"
        "    jobs: [{name: a, run: x}]\n"
    )
    assert len(found) == 1
    assert found[0].startswith(
        "web.yml:4: stages[0].gate.timeout: duration must be more than 0 and at most 365d, got "
    )
    assert found[0].endswith(shown)


# -- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ({"ref": "abc1234"}, {"ref": "abc1234", "dry_run": "false"}),  # default filled in
        ({"ref": "abc1234", "dry_run": "yes"}, {"ref": "abc1234", "dry_run": "true"}),
        ({"ref": "abc1234", "dry_run": "ON"}, {"ref": "abc1234", "dry_run": "true"}),
        ({"ref": "abc1234", "dry_run": True}, {"ref": "abc1234", "dry_run": "true"}),
        ({"ref": "abc1234", "dry_run": "0"}, {"ref": "abc1234", "dry_run": "false"}),
        ({"ref": "abc1234", "dry_run": "no"}, {"ref": "abc1234", "dry_run": "false"}),
        ({"ref": "f" * 40}, {"ref": "f" * 40, "dry_run": "false"}),
    ],
)
def test_resolve_parameters_coerces_and_fills_defaults(
    given: dict[str, object], resolved: dict[str, str]
) -> None:
    assert resolve_parameters(parse(WEB), given) == resolved


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "parameter ref is required"),
        ({"dry_run": "true"}, "parameter ref is required"),
        ({"ref": "abc1234", "branch": "main"}, "unknown parameter 'branch' (web takes: dry_run, ref)"),
        ({"ref": "main"}, "ref='main' does not match ^[0-9a-f]{7,40}$"),
        ({"ref": "ABC1234"}, "ref='ABC1234' does not match ^[0-9a-f]{7,40}$"),
        ({"ref": "abc1234", "dry_run": "maybe"}, "dry_run must be true or false, got 'maybe'"),
        (
            {"ref": "main", "dry_run": "maybe", "x": 1},
            "unknown parameter 'x' (web takes: dry_run, ref); "
            "ref='main' does not match ^[0-9a-f]{7,40}$; dry_run must be true or false, got 'maybe'",
        ),
    ],
)
def test_resolve_parameters_refuses_with_every_reason(given: dict[str, object], message: str) -> None:
    with pytest.raises(CommandRefused) as info:
        resolve_parameters(parse(WEB), given)
    assert info.value.message == message


def test_unknown_parameter_for_a_pipeline_without_parameters() -> None:
    hello = parse("name: hello\nstages:\n" + ONE_STAGE)
    with pytest.raises(CommandRefused, match=r"unknown parameter 'who' \(hello takes: no parameters\)"):
        resolve_parameters(hello, {"who": "me"})
    assert resolve_parameters(hello, {}) == {}


@pytest.mark.parametrize(
    ("value", "resolved"),
    [("3", "3"), (4, "4"), ("2.5", "2.5"), (" 7 ", "7"), ("1e3", "1000"), ("-1", "-1")],
)
def test_number_parameter(value: object, resolved: str) -> None:
    app = with_parameters("{name: replicas, type: number, default: 2}")
    assert resolve_parameters(app, {"replicas": value}) == {"replicas": resolved}
    assert resolve_parameters(app, {}) == {"replicas": "2"}


def test_number_parameter_refuses_text() -> None:
    app = with_parameters("{name: replicas, type: number}")
    with pytest.raises(CommandRefused, match=r"^replicas must be a number, got 'three'$"):
        resolve_parameters(app, {"replicas": "three"})


def test_choice_parameter() -> None:
    app = with_parameters("{name: region, type: choice, choices: [eu-west-1, us-east-1], default: eu-west-1}")
    assert resolve_parameters(app, {}) == {"region": "eu-west-1"}
    assert resolve_parameters(app, {"region": "us-east-1"}) == {"region": "us-east-1"}
    with pytest.raises(CommandRefused) as info:
        resolve_parameters(app, {"region": "mars"})
    assert info.value.message == "region must be one of eu-west-1, us-east-1, got 'mars'"


def test_optional_parameter_without_default_is_left_out() -> None:
    app = with_parameters("{name: note}")
    assert resolve_parameters(app, {}) == {}
    assert resolve_parameters(app, {"note": 5}) == {"note": "5"}


@pytest.mark.parametrize(
    "ref",
    ["abc1234\n", "abc1234 ", "main-abc1234", "abc1234-dirty"],
    ids=["newline", "space", "prefix", "suffix"],
)
def test_pattern_must_match_the_whole_value(ref: str) -> None:
    with pytest.raises(CommandRefused) as info:
        resolve_parameters(parse(WEB), {"ref": ref})
    assert info.value.message == f"ref={ref!r} does not match ^[0-9a-f]{{7,40}}$"


def test_an_unanchored_pattern_must_still_match_the_whole_value() -> None:
    app = with_parameters('{name: tag, pattern: "v[0-9]+"}')
    assert resolve_parameters(app, {"tag": "v12"}) == {"tag": "v12"}
    with pytest.raises(CommandRefused, match=r"^tag='release-v12' does not match v\[0-9\]\+$"):
        resolve_parameters(app, {"tag": "release-v12"})


# -- digest and names ---------------------------------------------------------------------


def test_digest_is_equal_for_equal_content_whatever_the_formatting() -> None:
    reformatted = """
    # the same pipeline, written differently
    stages:
      - jobs: [{run: x, name: a, timeout: 3600}]
        name: build
    name: web
    """
    assert parse(WEB).digest() == parse(WEB).digest()
    assert parse("name: web\nstages:\n" + ONE_STAGE).digest() == parse(reformatted).digest()
    assert len(parse(WEB).digest()) == 64


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("run: x", "run: y"),
        ("name: a", "name: b"),
        ("run: x}", "run: x, timeout: 2h}"),
        ("run: x}", "run: x, allow_failure: true}"),
        ("name: build", "name: test"),
    ],
)
def test_digest_differs_for_different_content(old: str, new: str) -> None:
    text = "name: web\nstages:\n" + ONE_STAGE
    assert old in text
    assert parse(text).digest() != parse(text.replace(old, new, 1)).digest()


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("deploy-staging", "DEPLOY_STAGING"),
        ("build", "BUILD"),
        ("dry_run", "DRY_RUN"),
        ("eu-west-1", "EU_WEST_1"),
        ("a.b c", "A_B_C"),
    ],
)
def test_env_key(name: str, key: str) -> None:
    assert env_key(name) == key


def test_pipelines_with_strategies_survive_the_round_trip_through_the_database() -> None:
    """Versions are stored as their dumped definition and read back by validating it again: the
    defaults of a strategy (no initial delay, no scale-down wait) must validate as well."""
    canary = parse_pipeline(
        """name: web
stages:
  - name: production
    environment: production
    strategy:
      canary:
        router: web
        steps: [{set_weight: 10}, {analysis: {checks: [error-rate], duration: 1m}}, {pause: {}}]
    jobs: [{name: deploy, run: "true"}]
"""
    )
    blue_green = parse_pipeline(
        """name: site
stages:
  - name: production
    environment: production
    strategy: {blue_green: {router: site, preview_checks: [smoke], post_checks: [smoke]}}
    jobs: [{name: deploy, run: "true"}]
"""
    )
    for definition in (canary, blue_green):
        again = PipelineDef.model_validate(definition.model_dump())
        assert again == definition and again.digest() == definition.digest()
