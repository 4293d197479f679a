"""Full and incremental segment refresh against the reference's per-user queries, in the same run.

    .venv/bin/python benchmarks/bench_refresh.py [--sizes 1000,10000,100000] [--entries 100] [--baseline-sample 300]

For each size it builds a TimeTracker-shaped SQLite database (users, roles, projects,
tasks, about ``--entries`` time entries per user over 90 days, generated inside SQLite,
indexes on time_entries.user_id and created_at), then measures:

- full refresh through the real pipeline (batched SQL -> rules -> state table);
- incremental refresh after 1% of users tracked new time (plus whoever the clock moved);
- the per-user baseline: the reference's twelve queries for one user at a time, run on a
  sample of users and extrapolated to all of them (the output says so);
- peak traced Python memory of a full computation (tracemalloc, a separate pass so the
  timings above are not slowed by tracing).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, and_, create_engine, exists, func, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.demo import metadata, projects, tasks, time_entries, users
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState

NOW = datetime.now(timezone.utc).replace(microsecond=0)
_TS = "strftime('%Y-%m-%d %H:%M:%S', :now, '-' || (abs(random()) % {span}) || ' seconds') || '.000000'"


def build(path: Path, n_users: int, per_user: int) -> float:
    started = time.perf_counter()
    engine = create_engine(f"sqlite:///{path}")
    _create_tables(engine)
    now = NOW.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")
    n_projects = max(10, n_users // 10)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=OFF")
        conn.execute(insert(metadata.tables["roles"]), [{"id": 1, "name": "admin"}, {"id": 2, "name": "super_admin"}])
        seq = "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n) "
        conn.execute(
            text(
                seq + "INSERT INTO users (id, username, role, created_at, last_login, auth_provider) "
                "SELECT i, 'u' || i, CASE WHEN i % 40 = 0 THEN 'admin' ELSE 'user' END, "
                + _TS.format(span=800 * 86400)
                + ", "
                + _TS.format(span=60 * 86400)
                + ", CASE i % 3 WHEN 0 THEN 'oidc' ELSE 'local' END FROM seq"
            ),
            {"n": n_users, "now": now},
        )
        conn.execute(
            text(
                seq + "INSERT INTO projects (id, name, status) "
                "SELECT i, 'p' || i, CASE WHEN i % 4 = 0 THEN 'archived' ELSE 'active' END FROM seq"
            ),
            {"n": n_projects},
        )
        conn.execute(
            text(
                seq + "INSERT INTO tasks (project_id, assigned_to, status) SELECT 1 + i % :p, 1 + abs(random()) % :u, "
                "CASE abs(random()) % 5 WHEN 0 THEN 'done' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'in_progress' ELSE 'todo' END "
                "FROM seq"
            ),
            {"n": n_users * 3, "p": n_projects, "u": n_users},
        )
        conn.execute(
            text(
                "WITH RECURSIVE u(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM u WHERE i < :n), "
                "k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < :per) "
                "INSERT INTO time_entries (user_id, project_id, start_time, created_at, source, duration_seconds) "
                "SELECT i, 1 + (i + j % 3) % :p, t, t, "
                "CASE abs(random()) % 3 WHEN 0 THEN 'timer' WHEN 1 THEN 'auto' ELSE 'manual' END, "
                "300 + abs(random()) % 7200 FROM (SELECT i, j, " + _TS.format(span=90 * 86400) + " AS t FROM u, k)"
            ),
            {"n": n_users, "per": per_user, "p": n_projects, "now": now},
        )
    for index in (*time_entries.indexes, *tasks.indexes):
        index.create(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return time.perf_counter() - started


def _create_tables(engine: Engine) -> None:
    """The demo's tables, without the entry and task indexes: bulk loading is faster, build() adds them after."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        for index in (*time_entries.indexes, *tasks.indexes):
            conn.exec_driver_sql(f"DROP INDEX {index.name}")


