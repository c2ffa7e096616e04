"""Artifacts: immutable, versioned outputs a deployment ships (an image, a binary, a bundle).

An artifact is ``name@version`` with a digest of its content and a URI to fetch it from. The
pair (name, version) names one content forever: registering it again with the same digest is a
harmless repeat, with another digest a refusal. That is what makes promotion and rollback
exact, so versions must be immutable identifiers (``1.4.2``, a commit sha), never references
that move (``latest``, ``main``, a branch).

An artifact is ``registered`` (deployable) until someone marks it ``bad``, which is final.

A job registers one by writing a line to ``$SHIPYARD_OUTPUT``::

    artifact=web@1.4.2 digest=sha256:<64 hex> uri=oci://registry/web@sha256:<hex> commit=abc1234

``core.runtime.executor.read_outputs`` splits at the first ``=``, so the job's outputs carry the key
``artifact`` with the rest of the line as its value; ``parse_artifact_output`` reads that value.

Pure: no I/O, no clock. The store (``storage.artifacts``) keeps the rows.
"""

from __future__ import annotations

import re
import shlex
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final

from core.commands import TriggerRun
from core.definition import NAME
from core.errors import CommandRefused, InvalidInput, NotFound
from core.model import Run
from core.states import ArtifactStatus, can_transition

#: the output key a job writes its artifact under
OUTPUT_KEY: Final = "artifact"
#: names follow the pipeline-name rule: lowercase letters, digits and '-'
NAME_RE: Final = re.compile(NAME)
VERSION_MAX: Final = 128
VERSION_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
#: versions people use as moving references (compared case-insensitively)
MUTABLE_VERSIONS: Final = frozenset(
    {"latest", "stable", "edge", "nightly", "head", "main", "master", "develop", "dev", "trunk"}
)
#: hex digits each digest algorithm has
DIGEST_HEX: Final[Mapping[str, int]] = {"sha256": 64, "sha512": 128}
URI_MAX: Final = 2000
URI_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[!-~]+$")
METADATA_KEY_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")
METADATA_MAX_KEYS: Final = 50
METADATA_VALUE_MAX: Final = 1000
REASON_MAX: Final = 1000
#: a reason needs one character that is not ASCII space or control (the same in every regex
#: dialect, so the API's schema and this check agree)
VISIBLE: Final = re.compile(r"[^\x00-\x20\x7f]")
_INVISIBLE: Final = "".join(map(chr, range(0x21))) + "\x7f"

_WHY_IMMUTABLE = (
    "a tag that moves names other content tomorrow, so what was deployed could not be deployed "
    "again or rolled back to; use the version (e.g. 1.4.2) or the commit sha"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactSpec:
    """What a job or a CI system says it built: validated, not yet registered."""

    name: str
    version: str
    digest: str
    uri: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact:
    """A registered artifact. Everything but the ``bad*`` fields is fixed at registration."""

    id: str
    name: str
    version: str
    digest: str
    uri: str
    metadata: Mapping[str, str]
    run_id: str | None  #: the run whose job registered it (None: registered over the API)
    pipeline: str | None
    created_by: str
    created_at: datetime
    bad: bool = False
    bad_reason: str | None = None
    bad_by: str | None = None
    bad_at: datetime | None = None

    @property
    def ref(self) -> str:
        """The name people use: ``web@1.4.2``."""
        return f"{self.name}@{self.version}"

    @property
    def status(self) -> ArtifactStatus:
        return ArtifactStatus.BAD if self.bad else ArtifactStatus.REGISTERED

    @property
    def short_digest(self) -> str:
        """``sha256:3f2a9c1b7d4e``: enough to tell digests apart on a screen."""
        algorithm, _, hexdigits = self.digest.partition(":")
        return f"{algorithm}:{hexdigits[:12]}"


class DigestConflict(CommandRefused):
    """This name and version are registered with another digest."""

    kind = "conflict"

    def __init__(self, registered: Artifact, offered: str) -> None:
        self.registered = registered
        self.offered = offered
        super().__init__(
            f"{registered.ref} is already registered with digest {registered.digest} "
            f"(by {registered.created_by}); it cannot be registered again with {offered}: "
            "an artifact version names one content forever, so publish the new build as a new version"
        )


class AlreadyBad(CommandRefused):
    """The artifact was marked bad before."""

    kind = "conflict"

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        when = f" at {artifact.bad_at:%Y-%m-%d %H:%M} UTC" if artifact.bad_at else ""
        super().__init__(
            f"{artifact.ref} was already marked bad by {artifact.bad_by}{when}: {artifact.bad_reason}"
        )


# -- validation -------------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"artifact name {name!r} is not valid: use 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit (like pipeline names)"
        )
    return name


