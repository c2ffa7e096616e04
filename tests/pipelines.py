"""Pipeline definitions shared by tests, as the YAML a pipeline file holds.

Each is named for what a test needs of it; where tests differ only in a value (who approves,
what the build does) a builder takes that value, instead of each module keeping its own copy.
Commands (``run``) and gates are passed as YAML (``'"true"'``, ``'["sleep", "30"]'``,
``"{approvers: [bob]}"``); ``head`` is more top-level YAML (parameters, triggers, a channel) and
``then`` more stages, both written as they stand in the file."""

from __future__ import annotations

#: a commit reference, as the Slack and chat tests ask for one
COMMIT_REF = "^[0-9a-f]{7,40}$"


def _pipeline(name: str, head: str, stages: list[str], then: str) -> str:
    lines = [f"name: {name}", *([head.rstrip("\n")] if head else []), "stages:", *stages]
    return "\n".join(lines) + "\n" + then


def one_job(
    name: str,
    run: str = '"true"',
    *,
    stage: str = "s",
    job: str = "j",
    environment: str | None = None,
    gate: str | None = None,
    retries: int = 0,
    head: str = "",
    then: str = "",
) -> str:
    """``name``: one ``stage`` (in ``environment``, behind ``gate``, when given) of one ``job``
    running ``run``, tried again ``retries`` times: for tests where only that it runs matters."""
    stage_lines = [f"  - name: {stage}"]
    if environment:
        stage_lines.append(f"    environment: {environment}")
    if gate:
        stage_lines.append(f"    gate: {gate}")
    tries = f", retries: {retries}" if retries else ""
    stage_lines.append(f"    jobs: [{{name: {job}, run: {run}{tries}}}]")
    return _pipeline(name, head, stage_lines, then)


def one_build(name: str, compile: str = '"true"', *, retries: int = 0, head: str = "", then: str = "") -> str:
    """``name``: a ``build`` stage whose ``compile`` job runs ``compile``, and nothing else."""
    return one_job(name, compile, stage="build", job="compile", retries=retries, head=head, then=then)


def one_deploy(
    name: str,
    deploy: str = '"true"',
    *,
    gate: str | None = None,
    environment: str | None = "production",
    retries: int = 0,
) -> str:
    """``name``: a ``production`` stage (in ``environment``, behind ``gate``, when given) whose
    ``deploy`` job runs ``deploy``, and nothing else."""
    return one_job(
        name, deploy, stage="production", job="deploy", environment=environment, gate=gate, retries=retries
    )


def build_and_deploy(
    name: str,
    *,
    compile: str = '"true"',
    deploy: str = '"true"',
    gate: str | None = None,
    stage: str = "production",
    environment: str | None = "production",
    head: str = "",
    then: str = "",
) -> str:
    """``name``: a ``build`` stage (its ``compile`` job runs ``compile``), then ``stage`` in
    ``environment``, behind ``gate`` when given (its ``deploy`` job runs ``deploy``)."""
    stages = ["  - name: build", f"    jobs: [{{name: compile, run: {compile}}}]", f"  - name: {stage}"]
    if environment:
        stages.append(f"    environment: {environment}")
    if gate:
        stages.append(f"    gate: {gate}")
    stages.append(f"    jobs: [{{name: deploy, run: {deploy}}}]")
    return _pipeline(name, head, stages, then)


def gated(
    *,
    name: str = "gated",
    compile: str = '"true"',
    deploy: str = '"true"',
    approvers: str = "release-managers",
    min_approvals: int = 1,
    self_approval: bool = False,
    ref: str | None = None,
    stage: str = "production",
    environment: str | None = "production",
    then: str = "",
) -> str:
    """``build_and_deploy`` with its second stage behind a gate of ``approvers`` needing
    ``min_approvals`` (``self_approval``: the one who triggered may approve too); with ``ref``,
    a required ``ref`` parameter matching that pattern (``""``: any value)."""
    head = ""
    if ref is not None:
        pattern = f', pattern: "{ref}"' if ref else ""
        head = f"parameters:\n  - {{name: ref, required: true{pattern}}}"
    itself = ", allow_self_approval: true" if self_approval else ""
    gate = f"{{approvers: [{approvers}], min_approvals: {min_approvals}{itself}}}"
    return build_and_deploy(
        name,
        compile=compile,
        deploy=deploy,
        gate=gate,
        stage=stage,
        environment=environment,
        head=head,
        then=then,
    )