def reference_per_user(engine: Engine, user_id: int, now: datetime) -> dict[str, object]:
    """The reference's twelve queries for one user (a faithful Core rendering of its ORM calls)."""
    t, p, k, u = time_entries, projects, tasks, users
    naive = now.replace(tzinfo=None)
    with engine.connect() as conn:
        one = conn.execute(select(u.c.role, u.c.created_at, u.c.last_login, u.c.auth_provider).where(u.c.id == user_id)).one()

        def count(*where) -> int:
            return conn.execute(select(func.count()).select_from(t).where(t.c.user_id == user_id, *where)).scalar_one()

        props: dict[str, object] = {"role": one.role}
        props["entries_last_24h"] = count(t.c.created_at >= naive - timedelta(hours=24))
        props["entries_last_7_days"] = count(t.c.created_at >= naive - timedelta(days=7))
        props["entries_last_30_days"] = count(t.c.created_at >= naive - timedelta(days=30))
        props["entries_all_time"] = count()
        used = exists().where(and_(t.c.project_id == p.c.id, t.c.user_id == user_id))
        props["active_projects_count"] = conn.execute(
            select(func.count()).select_from(p).where(p.c.status == "active", used)
        ).scalar_one()
        props["total_projects_count"] = conn.execute(select(func.count()).select_from(p).where(used)).scalar_one()
        props["assigned_tasks_count"] = conn.execute(
            select(func.count()).select_from(k).where(k.c.assigned_to == user_id, k.c.status.not_in(("done", "cancelled")))
        ).scalar_one()
        props["completed_tasks_count"] = conn.execute(
            select(func.count()).select_from(k).where(k.c.assigned_to == user_id, k.c.status == "done")
        ).scalar_one()
        props["timer_entries_count"] = count(t.c.source.in_(("timer", "auto")))
        props["manual_entries_count"] = count(t.c.source == "manual")
        props["total_seconds"] = conn.execute(
            select(func.sum(t.c.duration_seconds)).where(t.c.user_id == user_id, t.c.duration_seconds.is_not(None))
        ).scalar()
    return props


def run(n_users: int, per_user: int, sample: int, workdir: Path) -> dict[str, float]:
    path = workdir / f"bench-{n_users}.sqlite"
    built = build(path, n_users, per_user)
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        n_entries = conn.execute(select(func.count()).select_from(time_entries)).scalar_one()
    state = RefreshState(create_engine(f"sqlite:///{workdir / f'state-{n_users}.sqlite'}"))

    started = time.perf_counter()
    full = refresh(engine, state, TIMETRACKER, now=NOW, full=True)
    full_s = time.perf_counter() - started

    changed_users = random.Random(1).sample(range(1, n_users + 1), k=max(1, n_users // 100))
    later = NOW + timedelta(minutes=1)
    stamp = later.replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            insert(time_entries),
            [
                {"user_id": uid, "start_time": stamp, "created_at": stamp, "source": "timer", "duration_seconds": 60}
                for uid in changed_users
            ],
        )
    started = time.perf_counter()
    incremental = refresh(engine, state, TIMETRACKER, now=later + timedelta(seconds=30))
    incremental_s = time.perf_counter() - started

    ids = random.Random(2).sample(range(1, n_users + 1), k=min(sample, n_users))
    started = time.perf_counter()
    for uid in ids:
        reference_per_user(engine, uid, NOW)
    per_user_s = (time.perf_counter() - started) / len(ids)
    baseline_s = per_user_s * n_users

    tracemalloc.start()
    for _ in compute_segments(engine, TIMETRACKER, now=NOW):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    engine.dispose()
    return {
        "users": n_users,
        "entries": n_entries,
        "build_s": built,
        "full_s": full_s,
        "full_computed": full.computed,
        "incremental_s": incremental_s,
        "incremental_computed": incremental.computed,
        "incremental_changed": incremental.changed,
        "baseline_sample": len(ids),
        "baseline_s": baseline_s,
        "peak_mib": peak / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated user counts")
    parser.add_argument("--entries", type=int, default=100, help="time entries per user (default 100)")
    parser.add_argument("--baseline-sample", type=int, default=300, help="users timed for the per-user baseline (default 300)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(
        f"SQLite {__import__('sqlite3').sqlite_version}, {args.entries} entries/user; baseline = reference's 12 queries per user,"
    )
    print(f"timed on a random sample of {args.baseline_sample} users and extrapolated to all users.\n")
    header = f"{'users':>8} {'entries':>10} {'full s':>8} {'users/s':>9} {'1% incr s':>9} {'(recomputed)':>12} "
    header += f"{'baseline s*':>11} {'base users/s':>12} {'ratio':>7} {'peak MiB':>8} {'build s':>7}"
    print(header)
    with tempfile.TemporaryDirectory(prefix="otel-segments-bench-") as tmp:
        for n in sizes:
            r = run(n, args.entries, args.baseline_sample, Path(tmp))
            print(
                f"{r['users']:>8} {r['entries']:>10} {r['full_s']:>8.2f} {r['users'] / r['full_s']:>9.0f} "
                f"{r['incremental_s']:>9.3f} {r['incremental_computed']:>12} {r['baseline_s']:>11.1f} "
                f"{r['users'] / r['baseline_s']:>12.0f} {r['baseline_s'] / r['full_s']:>6.0f}x "
                f"{r['peak_mib']:>8.1f} {r['build_s']:>7.1f}",
                flush=True,
            )
    print("\n* extrapolated from the sample. full = refresh through the real pipeline (SQL, rules, state writes);")
    print("  1% incr = incremental refresh after 1% of users added an entry, including users the clock moved (recomputed);")
    print("  peak MiB = peak traced Python memory of a full computation (tracemalloc).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
