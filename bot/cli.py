"""``shipyard``: serve the service, validate pipeline files, run a pipeline locally, and
control runs from a terminal (trigger, status, approve, cancel, …).

Every control command goes through the same ``Service.handle`` as Slack and the REST API,
so it is audited the same way (channel ``cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from bot import cli_access, cli_runner, cli_secrets, cli_slack, logs
from bot.bootstrap import Shipyard, build
from bot.config import ConfigError, Settings, load_settings, unknown_variables
from bot.progress import describe_event, render_state
from core.commands import (
    ApproveGate,
    CancelRun,
    Command,
    PauseRun,
    RejectGate,
    ResumeRun,
    RetryRun,
    TriggerRun,
)
from core.engine import Decision
from core.model import Actor, RunState
from core.runtime.catalog import check_files, pipeline_files
from core.runtime.service import Service
from core.states import RUN_TERMINAL, GateStatus, RunStatus

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"shipyard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DBAPIError as exc:
        print(f"shipyard: the database is not usable: {str(exc.orig).strip()}", file=sys.stderr)
        print("  (check SHIPYARD_DATABASE_URL and that the server is up)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_CANCELED
    except BrokenPipeError:
        # the reader went away (`shipyard status | head -1`): nothing more to say, and nothing
        # left to flush at exit either (Python would print a second error then)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # a port in use, no usable temporary directory: one line, no traceback
        print(f"shipyard: {exc}", file=sys.stderr)
        return EXIT_FAILED


#: how a command ends whose output nobody reads any more (128 + SIGPIPE, as a shell reports it)
EXIT_BROKEN_PIPE = 141

#: who clears gates in ``shipyard run`` on a throwaway database
STAND_IN = "local-approver"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shipyard", description="Deployment pipelines you drive from Slack.")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("serve", help="run the service: engine, built-in runner, HTTP")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("validate", help="check pipeline files; exits 1 if any is invalid")
    s.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("run", help="run one pipeline here and now, showing progress")
    s.add_argument("pipeline", help="pipeline name (from SHIPYARD_PIPELINES_DIR) or a pipeline file")
    _trigger_args(s)
    s.add_argument("--yes", action="store_true", help="approve manual gates without asking")
    s.add_argument("--database-url", help="keep the run in this database (default: a throwaway one)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("trigger", help="start a run (a serving process executes it)")
    s.add_argument("pipeline")
    _trigger_args(s)
    s.add_argument("--idempotency-key")
    s.set_defaults(func=cmd_trigger)

    s = sub.add_parser("status", help="show a run, or the latest runs")
    s.add_argument("run", nargs="?", help="run id or pipeline#number")
    s.add_argument("--pipeline")
    s.set_defaults(func=cmd_status)

    for name, help_text in (
        ("cancel", "cancel a run and kill its jobs"),
        ("pause", "finish running jobs, start nothing new"),
        ("resume", "continue a paused run"),
        ("retry", "run a failed run again from where it failed"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("run")
        if name == "cancel":
            s.add_argument("--reason", default="")
        s.set_defaults(func=cmd_control, action=name)

    for name in ("approve", "reject"):
        s = sub.add_parser(name, help=f"{name} an open gate")
        s.add_argument("run")
        s.add_argument("gate", help="the gated stage's name")
        s.add_argument("--comment" if name == "approve" else "--reason", default="", dest="note")
        s.set_defaults(func=cmd_gate, action=name)

    s = sub.add_parser("logs", help="print a job's output")
    s.add_argument("run")
    s.add_argument("job", help="stage/job, e.g. build/compile")
    s.add_argument("--attempt", type=int)
    s.set_defaults(func=cmd_logs)

    s = sub.add_parser("migrate", help="upgrade the database schema (serve does this too)")
    s.set_defaults(func=cmd_migrate)
    cli_access.register(sub)
    cli_slack.register(sub)
    cli_runner.register(sub)
    cli_secrets.register(sub)
    return p


def _trigger_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "-p", "--param", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter"
    )
    s.add_argument("--revision", help="source revision being deployed")


def _params(pairs: list[str]) -> dict[str, str]:
    """``-p NAME=VALUE`` pairs; a malformed one is a usage error (exit 2), as argparse's are."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            print(f"shipyard: parameter {pair!r} must look like NAME=VALUE", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        params[name] = value
    return params


def _me() -> Actor:
    return Actor(getpass.getuser(), "cli")


def _setup_logging(settings: Settings) -> None:
    logs.setup(settings.log_level, settings.log_format)


def _warn_unknown_variables() -> None:
    """Once at start-up, in the service's log: a misspelled setting would be ignored unsaid."""
    log = logging.getLogger("bot.config")
    for variable, like in unknown_variables(os.environ):
        hint = f"did you mean {like}?" if like else "no setting is named like it (docs/configuration.md)"
        log.warning("%s is no setting and is ignored: %s", variable, hint)