def check_version(version: str) -> str:
    """The version, if it is an immutable identifier; else ``InvalidInput`` saying why not."""
    if not version:
        raise InvalidInput("an artifact needs a version (e.g. 1.4.2 or the commit sha)")
    if version.lower() in MUTABLE_VERSIONS:
        raise InvalidInput(f"version {version!r} is a mutable reference, not a version: {_WHY_IMMUTABLE}")
    if "/" in version:
        raise InvalidInput(
            f"version {version!r} looks like a branch name (it contains '/'), and a branch moves: "
            + _WHY_IMMUTABLE
        )
    if not any(c.isdigit() for c in version):
        raise InvalidInput(
            f"version {version!r} has no digit, which is how branch and tag names look, and those "
            "move: " + _WHY_IMMUTABLE
        )
    if len(version) > VERSION_MAX or not VERSION_RE.fullmatch(version):
        raise InvalidInput(
            f"version {version!r} is not valid: use up to {VERSION_MAX} letters, digits and . _ + -, "
            "starting with a letter or digit"
        )
    return version


def check_digest(digest: str) -> str:
    """``<algorithm>:<hex>`` with the right length, hex in lowercase (so equal digests compare
    equal however they were typed)."""
    algorithm, sep, hexdigits = digest.partition(":")
    algorithm = algorithm.lower()
    known = ", ".join(f"{a}:<{n} hex digits>" for a, n in DIGEST_HEX.items())
    if not sep or algorithm not in DIGEST_HEX:
        raise InvalidInput(f"digest {digest[:80]!r} is not valid: use {known}")
    want = DIGEST_HEX[algorithm]
    if len(hexdigits) != want or not all(c in "0123456789abcdefABCDEF" for c in hexdigits):
        raise InvalidInput(
            f"digest {digest[:80]!r} is not valid: {algorithm} needs exactly {want} hex digits "
            f"(got {len(hexdigits)} characters)"
        )
    return f"{algorithm}:{hexdigits.lower()}"


def check_uri(uri: str) -> str:
    if not uri or len(uri) > URI_MAX or not URI_RE.fullmatch(uri):
        raise InvalidInput(
            f"uri {uri[:80]!r} is not valid: say where the artifact can be fetched, with a scheme, "
            "in ASCII without spaces (percent-encode the rest), at most "
            f"{URI_MAX} characters (e.g. oci://registry.example.com/web@sha256:…, s3://bucket/web-1.4.2.tgz)"
        )
    return uri


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if len(metadata) > METADATA_MAX_KEYS:
        raise InvalidInput(f"metadata has {len(metadata)} keys; at most {METADATA_MAX_KEYS} are kept")
    for key, value in metadata.items():
        if not METADATA_KEY_RE.fullmatch(key):
            raise InvalidInput(
                f"metadata key {key[:80]!r} is not valid: use letters, digits and _ . -, "
                "starting with a letter or '_'"
            )
        if len(value) > METADATA_VALUE_MAX:
            raise InvalidInput(f"metadata {key} is longer than {METADATA_VALUE_MAX} characters")
    return dict(metadata)


def check_reason(reason: str) -> str:
    """Why an artifact is bad: people read it before the next rollback, so it must say something
    (a visible character; ``VISIBLE`` is also the API's documented pattern)."""
    reason = reason.strip(_INVISIBLE)
    if not reason:
        raise InvalidInput("say why the artifact is bad (the reason is shown wherever it is refused)")
    if len(reason) > REASON_MAX:
        raise InvalidInput(f"the reason is longer than {REASON_MAX} characters")
    return reason


