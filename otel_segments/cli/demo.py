"""``demo``: a synthetic TimeTracker database, refreshed and delivered by the real job, its cohorts shown."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from ..segments import UserSegment
from ..segments.cohorts import COHORTS, cohort_description
from ..segments.schema import load_schema
from ..segments.state import RefreshState
from ..settings.config import (
    DEFAULT_SCHEMA,
)
from .commands import CliError
from .output import add_row, segments_table

if TYPE_CHECKING:
    from ..job.refresh_job import RefreshJob


def run_demo(args: argparse.Namespace, err: Console) -> int:
    from ..segments.demo import create_demo_database

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
    job, delivering = demo_job(engine)
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
    users = segments_table("A few users")
    for segment in sample:
        add_row(users, segment)
    out.print(users)
    if sample:
        first = sample[0]
        out.print(f"{cohort_description(first.set)} {first.distinct_id}: what goes out (no name, email or username):")
        out.print_json(json.dumps({"distinct_id": first.distinct_id, "$set": first.set, "$set_once": first.set_once}))
    out.print(f"Next: otel-segments compute --database-url sqlite:///{path} --format table")
    out.print("      otel-segments cohorts --format traceql")
    return 0


def demo_job(engine: Engine) -> tuple[RefreshJob, bool]:
    """The real refresh job on the demo database, delivering to the sinks the environment configures."""
    from opentelemetry.sdk.resources import Resource

    from ..job.refresh_job import RefreshJob  # here: the job loads the SDK and PostHog, which compute and cohorts never need
    from ..pipeline import sink_factories
    from ..settings.config import Settings
    from ..spans.properties import detect_process_properties

    process = detect_process_properties()
    sinks = sink_factories(Settings.from_env(), Resource.create(dict(process.attributes)), process)
    return RefreshJob(engine, load_schema(DEFAULT_SCHEMA), sinks=sinks), bool(sinks)
