"""Pipelines as code: the YAML format, its validation, and parameter resolution.

A pipeline file is parsed into ``PipelineDef``. Problems are reported all at once as
``file:line: field.path: what is wrong``, so ``shipyard validate`` can be fixed in one pass.
A definition's *digest* identifies its content: the same digest is the same pipeline version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.duration import parse_duration
from core.errors import DefinitionError, InvalidInput, ShipyardError
from core.labels import check_labels
from core.schedule import check_cron, zone

NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
COMPARE_URL = r"^https://\S*\{from\}\S*\{to\}\S*$"
TRUE, FALSE = frozenset({"true", "yes", "on", "1"}), frozenset({"false", "no", "off", "0"})


def _seconds(value: Any) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_seconds)]
Labels = Annotated[list[str], AfterValidator(check_labels)]


def _delay(value: Any) -> float:
    """A ``Duration`` that may also be none at all: ``0``, ``0s``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    if isinstance(value, str) and value.strip().lower() in ("0", "0s"):
        return 0.0
    return parse_duration(value)


#: a wait that may be zero (a delay before something starts)
Delay = Annotated[float, BeforeValidator(_delay)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterDef(_Strict):
    """A value the person or system triggering a run supplies."""

    name: str = Field(pattern=PARAM_NAME)
    type: Literal["string", "boolean", "number", "choice"] = "string"
    required: bool = False
    default: str | bool | float | None = None
    #: a regular expression the whole value must match
    pattern: str | None = None
    choices: list[str] | None = None
    description: str = ""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ParameterDef:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice parameter needs `choices`")
        if self.choices and self.type != "choice":
            raise ValueError("`choices` only applies to type: choice")
        if self.required and self.default is not None:
            raise ValueError("a required parameter cannot have a default")
        if self.default is not None:
            coerce_parameter(self, self.default)
        return self


class JobDef(_Strict):
    """One command; the jobs of a stage run in parallel."""

    name: str = Field(pattern=NAME)
    run: str | list[str] = Field(min_length=1)
    timeout: Duration = 3600.0
    retries: int = Field(default=0, ge=0, le=10)
    allow_failure: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    #: labels a runner must carry to take this job (``core.labels``)
    runs_on: Labels = Field(default_factory=list)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(PARAM_NAME, key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("SHIPYARD_"):
                raise ValueError(f"{key!r}: names starting with SHIPYARD_ are reserved")
        return value


class GateDef(_Strict):
    """A checkpoint before a stage: people approve it, a command must pass, or (external) a
    webhook subscriber calls back with the verdict."""

    type: Literal["manual", "automated", "external"] = "manual"
    approvers: list[str] = Field(default_factory=list)
    min_approvals: int = Field(default=1, ge=1, le=20)
    #: may the person who triggered the run approve it? (separation of duties says no)
    allow_self_approval: bool = False
    timeout: Duration | None = None
    #: what the timeout means for a manual gate: `reject` (the run fails, saying so) or
    #: `approve` (a soak gate: nobody objected in time, so the stage goes on)
    on_timeout: Literal["reject", "approve"] = "reject"
    run: str | list[str] | None = None
    interval: Duration = 30.0
    #: remind the approvers in the run's thread this often while the gate waits (manual gates)
    remind_every: Duration | None = None

    @model_validator(mode="after")
    def _by_type(self) -> GateDef:
        if self.type == "manual":
            if not self.approvers:
                raise ValueError("a manual gate needs `approvers` (users or groups)")
            if self.run is not None:
                raise ValueError("`run` only applies to type: automated")
            if self.on_timeout == "approve" and self.timeout is None:
                raise ValueError("`on_timeout: approve` needs a `timeout`")
        elif self.type == "external":
            if self.run is not None or self.approvers:
                raise ValueError("an external gate takes no `run` or `approvers`: a webhook calls back")
            if self.timeout is None:
                raise ValueError("an external gate needs `timeout` (how long to wait for the callback)")
        else:
            if not self.run:
                raise ValueError("an automated gate needs `run`: a command that exits 0 to pass")
            if self.timeout is None:
                raise ValueError("an automated gate needs `timeout` (how long to keep polling)")
        return self


class PauseDef(_Strict):
    """Hold the traffic where it is: for ``duration``, or (none given) until a person promotes.
    An open-ended pause is a gate: ``approvers`` (default: the environment's approval rule)
    clear it, and separation of duties applies."""

    duration: Duration | None = None
    approvers: list[str] = Field(default_factory=list)
    allow_self_approval: bool = False

    @model_validator(mode="after")
    def _approvers_wait(self) -> PauseDef:
        if self.duration is not None and self.approvers:
            raise ValueError("approvers clear an open-ended pause: drop duration or approvers")
        return self


class AnalysisStepDef(_Strict):
    """Measure the environment's ``checks`` (declared in the service configuration) for
    ``duration``, with Argo Rollouts' limits (``core/analysis.py``)."""

    checks: list[str] = Field(min_length=1)
    duration: Duration
    #: wait this long before the first measurement (then measure for ``duration``)
    initial_delay: Delay = 0.0
    failure_limit: int = Field(default=1, ge=1, le=100)
    inconclusive_limit: int = Field(default=1, ge=1, le=100)
    consecutive_error_limit: int = Field(default=5, ge=1, le=100)


class CanaryStepDef(_Strict):
    """One step of a canary: exactly one of ``set_weight`` (the canary's share of traffic, in
    percent), ``pause`` or ``analysis``."""

    set_weight: int | None = Field(default=None, ge=0, le=100)
    pause: PauseDef | None = None
    analysis: AnalysisStepDef | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> CanaryStepDef:
        kinds = [k for k in ("set_weight", "pause", "analysis") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a canary step is exactly one of set_weight, pause or analysis")
        return self

    @property
    def kind(self) -> Literal["set_weight", "pause", "analysis"]:
        if self.set_weight is not None:
            return "set_weight"
        return "pause" if self.pause is not None else "analysis"


class CanaryDef(_Strict):
    """Move traffic to the new version step by step through ``router`` (an environment's
    router, declared in the service configuration): the stage's jobs put the new version on
    the router's ``canary`` servers; ``promote`` jobs put it on the ``stable`` ones once every
    step passed; ``abort`` jobs clean up after traffic went back to stable."""

    router: str = Field(pattern=NAME)
    steps: list[CanaryStepDef] = Field(min_length=1)
    promote: list[JobDef] = Field(default_factory=list)
    abort: list[JobDef] = Field(default_factory=list)

    @field_validator("steps")
    @classmethod
    def _weights_increase(cls, steps: list[CanaryStepDef]) -> list[CanaryStepDef]:
        last = 0
        for i, step in enumerate(steps, 1):
            if step.set_weight is None:
                continue
            if step.set_weight <= last:
                raise ValueError(
                    f"step {i}: set_weight {step.set_weight} does not increase the canary's weight "
                    f"(it is {last} before this step); weights go up, 1 to 100"
                )
            last = step.set_weight
        if last == 0:
            raise ValueError("no step sends the canary any traffic: add a set_weight above 0")
        return steps


class BlueGreenDef(_Strict):
    """Two colours behind ``router`` (pools such as ``blue`` and ``green``): the stage's jobs put
    the new version on the idle colour (``SHIPYARD_ROLLOUT_POOL`` names it); ``preview_checks``
    measure it for ``preview_for``; the switch moves all traffic in one router change, after
    ``auto_promote`` or when a person promotes; ``post_checks`` measure it for ``post_for`` and a
    failure switches back; ``scale_down`` jobs retire the old colour ``scale_down_after`` the
    switch (``SHIPYARD_ROLLOUT_RETIRED`` names it)."""

    router: str = Field(pattern=NAME)
    preview_checks: list[str] = Field(default_factory=list)
    preview_for: Duration = 60.0
    #: switch this long after the preview passed; none: a person promotes (a gate)
    auto_promote: Duration | None = None
    post_checks: list[str] = Field(default_factory=list)
    post_for: Duration = 300.0
    scale_down_after: Delay = 0.0
    scale_down: list[JobDef] = Field(default_factory=list)
    #: who may promote when nothing promotes automatically (default: the environment's rule)
    approvers: list[str] = Field(default_factory=list)
    allow_self_approval: bool = False

    def steps(self) -> list[CanaryStepDef]:
        """The rollout's steps: the canary's machinery with the new colour as the canary."""
        steps: list[CanaryStepDef] = []
        if self.preview_checks:
            steps.append(
                CanaryStepDef(analysis=AnalysisStepDef(checks=self.preview_checks, duration=self.preview_for))
            )
        if self.auto_promote is not None:
            steps.append(CanaryStepDef(pause=PauseDef(duration=self.auto_promote)))
        else:
            pause = PauseDef(approvers=self.approvers, allow_self_approval=self.allow_self_approval)
            steps.append(CanaryStepDef(pause=pause))
        steps.append(CanaryStepDef(set_weight=100))
        if self.post_checks:
            steps.append(
                CanaryStepDef(analysis=AnalysisStepDef(checks=self.post_checks, duration=self.post_for))
            )
        return steps


class StrategyDef(_Strict):
    """How a deploy stage moves traffic to the new version (none: all at once): exactly one of
    ``canary`` or ``blue_green``."""

    canary: CanaryDef | None = None
    blue_green: BlueGreenDef | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StrategyDef:
        if (self.canary is None) == (self.blue_green is None):
            raise ValueError("a strategy is exactly one of canary or blue_green")
        return self

    @property
    def kind(self) -> Literal["canary", "blue_green"]:
        return "canary" if self.canary is not None else "blue_green"

    @property
    def router(self) -> str:
        chosen = self.canary or self.blue_green
        assert chosen is not None
        return chosen.router

    @property
    def steps(self) -> list[CanaryStepDef]:
        if self.canary is not None:
            return self.canary.steps
        assert self.blue_green is not None
        return self.blue_green.steps()

    @property
    def promote_jobs(self) -> list[JobDef]:
        """Run once every step passed: the canary's ``promote``, blue/green's ``scale_down``."""
        if self.canary is not None:
            return self.canary.promote
        assert self.blue_green is not None
        return self.blue_green.scale_down

    @property
    def abort_jobs(self) -> list[JobDef]:
        return self.canary.abort if self.canary is not None else []


class StageDef(_Strict):
    """A phase of the pipeline; stages run one after another."""

    name: str = Field(pattern=NAME)
    environment: str | None = Field(default=None, pattern=NAME)
    gate: GateDef | None = None
    jobs: list[JobDef] = Field(min_length=1)
    #: a progressive rollout through a traffic router (``core/rollout.py``)
    strategy: StrategyDef | None = None
    #: labels a runner must carry to take any job of this stage (``core.labels``)
    runs_on: Labels = Field(default_factory=list)

    @field_validator("jobs")
    @classmethod
    def _unique_jobs(cls, jobs: list[JobDef]) -> list[JobDef]:
        _no_duplicates("job", [j.name for j in jobs])
        return jobs

    @model_validator(mode="after")
    def _strategy_deploys(self) -> StageDef:
        if self.strategy is not None:
            if self.environment is None:
                raise ValueError("strategy: a rollout needs the stage's environment (its router lives there)")
            _no_duplicates("job", [j.name for j in self.all_jobs])
        return self

    @property
    def all_jobs(self) -> list[JobDef]:
        """The stage's jobs, then its strategy's ``promote`` (or ``scale_down``) and ``abort``
        jobs, as runs lay them out (``core.model.new_run_state``: a job's index points in here)."""
        if self.strategy is None:
            return self.jobs
        return [*self.jobs, *self.strategy.promote_jobs, *self.strategy.abort_jobs]

    def phase_of(self, index: int) -> Literal["", "promote", "abort"]:
        """Which part of the stage job ``index`` belongs to ("": its own jobs)."""
        if index < len(self.jobs) or self.strategy is None:
            return ""
        return "promote" if index < len(self.jobs) + len(self.strategy.promote_jobs) else "abort"


class ScheduleDef(_Strict):
    """``triggers: - schedule: {cron: "0 2 * * 1-5", timezone: Europe/Berlin, parameters: {…}}``"""

    cron: str
    timezone: str = "UTC"
    parameters: dict[str, str | bool | int | float] = Field(default_factory=dict)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        # a definition read back from the database keeps the expression it was stored with
        stored = not (info.context or {}).get("new")
        try:
            return check_cron(value, stored=stored)
        except ShipyardError as exc:
            raise ValueError(exc.message) from None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zone(value)
        except ShipyardError as exc:
            raise ValueError(exc.message) from None
        return value


class TriggerDef(_Strict):
    schedule: ScheduleDef


class PushDef(_Strict):
    """``triggers: - push: {branches: [main, "release/*"]}``: a signed GitHub ``push`` to a
    matching branch (glob patterns) starts a run of the pushed commit (its ``revision``)."""

    branches: list[str] = Field(min_length=1)
    parameters: dict[str, str | bool | int | float] = Field(default_factory=dict)
    #: parameters that receive the pushed commit's SHA and the branch name, if the pipeline wants them
    revision_parameter: str | None = Field(default=None, pattern=PARAM_NAME)
    branch_parameter: str | None = Field(default=None, pattern=PARAM_NAME)


class PipelineDef(_Strict):
    """A versioned blueprint for runs."""

    name: str = Field(pattern=NAME)
    description: str = ""
    #: the Slack channel (ID) where runs started outside Slack (API, schedules) report
    channel: str | None = Field(default=None, pattern=r"^[CGD][A-Z0-9]{2,20}$")
    #: a link comparing two revisions, e.g. https://github.com/acme/web/compare/{from}...{to}
    compare_url: str | None = Field(default=None, pattern=COMPARE_URL)
    parameters: list[ParameterDef] = Field(default_factory=list)
    stages: list[StageDef] = Field(min_length=1)
    #: runs the clock starts (by the owner named in configuration, ``schedule_owner``)
    triggers: list[TriggerDef] = Field(default_factory=list)
    #: runs source-control pushes start; written among ``triggers`` as ``- push: {…}``
    push: list[PushDef] = Field(default_factory=list)
    #: the most a whole run may take (gates included); then it fails and its jobs are killed
    timeout: Duration | None = None

    @model_validator(mode="before")
    @classmethod
    def _push_triggers(cls, data: Any) -> Any:
        """A file lists both kinds of trigger under ``triggers``; pushes move to ``push``, so
        what reads schedules never meets a push."""
        if isinstance(data, dict) and isinstance(data.get("triggers"), list):
            pushes = [t["push"] for t in data["triggers"] if isinstance(t, dict) and set(t) == {"push"}]
            if pushes:
                rest = [t for t in data["triggers"] if not (isinstance(t, dict) and set(t) == {"push"})]
                before = data.get("push")
                pushes = [*(before if isinstance(before, list) else []), *pushes]
                data = {**data, "triggers": rest, "push": pushes}
        return data

    @model_validator(mode="after")
    def _push_parameters(self) -> PipelineDef:
        known = {p.name for p in self.parameters}
        for rule in self.push:
            for name in (rule.revision_parameter, rule.branch_parameter, *rule.parameters):
                if name is not None and name not in known:
                    raise ValueError(f"push trigger: {name!r} is not a parameter of this pipeline")
        return self

    @model_validator(mode="after")
    def _schedule_parameters(self, info: ValidationInfo) -> PipelineDef:
        """A schedule's parameters must start a run: else every fire is refused, the first the
        morning after. (One read back from the database is left as it was stored.)"""
        for trigger in self.triggers if (info.context or {}).get("new") else []:
            try:
                resolve_parameters(self, trigger.schedule.parameters)
            except ShipyardError as exc:
                raise ValueError(f"schedule trigger: {exc.message}") from None
        return self

    @field_validator("parameters")
    @classmethod
    def _unique_params(cls, params: list[ParameterDef]) -> list[ParameterDef]:
        _no_duplicates("parameter", [p.name.upper() for p in params])
        return params

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: list[StageDef]) -> list[StageDef]:
        _no_duplicates("stage", [s.name for s in stages])
        return stages

    def digest(self) -> str:
        """Content hash: equal definitions are the same pipeline version."""
        dumped = self.model_dump(mode="json")
        for stage in dumped["stages"]:  # (pipelines from before strategies keep their digest)
            if stage.get("strategy") is None:
                stage.pop("strategy", None)
        _drop_empty_runs_on(dumped)  # (nor do pipelines from before runner labels)
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def parameter(self, name: str) -> ParameterDef | None:
        return next((p for p in self.parameters if p.name == name), None)


def _drop_empty_runs_on(value: Any) -> None:
    if isinstance(value, dict):
        if value.get("runs_on") == []:
            del value["runs_on"]
        for inner in value.values():
            _drop_empty_runs_on(inner)
    elif isinstance(value, list):
        for inner in value:
            _drop_empty_runs_on(inner)


def _no_duplicates(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} name {name!r} is used twice")
        seen.add(name)


# -- parsing -------------------------------------------------------------------------------


#: the most values (mappings, lists and scalars) a pipeline may hold once its aliases are expanded
MAX_VALUES = 100_000


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key written twice in one mapping: YAML forbids it, and
    PyYAML would silently keep the last one (a second ``stages:`` drops the first's stages).
    Checked as the text is composed, before merge keys (``<<: *job``) add theirs."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:  # (the stubs misname anchor's type)
        node = super().compose_mapping_node(anchor)
        lines: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if (first := lines.get((key.tag, key.value))) is not None:
                problem = f"key {key.value!r} is written twice (first on line {first})"
                raise yaml.composer.ComposerError(None, None, problem, key.start_mark)
            lines[key.tag, key.value] = key.start_mark.line + 1
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value Python cannot make (an integer of more digits than it converts, a date with no
        such day) is a mistake in the text, told with its line like a syntax error."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            digits = "integer string conversion" in str(exc)
            problem = f"an integer of more than {sys.get_int_max_str_digits()} digits" if digits else str(exc)
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


def parse_pipeline(text: str, source: str = "<pipeline>") -> PipelineDef:
    """Parse YAML (or JSON) text into a definition, or raise ``DefinitionError``."""
    try:
        return _parse(text, source)
    except RecursionError:  # (the parser, or any walk of what it made: nesting the parser just took)
        raise DefinitionError([f"{source}: nested too deeply to be a pipeline"]) from None


def _parse(text: str, source: str) -> PipelineDef:
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([f"{where}: not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise DefinitionError([f"{source}: a pipeline must be a mapping with name and stages"])
    if _values(data, {}) > MAX_VALUES:
        raise DefinitionError(
            [f"{source}: too large: more than {MAX_VALUES} values once its aliases are expanded"]
        )
    if not _storable(data):
        raise DefinitionError([f"{source}: text that is not valid Unicode (an unpaired surrogate escape)"])
    try:
        return PipelineDef.model_validate(data, context={"new": True})
    except ValidationError as exc:
        raise DefinitionError(_describe(exc, text, source)) from None


def _values(value: object, counted: dict[int, int]) -> int:
    """How many values ``value`` holds with its aliases expanded. A container that aliases repeat
    is counted once (``counted``), so a "billion laughs" costs no more than its text."""
    if not isinstance(value, dict | list):
        return 1
    if id(value) not in counted:
        inner = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        counted[id(value)] = min(1 + sum(_values(v, counted) for v in inner), MAX_VALUES + 1)
    return counted[id(value)]


def _storable(value: object) -> bool:
    """Every string in ``value`` encodes as UTF-8 (YAML and JSON escapes can make lone
    surrogates, which no database stores)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return True


def load_pipeline_file(path: Path) -> PipelineDef:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError([f"{path}: cannot read: {exc}"]) from None
    return parse_pipeline(text, str(path))


def _describe(exc: ValidationError, text: str, source: str) -> list[str]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        root = None
    problems = []
    for error in exc.errors(include_url=False):
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        path = _format_path(loc)
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling)"
        elif error["type"] == "missing":
            message = "required field is missing"
        elif error["type"] == "string_pattern_mismatch":
            message = f"{error['input']!r} is not allowed here: " + _PATTERN_HINTS.get(
                str((error.get("ctx") or {}).get("pattern")), "see the format in docs/pipelines.md"
            )
        problems.append(f"{where}: {path or '(top level)'}: {message}")
    return problems


_PATTERN_HINTS = {
    COMPARE_URL: "an https:// URL with {from} and {to} where the two revisions go",
    NAME: "use lowercase letters, digits and '-', starting with a letter or digit",
    PARAM_NAME: "use letters, digits and '_', not starting with a digit",
}


def _is_union_tag(part: int | str) -> bool:
    return isinstance(part, str) and (
        part in {"str", "list[str]", "bool", "float", "int"} or part.startswith(("function-", "constrained-"))
    )


def _format_path(loc: list[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: list[int | str]) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


# -- parameters ----------------------------------------------------------------------------


def coerce_parameter(param: ParameterDef, value: object) -> str:
    """The canonical string form of ``value`` for ``param``, or ``ValueError`` saying why not."""
    if param.type == "boolean":
        text = str(value).lower()
        if text in TRUE:
            return "true"
        if text in FALSE:
            return "false"
        raise ValueError(f"{param.name} must be true or false, got {value!r}")
    if param.type == "number":
        try:
            text = str(value)
        except ValueError:  # an int with more digits than Python turns into text
            raise ValueError(f"{param.name} must be a finite number; this one has too many digits") from None
        shown = text if len(text) <= 40 else text[:37] + "..."
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{param.name} must be a number, got {shown!r}") from None
        if not math.isfinite(number):  # NaN, infinities, and numbers too large for a float
            raise ValueError(f"{param.name} must be a finite number, got {shown!r}")
        return str(int(number)) if number.is_integer() else str(number)
    text = str(value)
    if param.type == "choice" and text not in (param.choices or []):
        raise ValueError(f"{param.name} must be one of {', '.join(param.choices or [])}, got {text!r}")
    if param.pattern and not re.fullmatch(param.pattern, text):
        raise ValueError(f"{param.name}={text!r} does not match {param.pattern}")
    return text


def parameter_text(values: Mapping[str, object]) -> dict[str, str]:
    """Parameter values as the text triggers carry (``true``, not ``True``), before they are
    checked against a pipeline with ``resolve_parameters``."""
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


def resolve_parameters(pipeline: PipelineDef, given: Mapping[str, object]) -> dict[str, str]:
    """Validate what a trigger supplied against the pipeline's parameters; fill defaults."""
    problems = []
    known = {p.name for p in pipeline.parameters}
    for name in given:
        if name not in known:
            takes = ", ".join(sorted(known)) or "no parameters"
            problems.append(f"unknown parameter {name!r} ({pipeline.name} takes: {takes})")
    resolved: dict[str, str] = {}
    for param in pipeline.parameters:
        if param.name in given:
            try:
                resolved[param.name] = coerce_parameter(param, given[param.name])
            except ValueError as exc:
                problems.append(str(exc))
        elif param.required:
            problems.append(f"parameter {param.name} is required")
        elif param.default is not None:
            resolved[param.name] = coerce_parameter(param, param.default)
    if problems:
        raise InvalidInput("; ".join(problems))
    return resolved


def env_key(text: str) -> str:
    """``deploy-staging`` → ``DEPLOY_STAGING``: the form names take inside environment variables."""
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()