def make_spec(
    name: str, version: str, digest: str, uri: str, metadata: Mapping[str, str] | None = None
) -> ArtifactSpec:
    """A validated ``ArtifactSpec`` (the digest normalized), or ``InvalidInput``."""
    return ArtifactSpec(
        name=check_name(name),
        version=check_version(version),
        digest=check_digest(digest),
        uri=check_uri(uri),
        metadata=check_metadata(metadata or {}),
    )


def split_ref(ref: str) -> tuple[str, str]:
    """``web@1.4.2`` → ``("web", "1.4.2")``; ``InvalidInput`` if there is no ``@`` between
    two non-empty parts. Not a validation of either: lookups of unknown names just find nothing."""
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise InvalidInput(f"name an artifact as name@version, e.g. web@1.4.2 (got {ref[:80]!r})")
    return name, version


def artifact_id(text: str) -> str | None:
    """``text`` as an artifact id (a UUID, in its canonical form), or None if it is not one."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def to_spec(artifact: Artifact) -> ArtifactSpec:
    """What a deploy job is told about a registered artifact."""
    return ArtifactSpec(
        name=artifact.name,
        version=artifact.version,
        digest=artifact.digest,
        uri=artifact.uri,
        metadata=dict(artifact.metadata),
    )


def new_id() -> str:
    return str(uuid.uuid4())


# -- a job's output ---------------------------------------------------------------------------
def parse_artifact_output(value: str) -> ArtifactSpec:
    """Read the value of a job's ``artifact`` output: ``<name>@<version> digest=… uri=…``
    followed by any ``key=value`` metadata (quote values with spaces: ``note="hot fix"``)."""
    try:
        tokens = shlex.split(value)
    except ValueError as exc:
        raise InvalidInput(f"artifact output {value[:120]!r} cannot be read: {exc}") from None
    example = "artifact=web@1.4.2 digest=sha256:<64 hex> uri=oci://registry/web:1.4.2 [key=value…]"
    refs = [t for t in tokens if "=" not in t]
    if len(refs) != 1:
        raise InvalidInput(
            f"artifact output {value[:120]!r} must name exactly one name@version; write: {example}"
        )
    name, version = split_ref(refs[0])
    fields: dict[str, str] = {}
    for token in tokens:
        if "=" not in token:
            continue
        key, _, item = token.partition("=")
        if key in fields:
            raise InvalidInput(f"artifact output names {key} twice")
        fields[key] = item
    missing = [k for k in ("digest", "uri") if not fields.get(k)]
    if missing:
        raise InvalidInput(f"artifact output {value[:120]!r} has no {' or '.join(missing)}; write: {example}")
    digest, uri = fields.pop("digest"), fields.pop("uri")
    return make_spec(name, version, digest, uri, fields)


# -- the state machine ------------------------------------------------------------------------
def check_mark_bad(artifact: Artifact) -> None:
    """Raise ``AlreadyBad`` unless the transition table lets ``artifact`` become bad."""
    if not can_transition("artifact", artifact.status, ArtifactStatus.BAD):
        raise AlreadyBad(artifact)


def check_deployable(artifact: Artifact) -> None:
    """Raise ``CommandRefused`` if ``artifact`` must not be deployed or promoted (it is bad).
    For the engine's promotion and rollback checks."""
    if artifact.bad:
        when = f" at {artifact.bad_at:%Y-%m-%d %H:%M} UTC" if artifact.bad_at else ""
        raise CommandRefused(
            f"{artifact.ref} is marked bad (by {artifact.bad_by}{when}: {artifact.bad_reason}); "
            "it cannot be deployed or promoted again: pick another version"
        )


def not_found(ref: str) -> NotFound:
    return NotFound(f"no artifact {ref!r} (name one by its id or as name@version, e.g. web@1.4.2)")


def as_built(command: TriggerRun, artifact: Artifact, built: Run | None) -> TriggerRun:
    """A promotion or rollback deploys what a run built: what the command leaves out (parameters,
    branch, revision) comes from that run, so the deploy stages see what the build saw."""
    if built is None:
        return replace(command, artifact_id=artifact.id)
    return replace(
        command,
        artifact_id=artifact.id,
        parameters={**built.parameters, **command.parameters},
        branch=command.branch or built.branch,
        source_revision=command.source_revision or built.source_revision,
    )
