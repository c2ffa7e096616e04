"""The pipelines directory (``core.runtime.catalog``) on a real database: every new or changed
file becomes a new version, an unchanged directory is not read again, and a file that is wrong
is reported by name while the last good version of its pipeline stays in use."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from core.runtime.catalog import Catalog
from core.runtime.service import Service
from tests.pipelines import canary, one_job


@pytest.fixture
def pipelines(tmp_path: Path) -> Path:
    directory = tmp_path / "pipelines"
    directory.mkdir()
    return directory


@pytest.fixture
def catalog(sqlite_url: str, make_service: Callable[..., Service], pipelines: Path) -> Catalog:
    return Catalog(make_service(sqlite_url), pipelines)


def latest(catalog: Catalog, name: str) -> tuple[int, str]:
    with catalog.service.store.reading() as tx:
        version = tx.latest_version(name)
    assert version is not None, f"no version of {name}"
    return version.version, version.source


def write(path: Path, text: str, *, ns: int) -> None:
    """Write ``text`` with the modification time ``ns`` (so a test does not depend on the clock's
    resolution to tell two writes apart)."""
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(ns, ns))


def test_every_yaml_file_becomes_a_pipeline_and_other_files_are_ignored(
    catalog: Catalog, pipelines: Path
) -> None:
    write(pipelines / "web.yml", one_job("web"), ns=1)
    write(pipelines / "api.yaml", one_job("api"), ns=1)
    write(pipelines / "notes.txt", "name: notes\n", ns=1)
    (pipelines / "old.yml").mkdir()  # (a directory is not a file, whatever its name)
    report = catalog.refresh()
    assert (sorted(report.added), report.problems) == (["api v1", "web v1"], [])
    assert latest(catalog, "web") == (1, one_job("web"))


def test_only_a_changed_file_makes_a_new_version(catalog: Catalog, pipelines: Path) -> None:
    write(pipelines / "web.yml", one_job("web"), ns=1)
    write(pipelines / "api.yml", one_job("api"), ns=1)
    assert len(catalog.refresh().added) == 2
    assert catalog.refresh().added == []  # nothing changed on disk
    write(pipelines / "web.yml", one_job("web", run='"make deploy"'), ns=2)
    assert catalog.refresh().added == ["web v2"]
    write(pipelines / "api.yml", one_job("api"), ns=3)  # touched, the same content
    assert catalog.refresh().added == []
    assert latest(catalog, "api")[0] == 1 and latest(catalog, "web")[0] == 2


def test_a_missing_directory_is_reported_not_raised(
    sqlite_url: str, make_service: Callable[..., Service], tmp_path: Path
) -> None:
    report = Catalog(make_service(sqlite_url), tmp_path / "nowhere").refresh()
    assert report.added == []
    assert report.problems == [f"{tmp_path / 'nowhere'}: pipelines directory does not exist"]


def test_an_invalid_file_keeps_the_last_good_version_and_is_reported_until_fixed(
    catalog: Catalog, pipelines: Path, caplog: pytest.LogCaptureFixture
) -> None:
    web = pipelines / "web.yml"
    write(web, one_job("web"), ns=1)
    write(pipelines / "api.yml", one_job("api"), ns=1)
    catalog.refresh()
    write(web, "name: web\nstages: nope\n", ns=2)
    with caplog.at_level(logging.WARNING, logger="core.runtime.catalog"):
        report = catalog.refresh()
    assert report.added == [] and len(report.problems) == 1
    assert report.problems[0].startswith(str(web)) and "stages" in report.problems[0]
    assert [r.getMessage() for r in caplog.records] == [f"pipeline not loaded: {report.problems[0]}"]
    assert latest(catalog, "web") == (1, one_job("web"))  # still the last good one
    assert catalog.refresh().problems == report.problems  # said again, not forgotten
    write(web, one_job("web", run='"make deploy"'), ns=3)
    assert catalog.refresh().added == ["web v2"]
    assert catalog.refresh().problems == []


def test_a_file_that_is_not_utf8_is_reported_by_name(catalog: Catalog, pipelines: Path) -> None:
    (pipelines / "latin1.yml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    write(pipelines / "web.yml", one_job("web"), ns=1)
    report = catalog.refresh()
    assert report.added == ["web v1"]  # the others load regardless
    assert report.problems == [f"{pipelines / 'latin1.yml'}: not UTF-8 text"]


def test_a_file_that_cannot_be_read_is_reported_with_the_reason(
    catalog: Catalog, pipelines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The tests run as root, whom permissions do not stop: the read fails by a patch.)"""
    secret = pipelines / "secret.yml"
    write(secret, one_job("secret"), ns=1)
    write(pipelines / "web.yml", one_job("web"), ns=1)
    read_text = Path.read_text
    refused: list[Path] = []

    def unreadable(path: Path, *args: object, **kw: object) -> str:
        if path == secret:
            refused.append(path)
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", unreadable)
    report = catalog.refresh()
    assert refused == [secret]
    assert report.problems == [f"{secret}: cannot read: Permission denied"]
    assert report.added == ["web v1"]


def test_two_files_may_not_define_the_same_pipeline(catalog: Catalog, pipelines: Path) -> None:
    write(pipelines / "a.yml", one_job("web"), ns=1)
    write(pipelines / "b.yml", one_job("web", run='"make other"'), ns=1)
    report = catalog.refresh()
    assert report.added == ["web v1"]
    assert report.problems == [
        f"{pipelines / 'b.yml'}: name: pipeline 'web' is already defined in {pipelines / 'a.yml'}"
    ]
    assert latest(catalog, "web") == (1, one_job("web"))  # the first file, in name order


def test_a_pipeline_the_configuration_cannot_run_is_reported_by_file(
    catalog: Catalog, pipelines: Path
) -> None:
    """Valid on its own, refused by the service: a rollout through a router of an environment
    that is not configured."""
    write(pipelines / "shop.yml", canary("shop", ["set_weight: 10"]), ns=1)
    write(pipelines / "web.yml", one_job("web"), ns=1)
    report = catalog.refresh()
    assert report.added == ["web v1"]
    assert report.problems == [
        f"{pipelines / 'shop.yml'}: stages.0.strategy.canary: environment 'production' is not "
        "configured, so it has no routers"
    ]
    with catalog.service.store.reading() as tx:
        assert tx.latest_version("shop") is None
