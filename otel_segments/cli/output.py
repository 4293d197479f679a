"""What the commands print: data (JSON lines, the table asked for) on stdout and nothing else there; a progress bar
and messages for people on stderr, and only when stderr is a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..segments import UserSegment


def advancing(segments: Iterator[UserSegment], progress: Progress, task: object) -> Iterator[UserSegment]:
    for segment in segments:
        yield segment
        progress.advance(task)  # type: ignore[arg-type]


def progress_bar(err: Console) -> Progress:
    """Rich's live display captures ``sys.stdout`` by default and reprints it on its own console (stderr here): from a
    terminal, ``compute > file`` then wrote the data to the screen and an empty file. It may only take stdout when
    stdout is the screen too, so that lines printed while it draws do not tear the bar.
    """
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    )


class NoStatus:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def emit(segments: Iterator[UserSegment], fmt: str) -> None:
    if fmt == "jsonl":
        out = sys.stdout
        for s in segments:
            out.write(json.dumps({"distinct_id": s.distinct_id, "$set": s.set, "$set_once": s.set_once}, sort_keys=True) + "\n")
        out.flush()
        return
    table = segments_table("Segments")
    for s in segments:
        add_row(table, s)
    Console().print(table)


def segments_table(title: str) -> Table:
    table = Table(title=title)
    for name in ("user", "engagement", "trend", "method", "account", "7d/30d/all", "hours", "admin"):
        table.add_column(name, justify="right" if name in ("7d/30d/all", "hours") else "left", no_wrap=True)
    return table


def add_row(table: Table, s: UserSegment) -> None:
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
