"""``/deploy artifacts`` and ``/deploy mark-bad`` as a person types them, through
``shipyard console`` (the same verbs Slack uses), on artifacts registered in its database."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.artifacts import make_spec
from storage.artifacts import ArtifactStore
from storage.store import SqlStore
from tests.bot.test_console import shipyard

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def test_listing_artifacts_and_marking_one_bad_from_chat(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    assert shipyard(tmp_path, "migrate").returncode == 0
    store = SqlStore(f"sqlite:///{tmp_path}/shipyard.db")
    try:
        artifact_store = ArtifactStore(store)
        for i, ref in enumerate(["web@1.4.1", "api@2.0.0", "web@1.4.2"]):
            name, _, version = ref.partition("@")
            spec = make_spec(
                name,
                version,
                f"sha256:{i + 10:064x}",
                f"oci://r.example/{name}:{version}",
                {"commit": f"c0ffee{i}"},
            )
            artifact_store.register(spec, by="ci", now=T0 + timedelta(minutes=i), pipeline=name)
    finally:
        store.dispose()
    for who, role in [("alice", "deployer"), ("bob", "approver")]:
        assert shipyard(tmp_path, "access", "grant", who, role).returncode == 0
    script = textwrap.dedent(
        """\
        /deploy artifacts
        /deploy artifacts wbe
        /deploy mark-bad web@1.4.2 "500s on login"
        as bob
        /deploy mark-bad web@1.4.2
        /deploy mark-bad web@1.4.2 "500s on login after deploy"
        /deploy mark-bad web@1.4.2 "again"
        /deploy mark-bad web@9.9.9 "typo"
        /deploy artifacts web
        /deploy artifacts web@1.4.2
        """
    )
    done = shipyard(tmp_path, "console", "--user", "alice", stdin=script)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    as_alice, as_bob = out.split("(you are now bob)")
    listed = [line for line in as_alice.splitlines() if line.startswith("• ")]
    assert listed == [  # newest first, digest short, who and when
        f"• web@1.4.2 `sha256:{0:012x}` — ci from web, 2026-11-27 09:02 UTC",
        f"• api@2.0.0 `sha256:{0:012x}` — ci from api, 2026-11-27 09:01 UTC",
        f"• web@1.4.1 `sha256:{0:012x}` — ci from web, 2026-11-27 09:00 UTC",
    ]
    assert "Unknown artifact `wbe`. Did you mean `web`?" in as_alice
    assert "alice has deployer; approve needs one of: admin, approver" in as_alice

    assert "Say which artifact and why" in as_bob
    assert "⊘ bob marked web@1.4.2 (`sha256:000000000000`) bad: 500s on login after deploy." in as_bob
    assert "web@1.4.2 was already marked bad by bob" in as_bob
    assert "No artifact `web@9.9.9`" in as_bob
    web = [line for line in as_bob.splitlines() if "web@1.4." in line and "UTC" in line and "—" in line]
    assert web[0].startswith("⊘ web@1.4.2") and "marked bad by bob" in web[0] and "after deploy" in web[0]
    assert web[1].startswith("• web@1.4.1")
    assert (
        f"sha256:{12:064x}" in as_bob
        and "oci://r.example/web:1.4.2" in as_bob
        and "commit: c0ffee2" in as_bob
    )

    audit = shipyard(tmp_path, "audit", "list", "--limit", "20").stdout
    marks = [line for line in audit.splitlines() if "mark_artifact_bad" in line]
    assert len(marks) == 3, audit  # the mark and the two refusals that reached the registry
    assert any("accepted" in line and "bob" in line for line in marks), marks
