"""``otel-segments``: compute segments, export cohort definitions, or try it all on a demo database.

Bad input (a malformed URL, a missing table or column, an unreachable server)
is one line on stderr and exit status 2, never a traceback. Database URLs are
never printed: they may hold a password.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import create_engine, func, make_url, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .config import DEFAULT_SCHEMA, OTEL_SEGMENTS_DATABASE_URL, OTEL_SEGMENTS_SCHEMA, OTEL_SEGMENTS_STATE_URL, database_url
from .database import EXAMPLE, DatabaseURLError, engine_for
from .segments import UserSegment
from .segments.cohorts import COHORTS, FORMATS, cohort_description, export
from .segments.refresh import refresh
from .segments.schema import BoundSchema, SchemaError, bind, load_schema
from .segments.state import RefreshState, StateVersionError

if TYPE_CHECKING:
    from .job import RefreshJob

EXIT_USAGE = 2


class CliError(Exception):
    """A user mistake or environment problem: printed as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return int(args.run(args, err) or 0)
    except (CliError, SchemaError, StateVersionError) as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"database: {_one_line(exc)}")
    except BrokenPipeError:
        # The reader (e.g. ``head``) went away: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    return EXIT_USAGE


def _fail(message: str) -> None:
    sys.stderr.write(f"otel-segments: error: {' '.join(message.split())}\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otel-segments", description="Per-user segments computed in SQL.")
    sub = parser.add_subparsers(dest="command", required=True)

    compute = sub.add_parser("compute", help="compute every user's (or the changed users') person properties")
    compute.add_argument("--database-url", help=f"SQLAlchemy URL of the app's database (default ${OTEL_SEGMENTS_DATABASE_URL})")
    compute.add_argument("--schema", help=f"built-in name or module:object (default ${OTEL_SEGMENTS_SCHEMA} or {DEFAULT_SCHEMA})")
    which = compute.add_mutually_exclusive_group()
    which.add_argument("--all", dest="changed", action="store_false", help="every user, read-only (default)")
    which.add_argument(
        "--changed",
        dest="changed",
        action="store_true",
        help=f"only users whose segment changed since the last --changed run; state in ${OTEL_SEGMENTS_STATE_URL} or the app DB",
    )
    compute.add_argument("--state-url", default=None, help=f"state database for --changed (default ${OTEL_SEGMENTS_STATE_URL})")
    compute.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    compute.set_defaults(run=_compute, changed=False)

    cohorts = sub.add_parser(
        "cohorts",
        help="cohort definitions as PostHog cohort filters, TraceQL queries, Jaeger tag searches, Phoenix filters or JSON",
    )
    cohorts.add_argument("--format", choices=FORMATS, default="json")
    cohorts.set_defaults(run=_cohorts)

    demo = sub.add_parser("demo", help="build a synthetic TimeTracker database, refresh it, show the cohorts")
    demo.add_argument("--users", type=_positive, default=500, help="number of users (default 500)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--database", type=Path, default=None, help="SQLite file to create (default: a new temporary file)")
    demo.set_defaults(run=_demo)
    return parser


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be positive")
    return value


def _engine(url: str | None, variable: str) -> Engine:
    name = ("--state-url" if variable == OTEL_SEGMENTS_STATE_URL else "--database-url") if url else variable
    secret = database_url({name: url or os.environ.get(variable, "")}, name)  # an unencoded @ in the password: see there
    if secret is None:
        raise CliError(f"no database: pass --database-url or set {variable}")
    url = secret.reveal()
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise CliError(f"malformed database URL ({EXAMPLE})") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).exists():
            raise CliError(f"SQLite database file {parsed.database} does not exist")
    try:
        engine = engine_for(url)
    except DatabaseURLError as exc:
        raise CliError(f"the database URL {exc}") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        raise CliError(f"cannot connect to the database: {_one_line(exc)}") from None
    return engine


def _bound(engine: Engine, schema_name: str | None) -> BoundSchema:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so ``myapp.segments:MAPPING`` imports from where the user runs us, like gunicorn
    name = schema_name or os.environ.get(OTEL_SEGMENTS_SCHEMA, "").strip() or DEFAULT_SCHEMA
    return bind(load_schema(name), engine)


def _compute(args: argparse.Namespace, err: Console) -> int:
    from .segments.aggregate import compute_segments

    engine = _engine(args.database_url, OTEL_SEGMENTS_DATABASE_URL)
    bound = _bound(engine, args.schema)
    now = datetime.now(timezone.utc)
    if args.changed:
        state_url = args.state_url or os.environ.get(OTEL_SEGMENTS_STATE_URL, "").strip()
        state = RefreshState(_engine(state_url, OTEL_SEGMENTS_STATE_URL) if state_url else engine)
        changed: list[UserSegment] = []
        with err.status("refreshing", spinner="dots") if err.is_terminal else _Null():
            result = refresh(engine, state, bound, now=now, on_change=changed.append)
        err.print(f"{result.computed} users recomputed, {result.changed} changed ({'full' if result.full else 'incremental'})")
        _emit(iter(changed), args.format)
        return 0
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(bound.users)).scalar() or 0
    segments = compute_segments(engine, bound, now=now)
    with _progress(err) as progress:
        task = progress.add_task("computing", total=total)
        _emit(_advancing(segments, progress, task), args.format)
    return 0


