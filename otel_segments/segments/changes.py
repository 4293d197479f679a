"""Which users can have changed since the last refresh, found in each input table by what it offers.

No step compares the app's timestamps with this process's clock, so clocks that disagree (another
server's, a zone the mapping does not know) hide no change. Per table, with the columns the mapping
names (``key``: grows on insert; ``updated_at``: moves on every change):

- **inserts and edits** (``windows.py``): rows past the position (highest key; highest ``(updated_at, key)``
  at or before our ``now``) that a scan recorded at least :data:`~.windows.SLACK` ago on *our* clock. Positions
  are read from the data each cycle, so the window follows the data's own clock (a writer behind ours, a row
  stamped in the future), a fall-back's repeated hour is covered, and once the slack has passed a bulk import
  or update is behind them: a quiet cycle reads only rows written in the last slack (plus rows stamped ahead
  of our clock). A writer behind the rows already there (stamped on a clock ahead of it) writes below the
  position: what that changes is found below, by content. A row that fails to read makes its owner a
  candidate, which the aggregation sets aside;
- a row counts as changed only when it is not among the rows the previous scan returned with the same
  values (stored in the state), so a row is recomputed once, not on every cycle it stays in the window. A
  row that moved to another user (an entry or task reassigned) makes both its old owner (when the previous
  scan saw it) and its new owner candidates;
- ``users``: the key finds new users at once; ``last_login`` is its change stamp; a digest of every
  user's (id, created_at) in buckets (:func:`presence`, one aggregate in the database) finds users
  missing from the state whatever their ids and dates (an import), users deleted from the app (their
  state rows are removed), and a user deleted and another added, or an id reused for a new account, in
  one cycle;
- ``projects``: a digest of every project's (id, status) in buckets (``project_status.py``, one aggregate in
  the database), not their stamps: a project archived by a writer whose clock is behind the rows' stamps, added
  or removed makes every user with entries in it a candidate (a dialect without a hash function: its window);
- **the sweep**: each cycle, the next slice of users in id order (:func:`sweep_size`: as many as have about
  :data:`SWEEP_ENTRIES` entries, from :data:`SWEEP_MIN_USERS` to :data:`SWEEP_USERS`) have their rule inputs
  that no column above reveals fingerprinted (their users row with admin roles, open/done task
  counts, entry count and key sum) and compared with the fingerprint stored when they were last
  computed. It finds role, auth and admin changes (``users`` has no ``updated_at``), deleted entries
  and tasks, a task's previous assignee, rows committed more than :data:`~.windows.SLACK` late, within
  ``ceil(users / slice)`` cycles;
- **the clock**: users whose stored ``due_at`` passed (a window edge, a day tick, the maximum age).

What none of these sees waits for the maximum age: an edit of an entry or a task that does not move
``updated_at`` (or in a table without one), or that a writer behind the rows' stamps made, and that changes no
count or key sum (e.g. a duration corrected by hand in SQL).
Every query is one per table and column, on the column the mapping names (index it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Column, func, select
from sqlalchemy.engine import Connection, Engine

from .batch import Aggregator
from .binding import BoundSchema
from .driver_values import as_text, from_text
from .fingerprints import fingerprint
from .presence import bucket_of, changed_buckets, presence, presence_total, whole
from .project_status import changed_project_users, digested
from .queries import ID_CHUNK
from .state import RefreshState
from .windows import Source, scan

#: Users fingerprinted by the sweep per cycle at most (0: no sweep) ...
SWEEP_USERS = 1_000
#: ... and at least, sized so that a slice reads about this many entries (its cost) by the last slice's entries per user.
SWEEP_MIN_USERS = 100
SWEEP_ENTRIES = 25_000
PREFIX = "changes:"
SWEEP = PREFIX + "sweep"
#: The state's row count after the last refresh (``refresh.py`` keeps it).
STATE_USERS = PREFIX + "state_users"
#: The app's users' :func:`.presence.presence`.
PRESENCE = PREFIX + "presence"
#: The projects' digest (``project_status.py``).
PROJECT_STATUS = PREFIX + "project_status"


@dataclass
class Changes:
    """What :func:`find` found: candidate user ids (None: too many, walk everyone), users gone, cursors to store."""

    user_ids: set[str] | None = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    cursors: dict[str, Any] = field(default_factory=dict)
    complete: bool = True  # False when a table had no cursor yet: only a full refresh is exact
    state_users: int = 0  # the state's rows when the changes were found
    app_users: int = 0  # the app's users then


def find(app_engine: Engine, bound: BoundSchema, state: RefreshState, *, now: datetime, limit: int) -> Changes:
    """Candidates since the stored cursors, and the cursors to store once the refresh that uses them succeeded."""
    out = Changes()
    stored = state.meta_values(PREFIX)
    reader = Aggregator(bound, now, app_engine.dialect.name)
    projects: set[Any] = set()
    with app_engine.connect() as conn:
        by_content = digested(conn, bound)
        for source in _sources(bound, windowed_projects=not by_content):
            key = PREFIX + source.name
            owners, cursor = scan(conn, bound, reader, source, stored.get(key), now)
            out.cursors[key] = cursor
            if key not in stored:
                out.complete = False
            (projects if source.name == "projects" else out.user_ids).update(owners)  # type: ignore[union-attr]
        if by_content:
            users, out.cursors[PROJECT_STATUS] = changed_project_users(conn, bound, stored.get(PROJECT_STATUS))
            out.user_ids.update(users)  # type: ignore[union-attr]
            out.complete = out.complete and PROJECT_STATUS in stored
        if projects:
            out.user_ids.update(project_users(conn, bound, projects))  # type: ignore[union-attr]
        missing, out.removed, out.state_users, out.app_users, out.cursors[PRESENCE] = _missing_users(
            conn, reader, state, stored.get(STATE_USERS), stored.get(PRESENCE)
        )
        out.user_ids.update(missing)  # type: ignore[union-attr]
        fingerprints: list[tuple[str, str]] = []
        sweep = stored.get(SWEEP) or {}
        after, per_user = None, sweep.get("per_user")
        if SWEEP_USERS > 0:  # 0: no sweep, the maximum age alone catches what it would
            size = sweep_size(per_user)
            uid = bound.users.c[bound.mapping.users.id]
            start = from_text(uid, sweep.get("after"))
            fingerprints, after, entries = input_fingerprints(reader, conn, after=start, limit=size)
            if fingerprints:
                per_user = entries / len(fingerprints)
    out.cursors[SWEEP] = {"after": as_text(after), "per_user": per_user}
    known = state.inputs([uid for uid, _ in fingerprints])
    out.user_ids.update(uid for uid, fp in fingerprints if known.get(uid) != fp)  # type: ignore[union-attr]
    out.user_ids.update(state.due(now))  # type: ignore[union-attr]
    out.user_ids -= out.removed  # type: ignore[operator]
    if len(out.user_ids) > limit:  # type: ignore[arg-type]
        out.user_ids = None
    return out


def sweep_size(entries_per_user: float | None) -> int:
    """Users in the next sweep slice: :data:`SWEEP_ENTRIES` worth of entries, between the minimum and :data:`SWEEP_USERS`."""
    if not entries_per_user:
        return SWEEP_USERS
    return max(min(SWEEP_MIN_USERS, SWEEP_USERS), min(SWEEP_USERS, int(SWEEP_ENTRIES / entries_per_user)))


def _sources(bound: BoundSchema, *, windowed_projects: bool) -> list[Source]:
    m = bound.mapping
    sources = []
    users_key, _ = bound.change_columns.get(bound.users.name, (None, None))
    login = [bound.users.c[m.users.last_login]] if m.users.last_login else []
    uid = bound.users.c[m.users.id]
    u = m.users
    user_inputs = _named(bound.users, u.created_at, u.role, u.auth_method)
    sources.append(Source("users", uid, uid, bound.users.c[users_key] if users_key else None, tuple(login), user_inputs))
    a, act = m.activity, bound.activity
    key, updated = bound.change_columns.get(act.name, (None, None))
    stamps = [act.c[updated]] if updated else []
    if not key:
        stamps.append(act.c[a.timestamp])  # without a key, inserts show by their timestamp
    entry_inputs = _named(act, a.timestamp, a.source, a.duration_seconds, a.project_id)
    sources.append(
        Source(
            "activity", act.c[key] if key else None, act.c[a.user_id], act.c[key] if key else None, tuple(stamps), entry_inputs
        )
    )
    if bound.tasks is not None and m.tasks is not None:
        t = bound.tasks
        key, updated = bound.change_columns.get(t.name, (None, None))
        owner = t.c[m.tasks.assignee]
        k = t.c[key] if key else None
        sources.append(Source("tasks", k, owner, k, _cols(t, updated), _named(t, m.tasks.status)))
    if windowed_projects and bound.projects is not None and m.projects is not None:
        p = bound.projects
        key, updated = bound.change_columns.get(p.name, (None, None))
        pid = p.c[m.projects.id]
        sources.append(Source("projects", pid, pid, p.c[key] if key else None, _cols(p, updated), _named(p, m.projects.status)))
    return [s for s in sources if s.key is not None or s.stamps]


def _cols(table: Any, name: str | None) -> tuple[Column, ...]:
    return (table.c[name],) if name else ()


def _named(table: Any, *names: str | None) -> tuple[Column, ...]:
    return tuple(table.c[name] for name in names if name)


def project_users(conn: Connection, bound: BoundSchema, projects: set[Any]) -> set[str]:
    """Users with entries in any of ``projects`` (whose status may have changed their active-projects count)."""
    a = bound.mapping.activity
    assert a.project_id
    act = bound.activity
    ids = sorted(projects, key=str)
    try:
        if act.c[a.project_id].type.python_type is int:  # the cursor keeps ids as text
            ids = sorted({int(p) for p in ids if str(p).lstrip("-").isdigit()})
    except NotImplementedError:
        pass
    out: set[str] = set()
    for start in range(0, len(ids), ID_CHUNK):
        query = select(act.c[a.user_id]).distinct().where(act.c[a.project_id].in_(ids[start : start + ID_CHUNK]))
        out.update(str(row[0]) for row in conn.execute(query))
    return out


def _missing_users(
    conn: Connection, reader: Aggregator, state: RefreshState, state_users: int | None, stored: dict[str, list[int]] | None
) -> tuple[set[str], set[str], int, int, dict[str, list[int]] | None]:
    """Users of the app without a state row or whose account is not the one the state holds, state rows of users the
    app no longer has, the state's row count, the app's, and the app's :func:`presence` to store.

    Only when the presence or the count changed are the ids read: the app's users of a changed bucket are candidates
    (an id reused for a new account among them), and the app's ids are compared with the state's. ``state_users`` is
    the state's count as the last refresh left it (counting the state's rows costs a scan of its table each cycle)."""
    uid = reader.bound.users.c[reader.mapping.users.id]
    total = presence_total(conn, reader)
    if total is not None and stored is not None and total == whole(stored) and total[0] == state_users:
        return set(), set(), total[0], total[0], stored  # a quiet cycle: one aggregate without grouping
    now = presence(conn, reader) if total is not None else None
    if now is None:  # a dialect without a hash function: the count alone
        app_count = conn.execute(select(func.count()).where(uid.is_not(None))).scalar() or 0
    else:
        app_count = sum(n for n, _ in now.values())
    if app_count == state_users and now == stored:
        return set(), set(), app_count, app_count, now
    app_ids = {str(row[0]) for row in conn.execution_options(yield_per=ID_CHUNK).execute(select(uid).where(uid.is_not(None)))}
    known = state.user_ids()
    missing = app_ids - known
    if now is not None and stored is not None:
        changed = changed_buckets(now, stored)
        if changed:
            bucket = bucket_of(conn, reader)
            query = select(uid).where(uid.is_not(None), bucket.in_(changed))
            missing |= {str(row[0]) for row in conn.execution_options(yield_per=ID_CHUNK).execute(query)}
    return missing, known - app_ids, len(known), app_count, now


def input_fingerprints(reader: Aggregator, conn: Connection, *, after: Any, limit: int) -> tuple[list[tuple[str, str]], Any, int]:
    """(user id, fingerprint) for up to ``limit`` users after ``after`` in id order, the last id (None at the
    end), and how many entries they have (what the next slice is sized by)."""
    users = reader.fetch_users(conn, after=after, limit=limit, problems=[])
    if not users:
        return [], None, 0
    lo, hi = users[0][0], users[-1][0]
    a = reader.mapping.activity
    t = reader.bound.activity
    uid = t.c[a.user_id]
    light = select(uid, func.count(), reader.queries.key_sum()).where(reader.queries.owned_by(uid, lo, hi, None)).group_by(uid)
    activity = {row[0]: row for row in conn.execute(light)}
    tasks = {row[0]: row for row in conn.execute(reader.queries.tasks(lo, hi, None))} if reader.bound.tasks is not None else None
    out = []
    for user_id, created_at, last_login, role, auth, admin in users:
        act = activity.get(user_id)
        k = tasks.get(user_id) if tasks is not None else None
        out.append(
            (
                str(user_id),
                fingerprint(
                    (created_at, last_login, role, auth, admin),
                    (act[1], act[2]) if act else (0, None),
                    (k[1], k[2]) if k else None,
                ),
            )
        )
    entries = sum(int(row[1] or 0) for row in activity.values())
    return out, (users[-1][0] if len(users) >= limit else None), entries
