"""``compute`` and ``cohorts``, and what every command shares: opening the database named by a flag or a variable
(never printing its URL: it may hold a password) and binding the schema mapping, each failure one :class:`CliError`.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from sqlalchemy import func, make_url, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..runtime.database import EXAMPLE, DatabaseURLError, engine_for
from ..segments import UserSegment
from ..segments.binding import BoundSchema, bind
from ..segments.captured import ChangeCapture, capture_for
from ..segments.cohorts import export
from ..segments.refresh import refresh
from ..segments.schema import load_schema
from ..segments.state import RefreshState
from ..settings.config import (
    CHANGE_CAPTURES,
    DEFAULT_SCHEMA,
    OTEL_SEGMENTS_CHANGE_CAPTURE,
    OTEL_SEGMENTS_DATABASE_URL,
    OTEL_SEGMENTS_SCHEMA,
    OTEL_SEGMENTS_STATE_URL,
    database_url,
)
from ..settings.values import read
from .output import NoStatus, advancing, emit, progress_bar

EXIT_USAGE = 2


class CliError(Exception):
    """A user mistake or environment problem: printed as one line, exit status 2."""


def open_engine(url: str | None, variable: str) -> Engine:
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
        raise CliError(f"cannot connect to the database: {one_line(exc)}") from None
    return engine


def bound_schema(engine: Engine, schema_name: str | None) -> BoundSchema:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so ``myapp.segments:MAPPING`` imports from where the user runs us, like gunicorn
    name = schema_name or os.environ.get(OTEL_SEGMENTS_SCHEMA, "").strip() or DEFAULT_SCHEMA
    return bind(load_schema(name), engine)


def run_compute(args: argparse.Namespace, err: Console) -> int:
    from ..segments.aggregate import compute_segments

    engine = open_engine(args.database_url, OTEL_SEGMENTS_DATABASE_URL)
    bound = bound_schema(engine, args.schema)
    now = datetime.now(timezone.utc)
    if args.changed:
        state_url = args.state_url or os.environ.get(OTEL_SEGMENTS_STATE_URL, "").strip()
        state = RefreshState(open_engine(state_url, OTEL_SEGMENTS_STATE_URL) if state_url else engine)
        changed: list[UserSegment] = []
        capture = change_capture()
        with err.status("refreshing", spinner="dots") if err.is_terminal else NoStatus():
            result = refresh(engine, state, bound, now=now, on_change=changed.append, capture=capture)
        err.print(f"{result.computed} users recomputed, {result.changed} changed ({'full' if result.full else 'incremental'})")
        emit(iter(changed), args.format)
        return 0
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(bound.users)).scalar() or 0
    segments = compute_segments(engine, bound, now=now)
    with progress_bar(err) as progress:
        task = progress.add_task("computing", total=total)
        emit(advancing(segments, progress, task), args.format)
    return 0


def change_capture() -> ChangeCapture | None:
    """Exact mode when the job's variable asks for it: a state the job refreshes with triggers, refreshed here
    with windows, would have its mode flipped, and both would then recompute everyone once."""
    raw = read(os.environ, OTEL_SEGMENTS_CHANGE_CAPTURE).lower()
    if raw and raw not in CHANGE_CAPTURES:  # the job warns and keeps the default; a command asked by hand says no
        raise CliError(f"{OTEL_SEGMENTS_CHANGE_CAPTURE}={raw[:64]!r} is not one of {', '.join(CHANGE_CAPTURES)}")
    return capture_for(raw)


def run_cohorts(args: argparse.Namespace, err: Console) -> int:
    sys.stdout.write(export(args.format) + "\n")
    return 0


def one_line(exc: BaseException) -> str:
    """The driver's own message, first line only: no SQL, no parameters, no URL."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
