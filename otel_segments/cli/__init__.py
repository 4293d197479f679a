"""``otel-segments``: compute segments, export cohort definitions, manage exact mode's triggers, or try it all on a demo database.

Bad input (a malformed URL, a missing table or column, an unreachable server)
is one line on stderr and exit status 2, never a traceback. Database URLs are
never printed: they may hold a password.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from .. import __version__
from ..segments.cohorts import FORMATS
from ..segments.schema import SchemaError
from ..segments.state import StateVersionError
from ..settings.config import DEFAULT_SCHEMA, OTEL_SEGMENTS_DATABASE_URL, OTEL_SEGMENTS_SCHEMA, OTEL_SEGMENTS_STATE_URL
from .commands import EXIT_USAGE, CliError, one_line, run_cohorts, run_compute
from .demo import run_demo
from .triggers import run_triggers


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        return int(args.run(args, err) or 0)
    except (CliError, SchemaError, StateVersionError) as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"database: {one_line(exc)}")
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    compute.set_defaults(run=run_compute, changed=False)

    cohorts = sub.add_parser(
        "cohorts",
        help="cohort definitions as PostHog cohort filters, TraceQL queries, Jaeger tag searches, Phoenix filters or JSON",
    )
    cohorts.add_argument("--format", choices=FORMATS, default="json")
    cohorts.set_defaults(run=run_cohorts)

    triggers = sub.add_parser(
        "triggers", help="print (or apply, or drop) the triggers of exact mode (OTEL_SEGMENTS_CHANGE_CAPTURE=triggers)"
    )
    triggers.add_argument("--database-url", help=f"SQLAlchemy URL of the app's database (default ${OTEL_SEGMENTS_DATABASE_URL})")
    triggers.add_argument(
        "--schema", help=f"built-in name or module:object (default ${OTEL_SEGMENTS_SCHEMA} or {DEFAULT_SCHEMA})"
    )
    triggers.add_argument("--apply", action="store_true", help="run the statements instead of printing them")
    triggers.add_argument("--drop", action="store_true", help="the statements that remove the triggers and the change table")
    triggers.set_defaults(run=run_triggers)

    demo = sub.add_parser("demo", help="build a synthetic TimeTracker database, refresh it, show the cohorts")
    demo.add_argument("--users", type=_positive, default=500, help="number of users (default 500)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--database", type=Path, default=None, help="SQLite file to create (default: a new temporary file)")
    demo.set_defaults(run=run_demo)
    return parser


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} must be positive")
    return value
