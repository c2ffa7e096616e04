"""Pipeline definitions shared by tests, as the YAML a pipeline file holds.

Each is named for what a test needs of it; where tests differ only in a value (who approves,
what the build does) a builder takes that value, instead of each module keeping its own copy."""

from __future__ import annotations

#: a commit reference, as the Slack and chat tests ask for one
COMMIT_REF = "^[0-9a-f]{7,40}$"

#: three stages of two jobs each, all succeeding at once: for ordering and concurrency tests
THREE_BY_TWO = """
name: three
stages:
  - {name: a, jobs: [{name: x, run: "true"}, {name: y, run: "true"}]}
  - {name: b, jobs: [{name: x, run: "true"}, {name: y, run: "true"}]}
  - {name: c, jobs: [{name: x, run: "true"}, {name: y, run: "true"}]}
"""

#: a run still going: one job failed (allowed to), the other runs for half a minute
GOING_ON = """
name: going-on
stages:
  - name: build
    jobs:
      - {name: lint, run: "echo 'lint: 3 warnings' >&2; exit 1", allow_failure: true}
      - {name: compile, run: "sleep 30"}
"""


def gated(
    *,
    compile: str = '"true"',
    approvers: str = "release-managers",
    min_approvals: int = 1,
    ref: str | None = None,
) -> str:
    """``gated``: a build (its ``compile`` job runs ``compile``, as YAML), then production
    behind a gate of ``approvers`` needing ``min_approvals``; with ``ref``, a required
    ``ref`` parameter matching that pattern (``""``: any value)."""
    head = ["name: gated"]
    if ref is not None:
        pattern = f', pattern: "{ref}"' if ref else ""
        head += ["parameters:", f"  - {{name: ref, required: true{pattern}}}"]
    return "\n".join(
        [
            *head,
            "stages:",
            "  - name: build",
            f"    jobs: [{{name: compile, run: {compile}}}]",
            "  - name: production",
            "    environment: production",
            f"    gate: {{approvers: [{approvers}], min_approvals: {min_approvals}}}",
            '    jobs: [{name: deploy, run: "true"}]',
            "",
        ]
    )


#: ``gated`` as the chat tests start it: for a commit, whose build echoes it
GATED_ON_REF = gated(compile='["sh", "-c", "echo built $SHIPYARD_PARAM_REF"]', ref=COMMIT_REF)


def ship(*, staging: bool = False, approvers: str = "release-managers", min_approvals: int = 1) -> str:
    """``ship``: builds the ``version`` parameter's artifact, (with ``staging``, deploys it to
    staging behind a release-managers gate,) then to production behind a gate of ``approvers``
    needing ``min_approvals``; its ``compare_url`` links two versions."""
    staged = (
        """\
  - name: staging
    environment: staging
    gate: {approvers: [release-managers]}
    jobs: [{name: deploy, run: "true"}]"""
        if staging
        else ""
    )
    return f"""
name: ship
compare_url: https://git.example/acme/ship/compare/{{from}}...{{to}}
parameters:
  - {{name: version, required: true}}
stages:
  - name: build
    jobs:
      - name: image
        run: |
          digest="sha256:$(printf %064d "${{SHIPYARD_PARAM_VERSION//./}}")"
          echo "artifact=ship@$SHIPYARD_PARAM_VERSION digest=$digest uri=oci://r/ship" >> "$SHIPYARD_OUTPUT"
{staged}
  - name: production
    environment: production
    gate: {{approvers: [{approvers}], min_approvals: {min_approvals}}}
    jobs: [{{name: deploy, run: "true"}}]
"""
