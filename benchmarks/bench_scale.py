"""Refresh cost at scale against a raw single-pass SQL floor measured in the same run, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_scale.py [--users 100000] [--entries 10000000]
        [--cli-users 10000] [--cli-entries 1000000] [--databases sqlite,postgresql] [--keep DIR]
        [--import-rows 1000000] [--tables main,quiet]

Data is TimeTracker-shaped and stored in time order, as an app appends it (``scale_data.py``), with the
indexes docs/segments.md recommends. PostgreSQL is a throwaway server started here (shared_buffers 1 GB,
work_mem 64 MB); the state tables live in the app's database, as they do by default. Measured:

- **floor**: one hand-written pass computing the same aggregates (activity and projects in one scan of the
  entries, rolled up per user and project; tasks; users), fetched through the raw DB-API cursor; best of two;
- **rules alone**: the Python side of a refresh without any I/O: the rules, digests and stored JSON of every
  user, from aggregates already in memory: what any refresh through the public API pays on top of the SQL;
- **full refresh** into an empty state (first run) and again with the state in place;
- **nothing changed**: an incremental cycle with no new row (the clock moved 2 s), median of five;
- **1% changed**: an incremental cycle after 1% of users added an entry, median of three;
- **compute**: ``otel-segments compute --format jsonl`` at ``--cli-users`` / ``--cli-entries``, process start
  included, best of three, against the floor on that database; and the process start alone (the interpreter
  importing what the command needs), which no computation can go below.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, insert, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale_data import build  # noqa: E402

from otel_segments.segments.aggregate import aggregate_users  # noqa: E402
from otel_segments.segments.batch import Aggregator  # noqa: E402
from otel_segments.segments.binding import bind  # noqa: E402
from otel_segments.segments.captured import ChangeCapture  # noqa: E402
from otel_segments.segments.demo import time_entries  # noqa: E402
from otel_segments.segments.presence import presence, presence_total  # noqa: E402
from otel_segments.segments.refresh import RefreshResult, refresh  # noqa: E402
from otel_segments.segments.refresh import refresh as run_refresh  # noqa: E402
from otel_segments.segments.schema import TIMETRACKER  # noqa: E402
from otel_segments.segments.state import RefreshState  # noqa: E402
from otel_segments.segments.state_tables import properties_json  # noqa: E402
from otel_segments.segments.triggers import create_ddl, drop_ddl  # noqa: E402
from otel_segments.segments.windows import SLACK  # noqa: E402

CLI = ROOT / ".venv" / "bin" / "otel-segments"


def floor_sql(dialect: str) -> list[str]:
    """The same aggregates as the refresh reads, written by hand: one scan of the entries for activity and projects."""
    total = "total" if dialect == "sqlite" else "sum"
    rollup = f"""
SELECT r.user_id, sum(r.n), sum(r.n24), sum(r.n7), sum(r.n30), sum(r.timer), sum(r.manual), {total}(r.secs),
  min(r.o24), min(r.o7), min(r.o30), sum(r.keys), count(p.id), count(CASE WHEN p.status IN ('active') THEN 1 END)
FROM (SELECT user_id, project_id, count(*) AS n,
  sum(CASE WHEN created_at >= :t24 THEN 1 ELSE 0 END) AS n24, sum(CASE WHEN created_at >= :t7 THEN 1 ELSE 0 END) AS n7,
  sum(CASE WHEN created_at >= :t30 THEN 1 ELSE 0 END) AS n30,
  sum(CASE WHEN source IN ('timer', 'auto') THEN 1 ELSE 0 END) AS timer,
  sum(CASE WHEN source IN ('manual') THEN 1 ELSE 0 END) AS manual,
  {total}(CASE WHEN duration_seconds > 0 THEN duration_seconds ELSE 0 END) AS secs,
  min(CASE WHEN created_at >= :t24 THEN created_at END) AS o24, min(CASE WHEN created_at >= :t7 THEN created_at END) AS o7,
  min(CASE WHEN created_at >= :t30 THEN created_at END) AS o30, sum(id) AS keys
  FROM time_entries GROUP BY user_id, project_id) AS r
