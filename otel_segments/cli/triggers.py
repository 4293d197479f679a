"""``otel-segments triggers``: the DDL of exact mode's triggers, printed for review or a migration, applied, or dropped.

Printing is the default: the triggers sit on the app's tables, so whoever owns its schema should see them
first (or paste them into an Alembic or Django migration). ``--apply`` runs the same statements in one
transaction; ``--drop`` turns them into the statements that remove the triggers and our change table.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from ..segments.triggers import create_ddl, drop_ddl, render, trigger_names
from ..settings.config import OTEL_SEGMENTS_CHANGE_CAPTURE, OTEL_SEGMENTS_DATABASE_URL
from .commands import bound_schema, open_engine


def run_triggers(args: argparse.Namespace, err: Console) -> int:
    engine = open_engine(args.database_url, OTEL_SEGMENTS_DATABASE_URL)
    bound = bound_schema(engine, args.schema)
    with engine.connect() as conn:
        statements = (drop_ddl if args.drop else create_ddl)(conn, bound)
        script = render(conn, statements)
    if not args.apply:
        sys.stdout.write(script)
        return 0
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)
    tables = sorted(set(trigger_names(bound).values()))
    if args.drop:
        err.print(f"dropped the change-capture triggers on {', '.join(tables)} and the change table")
    else:
        err.print(f"{len(trigger_names(bound))} triggers on {', '.join(tables)}; set {OTEL_SEGMENTS_CHANGE_CAPTURE}=triggers")
    return 0
