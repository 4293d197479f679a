"""Exact mode's reading side: the users the triggers (``triggers.py``) recorded, read and cleared each cycle.

Opt-in with ``OTEL_SEGMENTS_CHANGE_CAPTURE=triggers``. Each refresh (run under the lease) first asks the
catalog (``sqlite_master`` / ``pg_trigger``) whether every trigger and the change table are there and enabled;
if any is missing it logs one WARNING, and the refresh finds its changes with the windows (``changes.py``)
until they are back. Otherwise the candidates are the users the change table names (projects and roles
resolved to their users now), the users whose ``due_at`` passed (the clock), and nothing else: no window, no
sweep, no presence digest. The rows read are deleted by id once the refresh that used them is stored, so a
write committed meanwhile (even with a lower id: PostgreSQL's sequences commit out of order) is kept for
the next cycle, and a refresh that fails leaves them all to be read again.

Changes made while the triggers were missing were captured by nobody: the first refresh after the mode
changed, either way, computes everyone (the meta key :data:`CAPTURE` holds the mode of the last refresh).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, inspect, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .binding import BoundSchema
from .changes import PREFIX, STATE_USERS, Changes, project_users
from .driver_values import from_text
from .queries import ID_CHUNK
from .state import RefreshState
from .triggers import PROJECT, ROLE, USER, change_table, trigger_names

_logger = logging.getLogger(__name__)

#: Meta key: the way the last refresh found its changes (``triggers`` or ``windows``).
CAPTURE = PREFIX + "capture"
TRIGGERS, WINDOWS = "triggers", "windows"
#: Change rows read per cycle at most (the rest wait for the next cycle): bounds the job's memory after a huge import.
READ_LIMIT = 500_000


class ChangeCapture:
    """Reads and clears the change table of one app database; remembers whether it warned, so it warns once."""

    def __init__(self) -> None:
        self.table = change_table()
        self._warned = False

    def missing(self, conn: Connection, bound: BoundSchema) -> list[str]:
        """The triggers (and the change table) exact mode needs that the catalog does not have, or has disabled."""
        wanted = trigger_names(bound)
        if conn.dialect.name == "sqlite":
            query = text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        elif conn.dialect.name == "postgresql":
            query = text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D'")
        else:
            return sorted(wanted)
        present = {row[0] for row in conn.execute(query)}
        out = sorted(name for name in wanted if name not in present)
        if not inspect(conn).has_table(self.table.name):
            out.insert(0, self.table.name)
        return out

    def find(
        self, app_engine: Engine, bound: BoundSchema, state: RefreshState, *, now: Any, limit: int
    ) -> tuple[Changes, list[int]] | None:
        """The candidates the triggers recorded, and the change rows read (to :meth:`clear` once stored); None, with one
        WARNING, when the triggers are not all there: the caller finds the changes with the windows instead."""
        try:
            with app_engine.connect() as conn:
                missing = self.missing(conn, bound)
                if missing:
                    self._warn(missing)
                    return None
                rows = conn.execute(select(*self.table.c).order_by(self.table.c.id).limit(READ_LIMIT)).all()
                users = {ident for _, kind, ident in rows if kind == USER}
                projects = {ident for _, kind, ident in rows if kind == PROJECT}
                if projects:
                    users |= project_users(conn, bound, projects)
                roles = {ident for _, kind, ident in rows if kind == ROLE}
                if roles:
                    users |= _role_users(conn, bound, roles)
        except SQLAlchemyError as error:  # dropped between the check and the read
            self._warn([f"the change table could not be read ({type(error).__name__})"])
            return None
        if self._warned:
            _logger.info("otel_segments: change capture by triggers is back; this refresh computes everyone once")
            self._warned = False
        stored = state.meta_values(PREFIX)
        out = Changes(user_ids=users, complete=stored.get(CAPTURE) == TRIGGERS)
        out.state_users = out.app_users = int(stored.get(STATE_USERS) or 0)
        out.cursors[CAPTURE] = TRIGGERS
        if not out.complete:  # the windows' cursors go stale from here: a later fallback starts afresh, from a full refresh
            state.forget(PREFIX, keep=(STATE_USERS, CAPTURE))
        out.user_ids.update(state.due(now))  # type: ignore[union-attr]
        if len(out.user_ids) > limit:  # type: ignore[arg-type]
            out.user_ids = None
        return out, [row[0] for row in rows]

    def clear(self, app_engine: Engine, row_ids: list[int]) -> None:
        """Delete the change rows a stored refresh used, and only those."""
        with app_engine.begin() as conn:
            for start in range(0, len(row_ids), ID_CHUNK):
                conn.execute(delete(self.table).where(self.table.c.id.in_(row_ids[start : start + ID_CHUNK])))

    def _warn(self, missing: list[str]) -> None:
        if self._warned:
            return
        self._warned = True
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        _logger.warning(
            "otel_segments: OTEL_SEGMENTS_CHANGE_CAPTURE=triggers but %s missing (create them with `otel-segments "
            "triggers --apply`); changes are found by the windows until they are back",
            shown + (" is" if len(missing) == 1 else " are"),
        )


def windows_after_triggers(state: RefreshState) -> bool:
    """Whether the last refresh used the triggers: a refresh by the windows then computes everyone (the windows'
    cursors were not kept while the triggers ran)."""
    return state.meta_values(CAPTURE).get(CAPTURE) == TRIGGERS


def _role_users(conn: Connection, bound: BoundSchema, roles: set[str]) -> set[str]:
    """Users holding any of ``roles`` (a role renamed to or from an admin name changes their admin status)."""
    assert bound.roles is not None and bound.mapping.users.roles is not None
    r = bound.mapping.users.roles
    association = bound.roles[0]
    column = association.c[r.role_id]
    ids = sorted({from_text(column, role) for role in roles}, key=str)
    out: set[str] = set()
    for start in range(0, len(ids), ID_CHUNK):
        query = select(association.c[r.user_id]).distinct().where(column.in_(ids[start : start + ID_CHUNK]))
        out.update(str(row[0]) for row in conn.execute(query))
    return out


def capture_for(mode: str) -> ChangeCapture | None:
    """The capture of ``OTEL_SEGMENTS_CHANGE_CAPTURE``'s ``mode``: exact mode's for ``triggers``, none (windows) else."""
    return ChangeCapture() if mode == TRIGGERS else None