def _check_work_dir(settings: Settings) -> None:
    """The work directory can be made and written to: said once, by its setting's name, before
    the service starts, instead of a traceback from whichever part of it gets there first."""
    path = settings.work_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"SHIPYARD_WORK_DIR: cannot use {path}: {exc.strerror or exc}") from None


# -- serve / validate / migrate ------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from bot.app import create_app

    settings = load_settings(host=args.host, port=args.port)
    _check_work_dir(settings)
    _setup_logging(settings)
    _warn_unknown_variables()
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.kill_grace_seconds + 5,
        access_log_class=logs.AccessLog,
        print=lambda _m: print(f"shipyard serving on http://{settings.host}:{settings.port}", flush=True),
    )
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    files: list[Path] = []
    missing = []
    for path in args.paths:
        if path.is_dir():
            files.extend(pipeline_files(path))
        elif path.exists():
            files.append(path)
        else:
            missing.append(f"{path}: no such file or directory")
    good, problems = check_files(files)
    problems = missing + problems
    for problem in problems:
        print(problem, file=sys.stderr)
    for path, definition, _ in good:
        stages = len(definition.stages)
        print(f"ok  {path}: {definition.name} ({stages} stage{'s' if stages != 1 else ''})")
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_FAILED
    if not files:
        print("no pipeline files found", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage.migrate import upgrade

    settings = load_settings()
    if newer := upgrade(settings.database_url):
        print(f"the database schema is at {newer}, from a newer release of Shipyard: left as it is")
    else:
        print("database is up to date")
    return EXIT_OK


# -- run locally ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    params = _params(args.param)
    with tempfile.TemporaryDirectory(prefix="shipyard-run-") as tmp:
        overrides: dict[str, object] = {"database_url": args.database_url or f"sqlite:///{tmp}/shipyard.db"}
        target = Path(args.pipeline)
        pipeline = args.pipeline
        if target.suffix in (".yml", ".yaml") and target.is_file():
            good, problems = check_files([target])
            if problems:
                print("\n".join(problems), file=sys.stderr)
                return EXIT_USAGE
            only = Path(tmp) / "pipelines"
            only.mkdir()
            shutil.copy(target, only / target.name)
            overrides["pipelines_dir"] = only
            pipeline = good[0][1].name
        if not args.database_url:
            overrides["work_dir"] = Path(tmp) / "work"
        settings = load_settings(**overrides)
        _check_work_dir(settings)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("core.runtime.catalog").setLevel(logging.ERROR)  # printed below, once
        # on a throwaway database nobody else is there to approve: gates are cleared by a
        # stand-in approver, so separation of duties still holds for the recorded approvals
        approver = _me() if args.database_url else Actor(STAND_IN, "cli")
        return asyncio.run(_run_locally(settings, pipeline, params, args.revision, args.yes, approver))


async def _run_locally(
    settings: Settings,
    pipeline: str,
    params: dict[str, str],
    revision: str | None,
    yes: bool,
    approver: Actor,
) -> int:
    shipyard = build(settings)
    await shipyard.start()
    try:
        report = await shipyard.orchestrator.db(shipyard.catalog.refresh)
        for problem in report.problems:
            print(f"warning: {problem}", file=sys.stderr)
        decision = await shipyard.orchestrator.handle(
            TriggerRun(pipeline=pipeline, actor=_me(), parameters=params, source_revision=revision)
        )
        if not decision.accepted or decision.state is None:
            print(f"shipyard: {decision.reason}", file=sys.stderr)
            return EXIT_USAGE
        run_id = decision.state.run.id
        print(f"{decision.state.run.ref} started (run id {run_id})")
        try:
            state = await _follow(shipyard, run_id, yes, approver)
        except (KeyboardInterrupt, asyncio.CancelledError):
            await shipyard.orchestrator.handle(CancelRun(run_id=run_id, actor=_me(), reason="interrupted"))
            print("canceled")
            return EXIT_CANCELED
        print()
        print(render_state(state, tail=lambda job: shipyard.store.tail_log(job.id, 15)))
        if state.run.status is RunStatus.SUCCEEDED:
            return EXIT_OK
        return EXIT_CANCELED if state.run.status is RunStatus.CANCELED else EXIT_FAILED
    finally:
        await shipyard.stop()


async def _follow(shipyard: Shipyard, run_id: str, yes: bool, approver: Actor) -> RunState:
    seq = 0
    asked: set[str] = set()
    while True:
        # read the state before the events, so a finished run's last events are always shown
        state = await shipyard.orchestrator.db(shipyard.service.find_run, run_id)
        assert state is not None
        events = await shipyard.orchestrator.db(shipyard.store.events_after, seq, 500, run_id)
        for event in events:
            seq = event.seq
            line = describe_event(event, state)
            if line:
                print(line, flush=True)
            if event.subject == "job" and event.to_status in ("failed", "timed_out"):
                for text in await shipyard.orchestrator.db(shipyard.store.tail_log, event.subject_id, 10):
                    print(f"      | {text}")
        if len(events) == 500:
            continue
        if state.run.status in RUN_TERMINAL:
            return state
        for gate in state.gates:
            if gate.status is GateStatus.OPEN and gate.kind == "manual" and gate.id not in asked:
                asked.add(gate.id)
                await _decide_gate(shipyard, run_id, gate.stage_name, gate.approvers, yes, approver)
        if not events:
            await shipyard.orchestrator.wait_for_events(1.0)


async def _decide_gate(
    shipyard: Shipyard, run_id: str, stage: str, approvers: tuple[str, ...], yes: bool, approver: Actor
) -> None:
    who = ", ".join(approvers)
    if yes:
        approve = True
    elif sys.stdin.isatty():
        answer = await asyncio.to_thread(input, f"Gate {stage} needs approval ({who}). Approve? [y/N] ")
        approve = answer.strip().lower() in ("y", "yes")
    else:
        print(f"gate {stage} needs approval ({who}); rerun with --yes to approve gates", file=sys.stderr)
        approve = False
    command: Command = (
        ApproveGate(run_id=run_id, gate=stage, actor=approver, comment="shipyard run")
        if approve
        else RejectGate(run_id=run_id, gate=stage, actor=approver, reason="not approved")
    )
    decision = await shipyard.orchestrator.handle(command)
    if not decision.accepted:
        print(f"gate {stage}: {decision.reason}; canceling", file=sys.stderr)
        await shipyard.orchestrator.handle(CancelRun(run_id=run_id, actor=_me(), reason=decision.reason))


# -- control commands (against the configured database) ------------------------------------


def _service() -> tuple[Service, Settings]:
    from storage.migrate import upgrade
    from storage.store import SqlStore

    settings = load_settings()
    upgrade(settings.database_url)
    return Service(SqlStore(settings.database_url, pool_size=1)), settings


def _report(decision: Decision) -> int:
    if not decision.accepted:
        print(f"shipyard: {decision.reason}", file=sys.stderr)
        return EXIT_FAILED
    assert decision.state is not None
    run = decision.state.run
    note = f" ({decision.reason})" if decision.reason else ""
    print(f"{run.ref} {run.status}{note}  id {run.id}")
    return EXIT_OK


def cmd_trigger(args: argparse.Namespace) -> int:
    from core.runtime.catalog import Catalog

    service, settings = _service()
    report = Catalog(service, settings.pipelines_dir).refresh()
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return _report(
        service.handle(
            TriggerRun(
                pipeline=args.pipeline,
                actor=_me(),
                parameters=_params(args.param),
                source_revision=args.revision,
                idempotency_key=args.idempotency_key,
            )
        )
    )


def cmd_control(args: argparse.Namespace) -> int:
    service, _ = _service()
    command: Command
    if args.action == "cancel":
        command = CancelRun(run_id=args.run, actor=_me(), reason=args.reason)
    elif args.action == "pause":
        command = PauseRun(run_id=args.run, actor=_me())
    elif args.action == "resume":
        command = ResumeRun(run_id=args.run, actor=_me())
    else:
        command = RetryRun(run_id=args.run, actor=_me())
    return _report(service.handle(command))


def cmd_gate(args: argparse.Namespace) -> int:
    service, _ = _service()
    command: Command
    if args.action == "approve":
        command = ApproveGate(run_id=args.run, gate=args.gate, actor=_me(), comment=args.note)
    else:
        command = RejectGate(run_id=args.run, gate=args.gate, actor=_me(), reason=args.note)
    return _report(service.handle(command))


def cmd_status(args: argparse.Namespace) -> int:
    service, _ = _service()
    if args.run:
        state = service.find_run(args.run)
        if state is None:
            print(f"shipyard: no run {args.run!r}", file=sys.stderr)
            return EXIT_FAILED
        from storage.runners import RunnerRegistry
        from storage.store import SqlStore

        store = service.store
        assert isinstance(store, SqlStore)  # (what ``_service`` makes)
        waits = RunnerRegistry(store).waits(state.jobs, datetime.now(UTC))
        print(render_state(state, tail=lambda job: service.store.tail_log(job.id, 10), waits=waits))
        return EXIT_OK
    for state in service.store.list_runs(args.pipeline, 20):
        run = state.run
        print(f"{run.ref:<20} {run.status:<10} {run.created_at:%Y-%m-%d %H:%M}  {run.triggered_by}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    service, _ = _service()
    state = service.find_run(args.run)
    if state is None:
        print(f"shipyard: no run {args.run!r}", file=sys.stderr)
        return EXIT_FAILED
    stage_name, _, job_name = args.job.partition("/")
    names = {s.index: s.name for s in state.stages}
    job = next((j for j in state.jobs if names[j.stage_index] == stage_name and j.name == job_name), None)
    if job is None:
        known = ", ".join(f"{names[j.stage_index]}/{j.name}" for j in state.jobs)
        print(f"shipyard: {state.run.ref} has no job {args.job!r} (jobs: {known})", file=sys.stderr)
        return EXIT_FAILED
    for chunk in service.store.read_log(job.id, args.attempt):
        sys.stdout.write(chunk.text)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
