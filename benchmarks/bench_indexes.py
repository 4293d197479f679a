"""The aggregation pass for each index an app may have on its entries, against the SQL floor in the same run.

    .venv/bin/python benchmarks/bench_indexes.py [--users 10000] [--entries 1000000] [--keep DIR]

SQLite, TimeTracker-shaped data in time order (``scale_data.py``), three cases on copies of one file: the
recommended covering index (``scale_data.RECOMMENDED``), only the app's own index on ``time_entries.user_id``,
and no index on the user at all. For each: the hand-written floor (``bench_scale.floor``, best of two) and one
full aggregation pass (every user's rules' properties, as ``otel-segments compute`` reads them) in each query
shape, best of two: the shape ``plan.activity_shape`` picks must be the faster one, and the ratios are
against the floor of the same case, same run.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale import floor  # noqa: E402
from scale_data import build  # noqa: E402

from otel_segments.segments import plan, queries  # noqa: E402
from otel_segments.segments.aggregate import compute_segments  # noqa: E402
from otel_segments.segments.binding import bind  # noqa: E402
from otel_segments.segments.schema import TIMETRACKER  # noqa: E402


def passes(url: str, now: datetime) -> dict[str, float]:
    """Seconds of one full pass in each shape (best of two), and the shape the indexes pick."""
    engine = create_engine(url)
    bound = bind(TIMETRACKER, engine)
    picked = plan.activity_shape(bound, engine.dialect.name)
    out: dict[str, float] = {}
    original = queries.activity_shape
    try:
        for shape in (plan.ROLL_UP, plan.SCAN):
            queries.activity_shape = lambda *_, forced=shape: forced  # type: ignore[assignment]  # for the comparison
            best = float("inf")
            for _ in range(2):
                started = time.perf_counter()
                for _segment in compute_segments(engine, bound, now=now):
                    pass
                best = min(best, time.perf_counter() - started)
            out[shape] = best
    finally:
        queries.activity_shape = original
    out["picked"] = out[picked]
    out["floor"] = floor(engine, now)
    engine.dispose()
    return out | {"shape": picked}  # type: ignore[dict-item]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="otel-segments-indexes-")))
        workdir.mkdir(parents=True, exist_ok=True)
        run(workdir, args.users, args.entries)
    return 0


def run(workdir: Path, users: int, entries: int) -> None:
    """The three cases on copies of one file in ``workdir``."""
    now = datetime.now(timezone.utc)
    covering = workdir / "covering.sqlite"
    if not covering.exists():
        build(create_engine(f"sqlite:///{covering}"), users, entries, now)
    cases = {"covering": covering, "user_id": workdir / "user_id.sqlite", "none": workdir / "none.sqlite"}
    covering_ix, user_ix = "ix_time_entries_user_covering", "ix_time_entries_user_id"
    drops = {"covering": [], "user_id": [covering_ix], "none": [covering_ix, user_ix]}
    print(f"SQLite, {users:,} users / {entries:,} entries in time order; seconds, best of two;")
    print("ratios against the floor of the same case")
    print(f"{'index':<10}{'floor s':>8}{'roll-up s':>10}{'x':>7}{'scan s':>11}{'x':>7}  picked")
    for name, path in cases.items():
        if path != covering:
            shutil.copyfile(covering, path)
            engine = create_engine(f"sqlite:///{path}")
            with engine.begin() as conn:
                for index in drops[name]:
                    conn.execute(text(f"DROP INDEX IF EXISTS {index}"))
            engine.dispose()
        r = passes(f"sqlite:///{path}", now)
        print(
            f"{name:<10}{r['floor']:>8.2f}{r[plan.ROLL_UP]:>10.2f}{r[plan.ROLL_UP] / r['floor']:>6.2f}x"
            f"{r[plan.SCAN]:>11.2f}{r[plan.SCAN] / r['floor']:>6.2f}x  {r['shape']}",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())
