"""The pipelines directory: one YAML file per pipeline, each distinct content a new version.

``refresh`` re-reads only files whose modification time or size changed, so adapters can call
it before every trigger. An invalid file never replaces the last good version; its problems
are reported (and logged) instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from core.definition import PipelineDef, parse_pipeline
from core.errors import DefinitionError
from core.runtime.service import Service

log = logging.getLogger(__name__)
PATTERNS = ("*.yml", "*.yaml")


@dataclass
class Report:
    added: list[str] = field(default_factory=list)  #: "web v3"
    problems: list[str] = field(default_factory=list)


def pipeline_files(directory: Path) -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in directory.glob(pattern) if p.is_file())


def check_files(paths: list[Path]) -> tuple[list[tuple[Path, PipelineDef, str]], list[str]]:
    """Parse files; problems name the file, the field and what is wrong. Two files may not
    define the same pipeline."""
    good: list[tuple[Path, PipelineDef, str]] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
            definition = parse_pipeline(text, str(path))
        except OSError as exc:
            problems.append(f"{path}: cannot read: {exc.strerror}")
            continue
        except UnicodeDecodeError:
            problems.append(f"{path}: not UTF-8 text")
            continue
        except DefinitionError as exc:
            problems.extend(exc.problems)
            continue
        if definition.name in seen:
            problems.append(
                f"{path}: name: pipeline {definition.name!r} is already defined in {seen[definition.name]}"
            )
            continue
        seen[definition.name] = path
        good.append((path, definition, text))
    return good, problems


class Catalog:
    def __init__(self, service: Service, directory: Path) -> None:
        self.service = service
        self.directory = directory
        self._stamps: dict[Path, tuple[int, int]] = {}

    def refresh(self) -> Report:
        """Register every new or changed pipeline file as a new version."""
        report = Report()
        if not self.directory.is_dir():
            report.problems.append(f"{self.directory}: pipelines directory does not exist")
            return report
        files = pipeline_files(self.directory)
        stamps = {p: _stamp(p) for p in files}
        if stamps == self._stamps:
            return report
        good, report.problems = check_files(files)
        for path, definition, text in good:
            try:
                version, created = self.service.register_pipeline(definition, text, str(path))
            except DefinitionError as exc:
                report.problems.extend(f"{path}: {problem}" for problem in exc.problems)
                continue
            if created:
                report.added.append(f"{version.pipeline} v{version.version}")
        for problem in report.problems:
            log.warning("pipeline not loaded: %s", problem)
        self._stamps = stamps if not report.problems else {}
        return report


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
