"""What the bot shows before a run starts: the trigger form and the deploy question.

**The trigger form.** ``/deploy`` alone opens a modal with a pipeline picker. Picking one
dispatches a ``block_actions`` (``PICK``), and the form is rebuilt for that pipeline with
``views.update``: one input per parameter, shaped by its type (a string is a text box with its
default filled in and its pattern in the hint; a boolean is a yes/no menu; a choice is a menu
of its options; a number is a number box), plus a revision box when no parameter carries the
revision, and a branch box when an environment it deploys to takes only some branches. Each
field's block id names the pipeline (``param:web:ref``): Slack keeps what was typed into inputs
whose block and action ids survive an update, so a value typed for one pipeline never lands in
another's field, and ``response_action: errors`` can point at the one field that is wrong.

Past Slack's 100 options a menu may hold, the picker is an ``external_select``: Slack asks for
the names matching what the person types (``pipeline_options``, at the interactivity options
URL, the same endpoint as everything else).

**The deploy question.** A run that deploys to an environment marked ``confirm: true`` starts
only after its author presses Deploy under exactly what will go where: the pipeline, the
revision, the artifact when it is known (promotion, rollback), the environment and what is live
there now. The question travels in the button's value (``Question``) and expires after a minute;
its id is the trigger's idempotency key, so a second press finds the run the first one started.

Everything here is plain data in and Block Kit out; ``bot.chat.trigger_form`` and
``bot.chat.confirm`` read the database and decide."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.chat import block_kit
from bot.chat.health import line as health_line
from core.analysis import EnvironmentHealth
from core.definition import ParameterDef, PipelineDef, coerce_parameter
from core.ports import Deployment

TRIGGER_FORM = "trigger_form"
#: the picker's action id: choosing a pipeline rebuilds the form for it
PICK = "trigger_pipeline"
#: block ids of the fields every pipeline's form may have; parameters use ``field_id``
PIPELINE, REVISION, BRANCH = "pipeline", "revision", "branch"
#: the action id of every field but the picker
VALUE = "value"
#: parameter names that carry the revision to deploy when no push trigger names one
REVISION_NAMES = ("revision", "ref", "sha", "commit")
#: how long a deploy question can be answered
CONFIRM_WITHIN_S = 60
#: Slack's limits: 100 blocks a modal, 100 options a menu, 2000 characters a button value
MAX_FIELDS, MAX_OPTIONS, MAX_VALUE = 90, 100, 2000


def revision_parameter(definition: PipelineDef) -> str | None:
    """The parameter that carries the revision: the one push triggers fill with the pushed
    commit, else one named like a revision (``ref``, ``revision``, ``sha``, ``commit``)."""
    for rule in definition.push:
        if rule.revision_parameter:
            return rule.revision_parameter
    names = {p.name for p in definition.parameters}
    return next((n for n in REVISION_NAMES if n in names), None)


def shown_revision(
    definition: PipelineDef, revision: str | None, params: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The revision a run deploys as people should see it, and the parameter it came from
    (None when it was given as the revision itself, or is not known)."""
    if revision:
        return revision, None
    name = revision_parameter(definition)
    if name is not None and params.get(name):
        return params[name], name
    return None, None


def field_id(pipeline: str, name: str) -> str:
    return f"param:{pipeline}:{name}"[:255]


# -- the trigger form ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Chosen:
    """The pipeline the form is built for, and what the form says about it."""

    definition: PipelineDef
    version: int
    #: environments it deploys to that ask before a deploy starts
    guarded: tuple[str, ...] = ()
    #: the branch patterns its environments take, when any of them names some
    branches: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()


def trigger_view(names: Sequence[str], channel: str, chosen: Chosen | None) -> dict[str, Any]:
    """The modal: the picker, then (once a pipeline is chosen) its fields.

    ``private_metadata`` is the channel the form was opened from (where the run reports); the
    picker's ``initial_option`` records which pipeline the fields below it belong to."""
    fields: list[block_kit.Block] = [_picker(names, chosen.definition.name if chosen else None)]
    if chosen is None:
        fields.append(block_kit.context("Pick a pipeline: its parameters appear here."))
        submit = "Start"
    else:
        fields.extend(_fields(chosen))
        submit = "Continue" if chosen.guarded else "Start"
    return {
        "type": "modal",
        "callback_id": TRIGGER_FORM,
        "private_metadata": channel,
        "title": _plain("Start a run"),
        "submit": _plain(submit),
        "close": _plain("Cancel"),
        "blocks": fields,
    }