#: ``gated`` as the chat tests start it: for a commit, whose build echoes it
GATED_ON_REF = gated(compile='["sh", "-c", "echo built $SHIPYARD_PARAM_REF"]', ref=COMMIT_REF)


def failing(*, first: str = "", then: str = "") -> str:
    """``failing``: its build's ``compile`` job runs the shell commands ``first``, then says
    ``error: it broke`` on stderr and exits 3, as the Slack tests look for it."""
    return one_build("failing", f"""["sh", "-c", "{first}echo 'error: it broke' >&2; exit 3"]""", then=then)


def three_by_two(name: str = "three", run: str = '"true"') -> str:
    """``name``: three stages ``a``, ``b``, ``c`` of two jobs ``x`` and ``y`` each, every job
    running ``run``: for ordering and concurrency tests."""
    pair = f"[{{name: x, run: {run}}}, {{name: y, run: {run}}}]"
    return _pipeline(name, "", [f"  - {{name: {s}, jobs: {pair}}}" for s in "abc"], "")


def stalls_first_attempt(directory: object, ledger: str) -> str:
    """A job's ``run`` (YAML) that appends its attempt number to ``directory/ledger``; its first
    attempt writes its pid to ``directory/slow.pid`` and sleeps a minute (for a test to kill it
    or its server), a later one ends at once."""
    d = directory
    attempt = f'echo "$SHIPYARD_ATTEMPT" >> {d}/{ledger}'
    return f"""'{attempt}; if [ "$SHIPYARD_ATTEMPT" = 1 ]; then echo $$ > {d}/slow.pid; sleep 60; fi'"""


#: three stages of two jobs each, all succeeding at once
THREE_BY_TWO = three_by_two()

#: a run still going: one job failed (allowed to), the other runs for half a minute
GOING_ON = """
name: going-on
stages:
  - name: build
    jobs:
      - {name: lint, run: "echo 'lint: 3 warnings' >&2; exit 1", allow_failure: true}
      - {name: compile, run: "sleep 30"}
"""


def ship(
    *,
    name: str = "ship",
    staging: bool = False,
    gates: bool = True,
    compare: bool = True,
    approvers: str = "release-managers",
    min_approvals: int = 1,
) -> str:
    """``name``: builds the artifact ``<name>@<version>`` of its ``version`` parameter (a digest
    made of the version's digits), (with ``staging``, deploys it to staging,) then to production;
    with ``gates``, staging is behind a release-managers gate and production behind one of
    ``approvers`` needing ``min_approvals``; with ``compare``, its ``compare_url`` links two
    versions."""
    staging_gate = "    gate: {approvers: [release-managers]}\n" if gates else ""
    production_gate = (
        f"    gate: {{approvers: [{approvers}], min_approvals: {min_approvals}}}\n" if gates else ""
    )
    compare_url = (
        f"compare_url: https://git.example/acme/{name}/compare/{{from}}...{{to}}\n" if compare else ""
    )
    deploy = '    jobs: [{name: deploy, run: "true"}]\n'
    staged = f"  - name: staging\n    environment: staging\n{staging_gate}{deploy}" if staging else ""
    artifact = f"{name}@$SHIPYARD_PARAM_VERSION digest=$digest uri=oci://r/{name}"
    return f"""
name: {name}
{compare_url}parameters:
  - {{name: version, required: true}}
stages:
  - name: build
    jobs:
      - name: image
        run: |
          digest="sha256:$(printf %064d "${{SHIPYARD_PARAM_VERSION//./}}")"
          echo "artifact={artifact}" >> "$SHIPYARD_OUTPUT"
{staged}  - name: production
    environment: production
{production_gate}{deploy}"""


#: ``shop@<version>`` to staging and production, where the environments' settings (not gates)
#: decide what stands in the way: the Slack tests of promotion, locks and environments
SHOP = ship(name="shop", staging=True, gates=False, compare=False)