LEFT JOIN projects p ON p.id = r.project_id GROUP BY r.user_id"""
    tasks = (
        "SELECT assigned_to, sum(CASE WHEN status NOT IN ('done', 'cancelled') THEN 1 ELSE 0 END), "
        "sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END) FROM tasks GROUP BY assigned_to"
    )
    users = (
        "SELECT id, created_at, last_login, role, auth_provider, CASE WHEN role IN ('admin') THEN 1 WHEN EXISTS "
        "(SELECT 1 FROM user_roles ur JOIN roles r ON r.id = ur.role_id WHERE ur.user_id = users.id "
        "AND r.name IN ('admin', 'super_admin')) THEN 1 ELSE 0 END FROM users ORDER BY id"
    )
    return [rollup, tasks, users]


def floor(engine: Engine, now: datetime) -> float:
    """Best of two runs of :func:`floor_sql`, every row fetched through the DB-API cursor."""
    naive = now.replace(tzinfo=None)
    params = {"t24": naive - timedelta(days=1), "t7": naive - timedelta(days=7), "t30": naive - timedelta(days=30)}
    if engine.dialect.name == "sqlite":
        params = {k: v.isoformat(sep=" ") for k, v in params.items()}
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for sql in floor_sql(engine.dialect.name):
                if engine.dialect.name == "postgresql":
                    sql = sql.replace(":t24", "%(t24)s").replace(":t7", "%(t7)s").replace(":t30", "%(t30)s")
                cursor.execute(sql, params if ":t" in sql or "%(t" in sql else ())
                while cursor.fetchmany(10_000):
                    pass
            cursor.close()
        finally:
            raw.close()
        best = min(best, time.perf_counter() - started)
    return best


def rules_alone(engine: Engine, now: datetime) -> float:
    """The Python a refresh runs per user without any I/O: rules, digest, stored JSON, due time."""
    bound = bind(TIMETRACKER, engine)
    users = list(aggregate_users(engine, bound, now=now))
    started = time.perf_counter()
    for user in users:
        segment = user.segment(now)
        segment.digest()
        properties_json(segment)
        user.due_at(now)
    return time.perf_counter() - started


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def append_entries(engine: Engine, user_ids: list[int], when: datetime) -> None:
    """One new entry for each user, appended after the others, as the app would."""
    stamp = when.replace(tzinfo=None)
    with engine.begin() as conn:
        top = conn.execute(select(func.max(time_entries.c.id))).scalar() or 0
        conn.execute(
            insert(time_entries),
            [
                {"id": top + i + 1, "user_id": uid, "project_id": 1, "start_time": stamp, "created_at": stamp}
                | {"updated_at": stamp, "source": "timer", "duration_seconds": 60}
                for i, uid in enumerate(user_ids)
            ],
        )


def forget_state(engine: Engine) -> None:
    """Drop the state tables a previous run left (``--keep``), so that the first full refresh starts empty."""
    from sqlalchemy import inspect

    with engine.begin() as conn:
        for name in inspect(conn).get_table_names():
            if name.startswith("otel_segments_"):
                conn.execute(text(f"DROP TABLE {name}"))


def reusable(engine: Engine, n_users: int, n_entries: int) -> bool:
    """A database a previous run built at these sizes (``--keep``); the entries it appended since are kept."""
    from sqlalchemy import inspect

    if "time_entries" not in inspect(engine).get_table_names():
        return False
    with engine.connect() as conn:
        users = conn.execute(text("SELECT count(*) FROM users")).scalar()
        entries = conn.execute(text("SELECT count(*) FROM time_entries")).scalar() or 0
    return users == n_users and n_entries <= entries <= n_entries * 1.01


def measure(engine: Engine, n_users: int, workdir: Path, seed: int = 1) -> dict[str, float]:
    forget_state(engine)
    out: dict[str, float] = {}
    out["floor"] = floor(engine, datetime.now(timezone.utc))
    out["rules"] = rules_alone(engine, datetime.now(timezone.utc))
    bound = bind(TIMETRACKER, engine)
    state = RefreshState(engine)
    out["full_first"] = timed(lambda: refresh(engine, state, bound, now=datetime.now(timezone.utc), full=True))
    out["full_again"] = timed(lambda: refresh(engine, state, bound, now=datetime.now(timezone.utc), full=True))
    quiet = refresh(engine, state, bound, now=datetime.now(timezone.utc), full=True)  # rows digests stored: only changes
    out["full_quiet"], out["full_quiet_computed"] = quiet.seconds, quiet.computed
    out["full_apart"] = float("nan")
    if engine.dialect.name == "sqlite":  # OTEL_SEGMENTS_STATE_URL on another file: the next batch is read ahead
        apart = RefreshState(create_engine(f"sqlite:///{workdir / 'state_apart.sqlite'}"))
        out["full_apart"] = timed(lambda: refresh(engine, apart, bound, now=datetime.now(timezone.utc), full=True))
        apart.engine.dispose()
        (workdir / "state_apart.sqlite").unlink()
    refresh(engine, state, bound, now=datetime.now(timezone.utc))  # settles the change cursors
    nothing, computed = [], []
    for _ in range(5):
        time.sleep(2)
        result = refresh(engine, state, bound, now=datetime.now(timezone.utc))
        nothing.append(result.seconds)
        computed.append(result.computed)
    out["nothing"] = statistics.median(nothing)
    out["nothing_computed"] = statistics.median(computed)
    rng = random.Random(seed)
    changed, computed = [], []
    for _ in range(3):
        now = datetime.now(timezone.utc)
        append_entries(engine, rng.sample(range(1, n_users + 1), k=max(1, n_users // 100)), now)
        result = refresh(engine, state, bound, now=now + timedelta(seconds=1))
        changed.append(result.seconds)
        computed.append(result.computed)
    out["one_percent"] = statistics.median(changed)
    out["one_percent_computed"] = statistics.median(computed)
    return out


def quiet_cycles(engine: Engine, n_users: int, import_rows: int, seed: int = 2, *, exact: bool = False) -> dict[str, float]:
    """Quiet incremental cycles (no new row since the last one), median of five each: with nothing written for a
    while; once the slack has passed after a bulk import of ``import_rows`` entries (one stamp for all); and after
    a writer whose stamps are 10 minutes behind ours wrote 1% of users' entries. The clock is moved by ``now``
    (past :data:`~otel_segments.segments.windows.SLACK`), not waited for. Also the presence digest against
    ``count(*)`` of the users (best of five): what a quiet cycle reads of the users table (windows mode). With
    ``exact``, the triggers are created first and every refresh runs in exact mode (``captured.py``)."""
    bound = bind(TIMETRACKER, engine)
    state = RefreshState(engine)
    capture = ChangeCapture() if exact else None
    if exact:
        with engine.begin() as conn:
            for statement in create_ddl(conn, bound):
                conn.execute(statement)

    def refresh(*args: Any, **kwargs: Any) -> RefreshResult:
        return run_refresh(*args, capture=capture, **kwargs)

    out: dict[str, float] = {}
    reader = Aggregator(bound, datetime.now(timezone.utc), engine.dialect.name)
    with engine.connect() as conn:
        out["count_ms"] = best_ms(lambda: conn.execute(text("SELECT count(*) FROM users")).scalar())
        out["grouped_ms"] = best_ms(lambda: presence(conn, reader))
        out["total_ms"] = best_ms(lambda: presence_total(conn, reader))
    clock = datetime.now(timezone.utc)
    refresh(engine, state, bound, now=clock)

    def median_quiet(start: datetime) -> tuple[float, datetime]:
        times = []
        for i in range(5):
            times.append(refresh(engine, state, bound, now=start + timedelta(seconds=i + 1)).seconds)
        return statistics.median(times), start + timedelta(seconds=6)

    clock += SLACK + timedelta(seconds=1)
    refresh(engine, state, bound, now=clock)
    out["quiet_ms"], clock = median_quiet(clock)
    out["quiet_ms"] *= 1000
    imported = time.perf_counter()
    bulk_import(engine, n_users, import_rows, clock)
    out["import_s"] = time.perf_counter() - imported
    out["after_import_s"] = refresh(engine, state, bound, now=clock + timedelta(seconds=1)).seconds
    clock += SLACK + timedelta(seconds=2)
    refresh(engine, state, bound, now=clock)  # the slack has passed: the import is behind the cursors
    quiet, clock = median_quiet(clock)
    out["import_quiet_ms"] = quiet * 1000
    rng = random.Random(seed)
    behind = clock - timedelta(minutes=10)
    append_entries(engine, rng.sample(range(1, n_users + 1), k=max(1, n_users // 100)), behind)
    out["behind_computed"] = refresh(engine, state, bound, now=clock + timedelta(seconds=1)).computed
    clock += SLACK + timedelta(seconds=2)
    refresh(engine, state, bound, now=clock)
    quiet, clock = median_quiet(clock)
    out["behind_quiet_ms"] = quiet * 1000
    return out


def best_ms(action: Callable[[], object], runs: int = 5) -> float:
    return min(timed(action) for _ in range(runs)) * 1000


def bulk_import(engine: Engine, n_users: int, rows: int, when: datetime) -> None:
    """``rows`` entries in one statement, all stamped ``when`` (an import), owned round-robin by every user."""
    stamp = when.replace(tzinfo=None).isoformat(sep=" ")
    with engine.begin() as conn:
        top = conn.execute(select(func.max(time_entries.c.id))).scalar() or 0
        columns = "id, user_id, project_id, start_time, created_at, updated_at, source, duration_seconds"
        params = {"top": top, "n": rows, "u": n_users, "t": stamp}
        if engine.dialect.name == "sqlite":
            source = "(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) SELECT i FROM s)"
            stamped = ":t"
        else:
            source, stamped = "generate_series(1, :n) AS g(i)", "CAST(:t AS timestamp)"
        conn.execute(
            text(
                f"INSERT INTO time_entries ({columns}) SELECT :top + i, 1 + i % :u, 1, {stamped}, {stamped}, {stamped}, "
                f"'manual', 60 FROM {source}"
            ),
            params,
        )


def cli_start() -> float:
    """Best of three: the interpreter starting and importing what ``otel-segments compute`` needs, computing nothing."""
    best = float("inf")
    python = str(ROOT / ".venv" / "bin" / "python")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([python, "-c", "import otel_segments.cli, otel_segments.segments.aggregate"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def cli_compute(url: str) -> float:
    """Best of three: ``otel-segments compute`` as a user runs it, process start included."""
    best = float("inf")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "POSTHOG_"))}
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [str(CLI), "compute", "--database-url", url, "--format", "jsonl"], check=True, stdout=subprocess.DEVNULL, env=env
        )
        best = min(best, time.perf_counter() - started)
    return best


QUIET_HEADER = (
    f"{'database':<11}{'mode':<9}{'count ms':>10}{'presence ms':>12}{'x count':>9}{'total ms':>10}{'x count':>9}{'quiet ms':>10}"
    f"{'import s':>10}{'after s':>10}{'import q ms':>12}{'behind':>10}{'behind q ms':>12}"
)


def quiet_row(name: str, mode: str, q: dict[str, float]) -> str:
    return (
        f"{name:<11}{mode:<9}{q['count_ms']:>10.1f}{q['grouped_ms']:>12.1f}{q['grouped_ms'] / q['count_ms']:>8.1f}x"
        f"{q['total_ms']:>10.1f}{q['total_ms'] / q['count_ms']:>8.1f}x{q['quiet_ms']:>10.0f}"
        f"{q['import_s']:>10.1f}{q['after_import_s']:>10.1f}{q['import_quiet_ms']:>12.0f}"
        f"{q['behind_computed']:>10.0f}{q['behind_quiet_ms']:>12.0f}"
    )


@contextlib.contextmanager
def databases(names: list[str], workdir: Path, postgres: str | None) -> Iterator[dict[str, Callable[[str], str]]]:
    """URL makers per database: SQLite files in ``workdir``, databases of one PostgreSQL server (``postgres``,
    or a throwaway one started here)."""
    urls: dict[str, Callable[[str], str]] = {}
    with contextlib.ExitStack() as stack:
        if "sqlite" in names:
            urls["sqlite"] = lambda name: f"sqlite:///{workdir / name}.sqlite"
        if "postgresql" in names:
            from tests.conftest import postgres_server

            admin = postgres or stack.enter_context(postgres_server(shared_buffers="1GB", work_mem="64MB"))

            def pg(name: str) -> str:
                with create_engine(admin, isolation_level="AUTOCOMMIT").connect() as conn:
                    if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                        conn.execute(text(f"CREATE DATABASE {name}"))
                return admin.rsplit("/", 1)[0] + f"/{name}"

            urls["postgresql"] = pg
        yield urls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--cli-users", type=int, default=10_000)
    parser.add_argument("--cli-entries", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--keep", type=Path, help="directory for the SQLite files, kept and reused (default: a temporary one)")
    parser.add_argument("--postgres-url", help="an existing PostgreSQL server's admin URL (its databases are reused)")
    parser.add_argument("--import-rows", type=int, default=1_000_000, help="entries of the bulk import of the quiet cycles")
    parser.add_argument("--tables", default="main,quiet", help="which tables: main (refresh and compute), quiet (quiet cycles)")
    args = parser.parse_args()
    names = [n.strip() for n in args.databases.split(",") if n.strip()]
    print(f"{args.users:,} users / {args.entries:,} entries in time order; compute at {args.cli_users:,} / {args.cli_entries:,}")
    print("floor = one hand-written pass, same aggregates, DB-API cursor; ratios are against it (same run).\n")
    header = (
        f"{'database':<11}{'build s':>8}{'floor s':>8}{'rules s':>8}{'full s':>8}{'x floor':>8}{'x f+r':>7}{'again s':>8}"
        f"{'x floor':>8}{'quiet s':>8}{'x floor':>8}{'(users)':>8}{'apart s':>8}{'x floor':>8}{'nothing ms':>11}{'(users)':>8}"
        f"{'1% s':>7}{'(users)':>8}"
        f"{'cli floor s':>12}{'start s':>8}{'compute s':>10}{'x floor':>8}"
    )
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="otel-segments-scale-")))
        workdir.mkdir(parents=True, exist_ok=True)
        urls = stack.enter_context(databases(names, workdir, args.postgres_url))
        rows = []
        quiet_rows = []
        for name in names:
            big = create_engine(urls[name]("scale_big"))
            reuse = (args.keep or args.postgres_url) and reusable(big, args.users, args.entries)
            built = 0.0 if reuse else build(big, args.users, args.entries, datetime.now(timezone.utc))
            tables = {t.strip() for t in args.tables.split(",")}
            if "quiet" in tables:
                for exact in (False, True):
                    if exact:
                        build(big, args.users, args.entries, datetime.now(timezone.utc))  # without the imported entries
                    forget_state(big)
                    q = quiet_cycles(big, args.users, args.import_rows, exact=exact)
                    if exact:
                        with big.begin() as conn:
                            for statement in drop_ddl(conn, bind(TIMETRACKER, big)):
                                conn.execute(statement)
                    quiet_rows.append(quiet_row(name, "exact" if exact else "windows", q))
                    print(QUIET_HEADER if len(quiet_rows) == 1 else "", end="\n" if len(quiet_rows) == 1 else "")
                    print(quiet_rows[-1], flush=True)
                if "main" not in tables:
                    big.dispose()
                    continue
                build(big, args.users, args.entries, datetime.now(timezone.utc))  # without the imported entries
            r = measure(big, args.users, workdir)
            big.dispose()
            small_url = urls[name]("scale_cli")
            small = create_engine(small_url)
            if not ((args.keep or args.postgres_url) and reusable(small, args.cli_users, args.cli_entries)):
                build(small, args.cli_users, args.cli_entries, datetime.now(timezone.utc))
            cli_floor = floor(small, datetime.now(timezone.utc))
            small.dispose()
            compute = cli_compute(small_url)
            start = cli_start()
            rows.append(
                f"{name:<11}{built:>8.0f}{r['floor']:>8.2f}{r['rules']:>8.2f}{r['full_first']:>8.2f}"
                f"{r['full_first'] / r['floor']:>7.2f}x{r['full_first'] / (r['floor'] + r['rules']):>6.2f}x"
                f"{r['full_again']:>8.2f}{r['full_again'] / r['floor']:>7.2f}x"
                f"{r['full_quiet']:>8.2f}{r['full_quiet'] / r['floor']:>7.2f}x{r['full_quiet_computed']:>8.0f}"
                f"{r['full_apart']:>8.2f}{r['full_apart'] / r['floor']:>7.2f}x"
                f"{r['nothing'] * 1000:>11.0f}{r['nothing_computed']:>8.0f}"
                f"{r['one_percent']:>7.3f}{r['one_percent_computed']:>8.0f}"
                f"{cli_floor:>12.3f}{start:>8.3f}{compute:>10.3f}{compute / cli_floor:>7.2f}x"
            )
            print(header if len(rows) == 1 else "", end="\n" if len(rows) == 1 else "")
            print(rows[-1], flush=True)
    if "quiet" in args.tables:
        print(f"\nquiet cycles ({args.import_rows:,}-row import): presence = the users' presence digest, grouped in buckets")
        print("(what every quiet cycle read before) and its total alone (what a quiet cycle reads now), best of 5, x count(*);")
        print("quiet = an incremental cycle with nothing new (median of 5); import s = the bulk import itself; after = the")
        print("cycle that finds it; after-import quiet = quiet cycles once the slack passed; behind = a writer 10 minutes")
        print("behind our clock wrote 1% of users' entries (users = found by the next cycle), then quiet cycles.")
        print("mode: windows (the default) or exact (OTEL_SEGMENTS_CHANGE_CAPTURE=triggers: the triggers created first);")
        print("the presence columns are the windows' (exact mode reads no presence).")
    if "main" not in args.tables:
        return 0
    print("\nfull = refresh(full=True) into an empty state (x f+r: against floor + rules, the SQL and the Python that no")
    print("refresh avoids); again = the same with the state in place, its first time (no rows digest stored yet:")
    print("everyone recomputed, digests compared, rows digests stored); quiet = once more, nothing changed: only the")
    print("users whose rows digest differs or who are due are computed (users = how many); apart =")
    print("SQLite, the state in another file (OTEL_SEGMENTS_STATE_URL), so the next batch is read while this one is")
    print("computed (not with the state in the app's own file in rollback-journal mode: its writes would wait for each read);")
    print("nothing = incremental cycle with no new row (median of 5; users = recomputed, those the")
    print("clock moved and the sweep found); 1% = after 1% of users added an entry (median of 3); compute = the CLI,")
    print("process start included (best of 3); start = the interpreter starting and importing it, nothing computed.")
    print("rules = the Python of a refresh alone, no I/O: part of every figure.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