def built_for(view: Mapping[str, Any]) -> str | None:
    """The pipeline whose fields ``view`` shows (None: the form has none yet)."""
    for block in view.get("blocks") or []:
        if block.get("block_id") == PIPELINE:
            return ((block.get("element") or {}).get("initial_option") or {}).get("value")
    return None


def form_values(view: Mapping[str, Any]) -> dict[str, str | None]:
    """What the person entered, by block id: text and numbers as typed, a menu's choice by its
    value; None for what was left empty."""
    found: dict[str, str | None] = {}
    for block_id, actions in ((view.get("state") or {}).get("values") or {}).items():
        for entry in (actions or {}).values():
            found[block_id] = _entered(entry or {})
            break
    return found


def _entered(entry: Mapping[str, Any]) -> str | None:
    if "selected_option" in entry:
        option = entry["selected_option"] or {}
        return option.get("value") or None
    if "selected_options" in entry:
        chosen = [o.get("value", "") for o in entry["selected_options"] or []]
        return ",".join(chosen) or None
    value = entry.get("value")
    return (value.strip() or None) if isinstance(value, str) else None


def check_fields(
    definition: PipelineDef, values: Mapping[str, str | None]
) -> tuple[dict[str, str], dict[str, str]]:
    """The form's parameters checked against the definition with the engine's own rules:
    (parameters, errors by block id)."""
    params: dict[str, str] = {}
    errors: dict[str, str] = {}
    for param in definition.parameters[:MAX_FIELDS]:
        block = field_id(definition.name, param.name)
        given = values.get(block)
        if given is None:
            if param.required:
                errors[block] = f"{param.name} is required"
            continue
        try:
            params[param.name] = coerce_parameter(param, given)
        except ValueError as exc:
            errors[block] = str(exc)[:150]
    return params, errors


def _picker(names: Sequence[str], chosen: str | None) -> block_kit.Block:
    """A menu of every pipeline; past Slack's 100 options, a menu that asks Shipyard for the
    names matching what the person types (``pipeline_options``)."""
    element: block_kit.Block = {"action_id": PICK, "placeholder": _plain("Which pipeline?")}
    if len(names) > MAX_OPTIONS:
        element = {"type": "external_select", **element, "min_query_length": 0}
    else:
        element = {"type": "static_select", **element, "options": [_option(n, n) for n in names]}
    if chosen is not None:
        element["initial_option"] = _option(chosen, chosen)
    return {
        "type": "input",
        "block_id": PIPELINE,
        # a pick rebuilds the form for that pipeline (a block_actions, then views.update)
        "dispatch_action": True,
        "label": _plain("Pipeline"),
        "element": element,
    }


def pipeline_options(names: Sequence[str], typed: str) -> list[block_kit.Block]:
    """The picker's options while the person types (past 100 pipelines): the names that contain
    what was typed, in any case, those that begin with it first; at most 100."""
    typed = typed.strip().casefold()
    found = sorted(
        (n for n in names if typed in n.casefold()), key=lambda n: not n.casefold().startswith(typed)
    )
    return [_option(n, n) for n in found[:MAX_OPTIONS]]


def _fields(chosen: Chosen) -> list[block_kit.Block]:
    definition = chosen.definition
    about = [f"*{definition.name}* v{chosen.version}"]
    if definition.description:
        about.append(definition.description)
    if chosen.environments:
        about.append("deploys to " + " → ".join(chosen.environments))
    if chosen.guarded:
        about.append(f"{', '.join(chosen.guarded)} asks first: you confirm what goes where before it starts")
    blocks = [block_kit.context(" · ".join(about))]
    carrier = revision_parameter(definition)
    if carrier is None:
        blocks.append(
            _text_input(
                REVISION,
                "Revision",
                optional=True,
                hint="The commit or tag to deploy; leave it empty for the pipeline's own default.",
            )
        )
    if chosen.branches:
        blocks.append(
            _text_input(
                BRANCH,
                "Branch",
                optional=False,
                hint=f"The branch the revision comes from (allowed: {', '.join(chosen.branches)}).",
            )
        )
    for param in definition.parameters[:MAX_FIELDS]:
        blocks.append(_parameter_field(definition.name, param, is_revision=param.name == carrier))
    return blocks