def _advancing(segments: Iterator[UserSegment], progress: Progress, task: object) -> Iterator[UserSegment]:
    for segment in segments:
        yield segment
        progress.advance(task)  # type: ignore[arg-type]


def _progress(err: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _emit(segments: Iterator[UserSegment], fmt: str) -> None:
    if fmt == "jsonl":
        out = sys.stdout
        for s in segments:
            out.write(json.dumps({"distinct_id": s.distinct_id, "$set": s.set, "$set_once": s.set_once}, sort_keys=True) + "\n")
        out.flush()
        return
    table = _segments_table("Segments")
    for s in segments:
        _add_row(table, s)
    Console().print(table)


def _segments_table(title: str) -> Table:
    table = Table(title=title)
    for name in ("user", "engagement", "trend", "method", "account", "7d/30d/all", "hours", "admin"):
        table.add_column(name, justify="right" if name in ("7d/30d/all", "hours") else "left", no_wrap=True)
    return table


def _add_row(table: Table, s: UserSegment) -> None:
    p = s.set
    table.add_row(
        s.distinct_id,
        str(p.get("engagement_level", "")),
        str(p.get("activity_trend", "")),
        str(p.get("preferred_tracking_method", "")),
        str(p.get("account_age_category", "")),
        f"{p.get('entries_last_7_days', 0)}/{p.get('entries_last_30_days', 0)}/{p.get('entries_all_time', 0)}",
        str(p.get("total_hours_tracked", "")),
        "yes" if p.get("is_admin") else "",
    )


def _cohorts(args: argparse.Namespace, err: Console) -> int:
    sys.stdout.write(export(args.format) + "\n")
    return 0


def _demo(args: argparse.Namespace, err: Console) -> int:
    from .segments.demo import create_demo_database

    out = Console(highlight=False, soft_wrap=True)
    path: Path = args.database or Path(tempfile.mkdtemp(prefix="otel-segments-demo-")) / "timetracker.sqlite"
    if path.exists():
        raise CliError(f"{path} already exists; choose another --database path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {path.parent}: {exc.strerror}") from None
    engine = create_engine(f"sqlite:///{path}")
    started = time.perf_counter()
    counts = create_demo_database(engine, users_count=args.users, seed=args.seed)
    generated = time.perf_counter() - started
    out.print(
        f"Demo database [bold]{path}[/]: {counts['users']} users, {counts['projects']} projects, "
        f"{counts['tasks']} tasks, {counts['time_entries']} time entries ({generated:.1f} s)"
    )
    job, delivering = _demo_job(engine)
    first = job.run_cycle()
    second = job.run_cycle()
    job.shutdown(timeout_s=10)
    for label, cycle in (("First cycle (full refresh)", first), ("Next cycle (incremental)", second)):
        if cycle is None or cycle.error or cycle.refreshed is None:
            raise CliError(f"the refresh failed: {cycle.error if cycle else 'another refresh was running'}")
        done = cycle.refreshed
        sent = ", ".join(f"{n} to {name}" for name, n in cycle.delivered.items()) or "nothing delivered"
        failed = "".join(f"; {name} failed: {why}" for name, why in cycle.failed.items())
        out.print(f"{label}: {done.computed} users computed, {done.changed} changed in {done.seconds:.2f} s; {sent}{failed}")
    if not delivering:
        out.print(
            "No sink configured: set POSTHOG_API_KEY (and POSTHOG_HOST) or OTEL_EXPORTER_OTLP_ENDPOINT and "
            "OTEL_EXPORTER_OTLP_TOKEN to deliver these updates; the state in the database keeps them pending."
        )
    state = RefreshState(engine)

    sizes: Counter[str] = Counter()
    sample: list[UserSegment] = []
    for segment in state.segments():
        sizes.update(c.name for c in COHORTS if c.matches(segment.set))
        if len(sample) < 5:
            sample.append(segment)
    table = Table(title="Cohort sizes")
    table.add_column("cohort")
    table.add_column("users", justify="right")
    table.add_column("definition")
    for cohort in COHORTS:
        table.add_row(cohort.name, str(sizes[cohort.name]), cohort.description)
    out.print(table)
    users = _segments_table("A few users")
    for segment in sample:
        _add_row(users, segment)
    out.print(users)
    if sample:
        first = sample[0]
        out.print(f"{cohort_description(first.set)} {first.distinct_id}: what goes out (no name, email or username):")
        out.print_json(json.dumps({"distinct_id": first.distinct_id, "$set": first.set, "$set_once": first.set_once}))
    out.print(f"Next: otel-segments compute --database-url sqlite:///{path} --format table")
    out.print("      otel-segments cohorts --format traceql")
    return 0


def _demo_job(engine: Engine) -> tuple[RefreshJob, bool]:
    """The real refresh job on the demo database, delivering to the sinks the environment configures."""
    from opentelemetry.sdk.resources import Resource

    from .config import Settings
    from .job import RefreshJob  # here: the job loads the SDK and PostHog, which compute and cohorts never need
    from .pipeline import sink_factories
    from .properties import detect_process_properties

    process = detect_process_properties()
    sinks = sink_factories(Settings.from_env(), Resource.create(dict(process.attributes)), process)
    return RefreshJob(engine, load_schema(DEFAULT_SCHEMA), sinks=sinks), bool(sinks)


def _one_line(exc: BaseException) -> str:
    """The driver's own message, first line only: no SQL, no parameters, no URL."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
