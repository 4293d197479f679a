"""A :class:`~.schema.SchemaMapping` checked against one live database by reflection: a :class:`BoundSchema`.

The required tables and mapped columns must exist (one clear :class:`~.schema.SchemaError` naming the first that
does not); optional tables that are absent leave out the properties that need them; each naive date column gets
the zone the mapping declares for it; change columns the table lacks are not read (``changes.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Column, MetaData, Table, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from .schema import APP_TIMEZONE, UTC, SchemaError, SchemaMapping

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundSchema:
    """A mapping checked against one database: reflected tables, and None for optional parts that are absent."""

    mapping: SchemaMapping
    users: Table
    activity: Table
    roles: tuple[Table, Table] | None  # (association, roles)
    projects: Table | None
    tasks: Table | None
    # (table name, column name) -> the zone of a naive date column; aware columns are absent
    zones: dict[tuple[str, str], tzinfo] = field(default_factory=dict)
    # the change columns that exist, per table name: (key, updated_at)
    change_columns: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def zone(self, column: Column) -> tzinfo | None:
        """The zone naive values of ``column`` are in, or None for a timezone-aware column."""
        if getattr(column.type, "timezone", False):
            return None
        return self.zones.get((column.table.name, column.name), timezone.utc)

    def user_column(self, name: str | None) -> Column | None:
        return self.users.c[name] if name else None

    def activity_column(self, name: str | None) -> Column | None:
        return self.activity.c[name] if name else None


def bind(mapping: SchemaMapping, engine: Engine, *, app_timezone: tzinfo | str | None = None) -> BoundSchema:
    """Reflect the mapped tables; raise :class:`SchemaError` naming the first table or column that is missing.

    ``app_timezone`` is the zone of :data:`APP_TIMEZONE` columns; by default ``OTEL_SEGMENTS_DATABASE_TIMEZONE``.
    """
    try:
        inspector = inspect(engine)
        existing = set(inspector.get_table_names()) | set(inspector.get_view_names())  # a view reads like a table
    except SQLAlchemyError as exc:
        raise SchemaError(f"cannot read the database schema: {type(exc).__name__}: {_first_line(exc)}") from None
    metadata = MetaData()

    def table(name: str, columns: Sequence[str | None], *, optional: bool = False) -> Table | None:
        if name not in existing:
            if optional:
                _logger.info("otel_segments: optional table %r is absent; the properties that need it are left out", name)
                return None
            raise SchemaError(f"schema {mapping.name!r}: table {name!r} does not exist in the database")
        reflected = Table(name, metadata, autoload_with=engine)
        for column in columns:
            if column and column not in reflected.c:
                raise SchemaError(f"schema {mapping.name!r}: column {name}.{column} does not exist in the database")
        return reflected

    u, a = mapping.users, mapping.activity
    users = table(u.table, [u.id, u.created_at, u.last_login, u.role, u.auth_method, u.admin])
    activity = table(a.table, [a.user_id, a.timestamp, a.source, a.duration_seconds, a.project_id])
    assert users is not None and activity is not None  # required tables raise above
    roles = None
    if u.roles is not None:
        r = u.roles
        association = table(r.table, [r.user_id, r.role_id], optional=True)
        names = table(r.roles_table, [r.roles_id, r.roles_name], optional=True)
        if association is not None and names is not None:
            roles = (association, names)
    projects = None
    if mapping.projects is not None and a.project_id:
        p = mapping.projects
        projects = table(p.table, [p.id, p.status], optional=True)
    tasks = None
    if mapping.tasks is not None:
        t = mapping.tasks
        tasks = table(t.table, [t.assignee, t.status], optional=True)
    app_zone = _app_zone(app_timezone)
    zones: dict[tuple[str, str], tzinfo] = {}
    changes: dict[str, tuple[str | None, str | None]] = {}
    for spec, reflected in ((u, users), (a, activity), (mapping.projects, projects), (mapping.tasks, tasks)):
        if spec is None or reflected is None:
            continue
        overrides = dict(spec.column_timezones)
        for column in reflected.c:
            zone = _zone(mapping.name, reflected.name, overrides.get(column.name, spec.timezone), app_zone)
            if zone is not timezone.utc:
                zones[(reflected.name, column.name)] = zone
        changes[reflected.name] = (_key(reflected, spec.key), _present(reflected, getattr(spec, "updated_at", None)))
    return BoundSchema(
        mapping=mapping,
        users=users,
        activity=activity,
        roles=roles,
        projects=projects,
        tasks=tasks,
        zones=zones,
        change_columns=changes,
    )


def _present(table: Table, name: str | None) -> str | None:
    """A change column the table has; one it lacks is not read (changes it would show wait for the sweep)."""
    if name is None:
        return None
    if name not in table.c:
        _logger.info("otel_segments: %s.%s is absent: changes it would show are found by the sweep", table.name, name)
        return None
    return name


def _key(table: Table, name: str | None) -> str | None:
    """A key that grows on insert: a number. A uuid or text key has no such order (and PostgreSQL no ``max()`` of a
    uuid): it is not read, and new rows are found as without a key (the presence digest, the stamps)."""
    name = _present(table, name)
    if name is None:
        return None
    try:
        python_type = table.c[name].type.python_type
    except NotImplementedError:
        python_type = None
    if python_type in (int, Decimal):
        return name
    kind = table.c[name].type.__class__.__name__
    _logger.info("otel_segments: %s.%s is a %s, not a key that grows on insert: not read", table.name, name, kind)
    return None


def _app_zone(given: tzinfo | str | None) -> tzinfo:
    if isinstance(given, tzinfo):
        return given
    if given is None:
        from ..settings.config import database_timezone

        return database_timezone()
    try:
        return timezone.utc if given.strip().upper() == UTC else ZoneInfo(given.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SchemaError(f"unknown time zone {given!r}") from exc


def _zone(mapping: str, table: str, name: str, app_zone: tzinfo) -> tzinfo:
    if name == APP_TIMEZONE:
        return app_zone
    if name.strip().upper() == UTC:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SchemaError(f"schema {mapping!r}: table {table}: unknown time zone {name!r}") from exc


def _first_line(exc: BaseException) -> str:
    """The driver's message without SQL or parameters (they may hold data), for a one-line error."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