def _parameter_field(pipeline: str, param: ParameterDef, *, is_revision: bool) -> block_kit.Block:
    default = coerce_parameter(param, param.default) if param.default is not None else None
    hints = [param.description] if param.description else []
    if is_revision:
        hints.append("The revision to deploy.")
    element: block_kit.Block
    if param.type == "boolean":
        element = _select([("yes", "true"), ("no", "false")], default)
    elif param.type == "choice":
        element = _select([(c, c) for c in param.choices or []], default)
    elif param.type == "number":
        element = {"type": "number_input", "action_id": VALUE, "is_decimal_allowed": True}
        if default is not None:
            element["initial_value"] = default
    else:
        element = {"type": "plain_text_input", "action_id": VALUE}
        if default is not None:
            element["initial_value"] = default
        if param.pattern:
            hints.append(f"Must match {param.pattern}")
    block: block_kit.Block = {
        "type": "input",
        "block_id": field_id(pipeline, param.name),
        "optional": not param.required,
        "label": _plain(param.name),
        "element": element,
    }
    if hints:
        block["hint"] = _plain(" ".join(h if h.endswith(".") else h + "." for h in hints)[:2000])
    return block


def _text_input(block_id: str, label: str, *, optional: bool, hint: str) -> block_kit.Block:
    return {
        "type": "input",
        "block_id": block_id,
        "optional": optional,
        "label": _plain(label),
        "hint": _plain(hint[:2000]),
        "element": {"type": "plain_text_input", "action_id": VALUE},
    }


def _select(options: list[tuple[str, str]], initial: str | None) -> block_kit.Block:
    element: block_kit.Block = {
        "type": "static_select",
        "action_id": VALUE,
        "options": [_option(text, value) for text, value in options[:MAX_OPTIONS]],
    }
    chosen = next((o for o in options if o[1] == initial), None)
    if chosen is not None:
        element["initial_option"] = _option(*chosen)
    return element


def _option(text: str, value: str) -> block_kit.Block:
    return {"text": _plain(text[:75]), "value": value[:150]}


def _plain(text: str) -> block_kit.Block:
    return {"type": "plain_text", "text": text}


