"""What an artifact may be called, and how a job's output line becomes one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from core.artifacts import (
    AlreadyBad,
    Artifact,
    ArtifactStatus,
    check_deployable,
    check_digest,
    check_mark_bad,
    check_name,
    check_uri,
    check_version,
    make_spec,
    parse_artifact_output,
    split_ref,
)
from core.errors import CommandRefused, InvalidInput, NotFound
from core.ports import Deployment
from core.rollback import plan_rollback
from core.runtime.executor import read_outputs

SHA256 = "sha256:" + "3f2a9c1b" * 8
SHA512 = "sha512:" + "ab" * 64


@pytest.mark.parametrize(
    "version",
    ["latest", "stable", "edge", "nightly", "head", "main", "master", "develop", "dev", "trunk", "LATEST"],
)
def test_moving_tags_are_refused_as_versions_saying_why(version: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_version(version)
    message = refused.value.message
    assert "mutable" in message and "rolled back" in message and "commit sha" in message


@pytest.mark.parametrize("version", ["feature/login", "release/1.4", "hotfix/2"])
def test_branch_names_with_a_slash_are_refused(version: str) -> None:
    with pytest.raises(InvalidInput, match=r"looks like a branch name.*rolled back to"):
        check_version(version)


@pytest.mark.parametrize("version", ["release", "production", "my-branch", "v"])
def test_versions_without_a_digit_are_refused_as_branch_like(version: str) -> None:
    with pytest.raises(InvalidInput, match=r"has no digit.*commit sha"):
        check_version(version)


@pytest.mark.parametrize(
    "version", ["1.4.2", "v1.4.2", "1.0.0-rc.1", "1.0.0+build.5", "2026.11.27-abc1234", "3f2a9c1b7d4e", "7"]
)
def test_immutable_identifiers_are_accepted(version: str) -> None:
    assert check_version(version) == version


@pytest.mark.parametrize("version", ["", "1.4 2", "-1.4.2", "1.4.2;rm", "1" * 129])
def test_malformed_versions_are_refused(version: str) -> None:
    with pytest.raises(InvalidInput):
        check_version(version)


def test_digests_have_a_known_algorithm_and_exactly_its_hex_length() -> None:
    assert check_digest(SHA256) == SHA256
    assert check_digest(SHA512) == SHA512
    assert check_digest(SHA256.upper()) == SHA256  # one content, one spelling
    for bad, why in [
        (SHA256[:-1], "exactly 64 hex digits"),
        (SHA256 + "0", "exactly 64 hex digits"),
        ("sha256:" + "g" * 64, "exactly 64 hex digits"),
        ("sha512:" + "ab" * 32, "exactly 128 hex digits"),
        ("md5:" + "a" * 32, "sha256:<64 hex digits>"),
        ("3f2a9c1b" * 8, "sha256:<64 hex digits>"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            check_digest(bad)


def test_uris_need_a_scheme_and_no_spaces() -> None:
    for good in ["oci://registry.example.com/web@" + SHA256, "s3://bucket/web-1.4.2.tgz", "https://x/y"]:
        assert check_uri(good) == good
    for bad in ["", "registry.example.com/web:1.4.2", "oci://a b", "://x", "x" * 3000]:
        with pytest.raises(InvalidInput, match="scheme"):
            check_uri(bad)


def test_names_follow_the_pipeline_name_rule() -> None:
    assert check_name("web-api2") == "web-api2"
    for bad in ["Web", "web_api", "-web", "", "w" * 64]:
        with pytest.raises(InvalidInput, match="lowercase"):
            check_name(bad)


def test_a_job_output_line_becomes_an_artifact_spec() -> None:
    """The whole line as a job writes it, through the executor's own output reader."""
    typed = SHA256.upper().replace("SHA256", "sha256")
    line = f'artifact=web@1.4.2 digest={typed} uri=oci://r/web@{SHA256} commit=abc1234 note="hot fix"'
    outputs, problems = read_outputs([line])
    assert problems == [] and set(outputs) == {"artifact"}
    spec = parse_artifact_output(outputs["artifact"])
    assert (spec.name, spec.version, spec.digest, spec.uri) == (
        "web",
        "1.4.2",
        SHA256,
        f"oci://r/web@{SHA256}",
    )
    assert spec.metadata == {"commit": "abc1234", "note": "hot fix"}
    assert spec.ref == "web@1.4.2"
    # trailing spaces and another order read the same
    assert parse_artifact_output(f"  uri=s3://b/k digest={SHA256} web@1.4.2  ").uri == "s3://b/k"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (f"web@latest digest={SHA256} uri=s3://b/k", "mutable reference"),
        (f"web@feature/x digest={SHA256} uri=s3://b/k", "branch name"),
        (f"web digest={SHA256} uri=s3://b/k", "name@version"),
        (f"digest={SHA256} uri=s3://b/k", "exactly one name@version"),
        (f"web@1 api@2 digest={SHA256} uri=s3://b/k", "exactly one name@version"),
        ("web@1.4.2 uri=s3://b/k", "has no digest"),
        (f"web@1.4.2 digest={SHA256}", "has no uri"),
        (f"web@1.4.2 digest={SHA256} uri=", "has no uri"),
        (f"web@1.4.2 digest={SHA256} uri=s3://b/k a=1 a=2", "names a twice"),
        (f'web@1.4.2 digest={SHA256} uri=s3://b/k note="unclosed', "cannot be read"),
        (f"web@1.4.2 digest=sha1:{'a' * 40} uri=s3://b/k", "not valid"),
        (f"web@1.4.2 digest={SHA256} uri=s3://b/k 9x=1", "metadata key"),
    ],
)
def test_bad_artifact_outputs_are_refused_saying_what_to_write(value: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_artifact_output(value)


def test_refs_split_at_the_at_sign() -> None:
    assert split_ref("web@1.4.2") == ("web", "1.4.2")
    for bad in ["web", "@1.4.2", "web@"]:
        with pytest.raises(InvalidInput, match="name@version"):
            split_ref(bad)


def _artifact(bad: bool) -> Artifact:
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    spec = make_spec("web", "1.4.2", SHA256, "s3://b/k")
    return Artifact(
        id="0" * 32,
        name=spec.name,
        version=spec.version,
        digest=spec.digest,
        uri=spec.uri,
        metadata={},
        run_id=None,
        pipeline=None,
        created_by="ci",
        created_at=at,
        bad=bad,
        bad_reason="crashes on start" if bad else None,
        bad_by="bob" if bad else None,
        bad_at=at if bad else None,
    )


def test_marking_bad_is_a_one_way_transition() -> None:
    good, bad = _artifact(False), _artifact(True)
    assert (good.status, bad.status) == (ArtifactStatus.REGISTERED, ArtifactStatus.BAD)
    check_mark_bad(good)
    with pytest.raises(
        AlreadyBad, match="already marked bad by bob at 2026-11-27 10:00 UTC: crashes on start"
    ):
        check_mark_bad(bad)
    check_deployable(good)
    with pytest.raises(CommandRefused, match=r"marked bad .*cannot be deployed or promoted"):
        check_deployable(bad)
    assert good.short_digest == "sha256:3f2a9c1b3f2a"


# -- rollback targets (core.rollback) --------------------------------------------------------------
def _deployment(
    version: str | None, status: str = "succeeded", kind: str = "deploy", i: int = 0
) -> Deployment:
    at = datetime(2026, 11, 27, tzinfo=UTC) + timedelta(minutes=i)
    return Deployment(
        environment="production",
        pipeline="web",
        run_id=f"r{i}",
        run_number=i,
        stage="production",
        status=status,
        revision=None,
        parameters={},
        triggered_by="alice",
        started_at=at,
        finished_at=at,
        id=i,
        artifact_id=f"id-{version}" if version else None,
        artifact=f"web@{version}" if version else None,
        kind=kind,
    )


def _registry(*bad: str) -> Callable[[str], Artifact | None]:
    def find(ref: str) -> Artifact | None:
        version = ref.removeprefix("id-").removeprefix("web@")
        return Artifact(
            id=f"id-{version}",
            name="web",
            version=version,
            digest="sha256:" + "0" * 64,
            uri="oci://r/web",
            metadata={},
            run_id=None,
            pipeline="web",
            created_by="ci",
            created_at=datetime(2026, 11, 1, tzinfo=UTC),
            bad=version in bad,
            bad_reason="broken" if version in bad else None,
        )

    return find


@pytest.mark.parametrize(
    ("history", "bad", "expected"),
    [
        pytest.param(["1.0.0", "1.1.0"], (), "1.0.0", id="after-a-suspicious-success-the-one-before"),
        pytest.param(["1.0.0", "1.1.0", "1.2.0!"], (), "1.1.0", id="after-a-failed-deploy-what-last-worked"),
        pytest.param(["1.0.0", "1.1.0", "1.2.0!", "1.2.0!"], (), "1.1.0", id="failures-in-a-row"),
        pytest.param(["1.0.0", "1.1.0", "1.2.0"], ("1.1.0",), "1.0.0", id="skips-bad-artifacts"),
        pytest.param(
            ["1.0.1", "1.0.2", "<1.0.1!"], (), "1.0.1", id="a-failed-rollback-is-retried-not-reversed"
        ),
        pytest.param(["1.0.0", "1.1.0", "-"], (), "1.1.0", id="latest-without-artifact"),
        pytest.param(
            ["0.9.0", "1.0.0", "1.1.0", "<1.0.0"],
            (),
            "0.9.0",
            id="never-forward-to-what-was-rolled-back-from",
        ),
        pytest.param(
            ["1.0.0", "1.1.0", "<1.0.0", "1.1.0"], (), "1.0.0", id="a-version-deployed-again-since-counts"
        ),
        pytest.param(
            ["0.8.0", "0.9.0", "1.0.0", "1.1.0", "<1.0.0", "<0.9.0"],
            (),
            "0.8.0",
            id="a-chain-never-goes-back-to-an-earlier-deployment-of-a-version-rolled-back-from",
        ),
        pytest.param(
            ["1.0.0", "1.1.0", "<1.0.0", "1.1.0", "1.2.0"],
            (),
            "1.1.0",
            id="a-version-rolled-back-from-and-deployed-again-since-counts",
        ),
    ],
)
def test_rollback_chooses_the_right_artifact(history: list[str], bad: tuple[str, ...], expected: str) -> None:
    deployments = []
    for i, item in enumerate(history):
        kind = "rollback" if item.startswith("<") else "deploy"
        version = item.strip("<!") if item != "-" else None
        deployments.append(_deployment(version, "failed" if item.endswith("!") else "succeeded", kind, i))
    plan = plan_rollback("production", list(reversed(deployments)), _registry(*bad))
    assert plan.target.version == expected


def test_rollback_with_nothing_to_go_back_to_says_so() -> None:
    with pytest.raises(NotFound, match="no earlier good deployment to production"):
        plan_rollback("production", [_deployment("1.0.0")], _registry())
    with pytest.raises(NotFound) as refused:  # a second rollback does not undo the first
        plan_rollback("production", _history("1.0.0", "1.1.0", "<1.0.0"), _registry())
    assert refused.value.message == (
        "no earlier good deployment to production to roll back to (passed over: web@1.1.0, rolled back from)"
    )
    with pytest.raises(NotFound, match="nothing with an artifact was ever deployed"):
        plan_rollback("production", [], _registry())


def _known(
    *versions: str, bad: tuple[str, ...] = (), pipeline: str | None = "web"
) -> Callable[[str], Artifact | None]:
    """A registry holding only ``versions`` (by id or ref); ``pipeline`` None: registered over
    the API, by no pipeline's run."""
    everything = _registry(*bad)

    def find(ref: str) -> Artifact | None:
        found = everything(ref)
        if found is None or found.version not in versions:
            return None
        return Artifact(**{**{k: getattr(found, k) for k in Artifact.__slots__}, "pipeline": pipeline})

    return find


def _history(*items: str) -> list[Deployment]:
    """Newest first, as ``deployments_to`` reads them; ``!`` failed, ``<`` a rollback."""
    deployments = [
        _deployment(
            item.strip("<!") if item != "-" else None,
            "failed" if item.endswith("!") else "succeeded",
            "rollback" if item.startswith("<") else "deploy",
            i,
        )
        for i, item in enumerate(items)
    ]
    return list(reversed(deployments))


def test_a_rollback_plan_says_what_it_replaces_with_what() -> None:
    plan = plan_rollback("production", _history("1.0.0", "1.1.0"), _registry())
    assert (plan.environment, plan.pipeline, plan.target.ref) == ("production", "web", "web@1.0.0")
    assert plan.current is not None and plan.current.artifact == "web@1.1.0"
    assert plan.describe() == "roll production back from web@1.1.0 to web@1.0.0"
    # the latest deployment named no artifact: it is what runs now, whatever it is
    unnamed = plan_rollback("production", _history("1.0.0", "1.1.0", "-"), _registry())
    assert unnamed.describe() == "roll production back from what runs now to web@1.1.0"


@pytest.mark.parametrize("to", ["1.0.0", "web@1.0.0"])
def test_rollback_to_a_version_by_hand_takes_a_bare_version_or_a_ref(to: str) -> None:
    """A bare version is of the artifact deployed last (``/deploy rollback production to 1.0.0``);
    it may be one that never left another environment, or the one there now."""
    plan = plan_rollback("production", _history("1.0.0", "1.1.0", "1.2.0!"), _known("1.0.0"), to)
    assert plan.target.ref == "web@1.0.0" and plan.pipeline == "web"
    assert plan.describe() == "roll production back from web@1.2.0 to web@1.0.0"


def test_rollback_to_an_unknown_or_bad_version_is_refused_saying_which() -> None:
    history = _history("1.0.0", "1.1.0")
    with pytest.raises(
        NotFound, match=r"^no artifact web@9\.9\.9 is registered: it cannot be deployed again$"
    ):
        plan_rollback("production", history, _known("1.0.0", "1.1.0"), "9.9.9")
    with pytest.raises(InvalidInput, match=r"^web@1\.0\.0 is marked bad \(broken\); pick another version$"):
        plan_rollback("production", history, _known("1.0.0", "1.1.0", bad=("1.0.0",)), "1.0.0")


def test_an_artifact_registered_over_the_api_rolls_back_with_the_pipeline_that_deployed_it() -> None:
    history = _history("1.0.0", "1.1.0")
    unowned = _known("1.0.0", "1.1.0", "2.0.0", pipeline=None)
    assert plan_rollback("production", history, unowned, "1.0.0").pipeline == "web"
    # never deployed here: the pipeline of the latest deployment
    assert plan_rollback("production", history, unowned, "2.0.0").pipeline == "web"
    owned = _known("1.0.0", pipeline="web-legacy")
    assert plan_rollback("production", history, owned, "1.0.0").pipeline == "web-legacy"


def test_a_failed_rollback_is_not_retried_once_its_target_is_marked_bad() -> None:
    history = _history("1.0.0", "1.0.1", "1.0.2", "<1.0.1!")
    assert plan_rollback("production", history, _registry()).target.ref == "web@1.0.1"  # (retried)
    # nor reversed: 1.0.2 is what people were escaping; the good one before both is next
    plan = plan_rollback("production", history, _registry("1.0.1"))
    assert plan.target.ref == "web@1.0.0"
    assert plan.describe() == "roll production back from web@1.0.1 to web@1.0.0"
    with pytest.raises(NotFound) as refused:  # and with nothing before them, it says so
        plan_rollback("production", _history("1.0.1", "1.0.2", "<1.0.1!"), _registry("1.0.1"))
    assert refused.value.message == (
        "no earlier good deployment to production to roll back to "
        "(passed over: web@1.0.2, being rolled back from)"
    )
    with pytest.raises(NotFound) as refused:
        plan_rollback("production", history, _registry("1.0.0", "1.0.1"))
    assert refused.value.message.endswith(
        "(passed over: web@1.0.2, being rolled back from; no longer deployable: web@1.0.0)"
    )


def test_artifacts_no_longer_deployable_are_named_when_nothing_is_left() -> None:
    """Marked bad, or gone from the registry: a rollback says what it passed over."""
    history = _history("1.0.0", "1.1.0", "1.2.0")
    with pytest.raises(NotFound) as refused:
        plan_rollback("production", history, _known("1.1.0", "1.2.0", bad=("1.1.0",)))
    assert refused.value.message == (
        "no earlier good deployment to production to roll back to "
        "(passed over, no longer deployable: web@1.1.0, web@1.0.0)"
    )