#: the pipeline files the REST API tests (and the webhook tests on the same API) start with
API_PIPELINES = {
    "web": """
        name: web
        description: Build and ship the web frontend
        parameters:
          - {name: ref, required: true, pattern: "^[0-9a-f]{7,40}$"}
          - {name: dry_run, type: boolean, default: false}
        stages:
          - name: build
            jobs:
              - {name: compile, run: ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done"]}
          - name: staging
            environment: staging
            jobs:
              - {name: deploy, run: ["true"]}
    """,
    "quick": one_job("quick", stage="only", job="ok"),
    "slow": one_job("slow", '["sleep", "30"]', stage="wait", job="sleep"),
    "broken": one_job("broken", '["sh", "-c", "exit 1"]', stage="build", job="fail"),
    "flaky": """
        name: flaky
        stages:
          - name: s
            jobs:
              - name: j
                retries: 1
                run:
                  - sh
                  - -c
                  - |
                    if [ -f "$SHIPYARD_WORKSPACE/once" ]; then echo second; echo again; exit 0; fi
                    touch "$SHIPYARD_WORKSPACE/once"; echo first; echo one; exit 1
    """,
    "gated": gated(),
    "selfok": gated(name="selfok", self_approval=True),
}

#: what the webhook tests add to ``API_PIPELINES``: a deploy to staging, gates an outside
#: service decides (``external``), a pipeline a push starts and one a push deploys to production
WEBHOOK_PIPELINES = {
    "deploy": """
        name: deploy
        parameters:
          - {name: ref, default: main}
        stages:
          - name: build
            jobs: [{name: compile, run: ["true"]}]
          - name: staging
            environment: staging
            jobs: [{name: ship, run: ["true"]}]
    """,
    "scanned": """
        name: scanned
        stages:
          - name: build
            jobs: [{name: compile, run: ["true"]}]
          - name: production
            environment: production
            gate: {type: external, timeout: 1h}
            jobs: [{name: ship, run: ["true"]}]
    """,
    "hurried": one_job("hurried", stage="production", job="ship", gate="{type: external, timeout: 1s}"),
    "pushed": """
        name: pushed
        parameters:
          - {name: sha, default: ""}
          - {name: branch, default: ""}
        triggers:
          - push: {branches: [main, "release/*"], revision_parameter: sha, branch_parameter: branch}
        stages:
          - name: build
            jobs: [{name: compile, run: ["true"]}]
    """,
    "released": """
        name: released
        triggers:
          - push: {branches: [main, "release/*"]}
        stages:
          - name: build
            jobs: [{name: compile, run: ["true"]}]
          - name: production
            environment: production
            jobs: [{name: ship, run: ["true"]}]
    """,
}


def built_and_deployed(name: str = "shop", deploy: str = '"true"') -> str:
    """``name``: a ``build`` stage whose ``image`` job registers the artifact
    ``<name>@<version>`` (the required ``version`` parameter, with a digest made from it), then a
    ``production`` stage whose ``deploy`` job runs ``deploy``: for rollbacks to a known-good
    artifact."""
    return f"""name: {name}
parameters:
  - {{name: version, required: true}}
stages:
  - name: build
    jobs:
      - name: image
        run: |
          digest="sha256:$(printf %064d "${{SHIPYARD_PARAM_VERSION//./}}")"
          uri="oci://registry.example/{name}:$SHIPYARD_PARAM_VERSION"
          echo "artifact={name}@$SHIPYARD_PARAM_VERSION digest=$digest uri=$uri" >> "$SHIPYARD_OUTPUT"
  - name: production
    environment: production
    jobs: [{{name: deploy, run: {deploy}}}]
"""


def canary(
    name: str,
    steps: list[str],
    *,
    router: str = "web",
    promote: str = '"true"',
    abort: str | None = '"true"',
    job: str = "deploy-canary",
    head: str = "",
) -> str:
    """``name``: a ``production`` stage rolled out through ``router`` as a canary taking
    ``steps`` (each a step as YAML: ``"set_weight: 10"``, ``'pause: {approvers: ["role:approver"]}'``),
    whose ``promote`` job runs ``promote`` and ``remove-canary`` abort job runs ``abort`` (none
    when ``None``); the stage's own ``job`` runs ``true``."""
    stage = [
        "  - name: production",
        "    environment: production",
        "    strategy:",
        "      canary:",
        f"        router: {router}",
        "        steps:",
        *(f"          - {step}" for step in steps),
        f"        promote: [{{name: promote, run: {promote}}}]",
        *([f"        abort: [{{name: remove-canary, run: {abort}}}]"] if abort is not None else []),
        f'    jobs: [{{name: {job}, run: "true"}}]',
    ]
    return _pipeline(name, head, stage, "")


#: a canary step: an open-ended pause that an approver ends
APPROVER_PAUSE = 'pause: {approvers: ["role:approver"]}'

#: the required ``version`` parameter of pipelines whose jobs deploy a version
VERSION_PARAMETER = "parameters:\n  - {name: version, required: true}"