# -- the deploy question ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Question:
    """A deploy that asks first, as its Deploy button carries it."""

    id: str
    pipeline: str
    params: dict[str, str]
    revision: str | None = None
    branch: str | None = None
    #: ``deploy``, or ``promotion``/``rollback`` of ``artifact`` to ``deploy_to``
    kind: str = "deploy"
    artifact: str | None = None
    deploy_to: str | None = None
    #: where the run reports, and who was asked
    channel: str = ""
    asker: str = ""
    until: float

    @classmethod
    def new(cls, now: float, **fields: Any) -> Question:
        return cls(id=uuid.uuid4().hex, until=now + CONFIRM_WITHIN_S, **fields)

    @property
    def idempotency_key(self) -> str:
        return f"confirm:{self.id}"

    def value(self) -> str:
        found = {
            "id": self.id,
            "pipeline": self.pipeline,
            "params": self.params,
            "revision": self.revision,
            "branch": self.branch,
            "kind": self.kind,
            "artifact": self.artifact,
            "to": self.deploy_to,
            "channel": self.channel,
            "by": self.asker,
            "until": self.until,
        }
        return json.dumps({k: v for k, v in found.items() if v not in (None, "")}, separators=(",", ":"))

    @classmethod
    def read(cls, value: str) -> Question:
        """The question a button carries; ``ValueError``/``KeyError``/``TypeError`` when it is
        not one of ours."""
        asked = json.loads(value)
        if not isinstance(asked, dict):  # (``null``, a list, a string: JSON, but not a question)
            raise TypeError(f"a question is a JSON object, not {type(asked).__name__}")

        def text(key: str) -> str | None:
            found = asked.get(key)
            return None if found is None else str(found)

        return cls(
            id=str(asked.get("id") or ""),
            pipeline=str(asked["pipeline"]),
            params={str(k): str(v) for k, v in dict(asked["params"]).items()},
            revision=text("revision"),
            branch=text("branch"),
            kind=str(asked.get("kind") or "deploy"),
            artifact=text("artifact"),
            deploy_to=text("to"),
            channel=str(asked.get("channel") or ""),
            asker=str(asked.get("by") or ""),
            until=float(asked["until"]),
        )

    def again(self) -> str:
        """The command that asks the question again."""
        if self.kind == "promotion" and self.artifact and self.deploy_to:
            return f"/deploy promote {self.artifact} to {self.deploy_to}"
        if self.kind == "rollback" and self.deploy_to:
            return f"/deploy rollback {self.deploy_to}"
        return f"/deploy run {self.pipeline} …"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the question shows beside the request itself."""

    definition: PipelineDef
    version: int
    #: the guarded environments and what is live in each now
    live: tuple[tuple[str, Deployment | None], ...]
    #: the artifact that will be deployed (``web@1.4.2``), when it is known before the run
    artifact: str | None = None
    #: the artifact's own revision (the run that built it), when the run is given none
    artifact_revision: str | None = None
    #: the health of those environments that watch health checks
    health: tuple[EnvironmentHealth, ...] = ()


def question(asked: Question, facts: Facts) -> tuple[str, list[block_kit.Block]]:
    """The question and its Deploy button: exactly what will go where."""
    environments = ", ".join(env for env, _ in facts.live)
    revision, carrier = shown_revision(facts.definition, asked.revision, asked.params)
    lines = [_headline(asked, facts, environments)]
    lines.append(f"pipeline: *{asked.pipeline}* v{facts.version}" + _kind(asked))
    if revision is not None:
        lines.append(f"revision: `{revision}`" + (f" (parameter `{carrier}`)" if carrier else ""))
    elif facts.artifact_revision:
        revision = facts.artifact_revision
        lines.append(f"revision: `{revision}` (the artifact's build)")
    elif not facts.artifact:  # (an artifact deploys what it was built from)
        lines.append("revision: not given (the pipeline decides)")
    if asked.branch:
        lines.append(f"branch: `{asked.branch}`")
    if facts.artifact:
        lines.append(f"artifact: `{facts.artifact}`")
    if asked.params:
        lines.append("parameters: " + " ".join(f"`{k}={v}`" for k, v in asked.params.items()))
    for env, live in facts.live:
        lines.append(f"live in {env} now: {_live(facts.definition, live)}")
        was = _live_revision(facts.definition, live)
        template = facts.definition.compare_url
        if template and was and revision and was != revision:
            link = template.replace("{from}", was).replace("{to}", revision)
            lines.append(f"<{link}|compare {was[:7]}…{revision[:7]}>")
    lines.append(f"_This question expires in {CONFIRM_WITHIN_S} seconds._")
    if asked.kind == "rollback":
        text, press = f"Roll {environments} back to {facts.artifact or 'an earlier artifact'}?", "Roll back"
    else:
        text, press = f"Deploy {asked.pipeline} to {environments}?", "Deploy"
    button = block_kit.button(press, block_kit.CONFIRM, asked.value(), "danger")
    blocks = [block_kit.text("\n".join(lines))]
    blocks += [block_kit.context(health_line(h)) for h in facts.health]
    return text, [*blocks, block_kit.actions(f"confirm-{asked.id}", button)]


def _headline(asked: Question, facts: Facts, environments: str) -> str:
    if asked.kind == "rollback" and facts.artifact:
        return (
            f":rewind: *{asked.pipeline}* rolls *{environments}* back to `{facts.artifact}` "
            "(a new run; nothing is rebuilt). Start it?"
        )
    if asked.kind == "promotion" and facts.artifact:
        return f":warning: *{asked.pipeline}* promotes `{facts.artifact}` to *{environments}*. Start it?"
    return f":warning: *{asked.pipeline}* deploys to *{environments}*. Start it?"


def _kind(asked: Question) -> str:
    return f" · {asked.kind}" if asked.kind != "deploy" else ""


def _live_revision(definition: PipelineDef, live: Deployment | None) -> str | None:
    """What is live, as a revision: the deployment's own, or its run's revision parameter
    when the same pipeline deployed it."""
    if live is None or live.pipeline != definition.name:
        return live.revision if live is not None else None
    return shown_revision(definition, live.revision, live.parameters)[0]


def _live(definition: PipelineDef, live: Deployment | None) -> str:
    if live is None:
        return "nothing yet"
    what = []
    if live.artifact:
        what.append(f"artifact `{live.artifact}`")
    revision = _live_revision(definition, live)
    if revision:
        what.append(f"revision `{revision}`")
    run = f"{live.pipeline}#{live.run_number}, since {live.finished_at:%Y-%m-%d %H:%M} UTC"
    return f"{', '.join(what)} ({run})" if what else run
