"""Which of the app's tables and columns hold users and their activity: declared, never hard-coded.

A :class:`SchemaMapping` names tables and columns; :func:`bind` checks it
against the live database by reflection and returns a :class:`BoundSchema`
that the queries use. Users and activity are required: a table or column that
does not exist is one clear :class:`SchemaError` naming it. Projects, tasks and
the roles association are optional tables: when missing, the properties that
need them are left out. A mapped column inside a table that does exist must
exist too (a typo is an error, not a silent gap). Any mapped table may be a view.

Naive date columns are read in the zone the mapping declares for them (``timezone`` of
the table, ``column_timezones`` per column): ``"UTC"``, an IANA name, or
:data:`APP_TIMEZONE`, the app's zone from ``OTEL_SEGMENTS_DATABASE_TIMEZONE``.
Timezone-aware columns keep their own zone.

The change columns (``key``: grows on insert, ``updated_at``: moves on every change)
let the incremental refresh find changed rows with indexed queries; when one is
mapped but absent from the table, it is not read (and what it would find waits for
the sweep or the maximum age, see ``changes.py``).

Another app plugs in by configuration alone: ``OTEL_SEGMENTS_SCHEMA`` is a
built-in name (``timetracker``) or ``package.module:OBJECT`` naming a
:class:`SchemaMapping`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Column, MetaData, Table, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

_logger = logging.getLogger(__name__)


#: A table's or column's ``timezone`` for naive values written in the app's own zone (``OTEL_SEGMENTS_DATABASE_TIMEZONE``).
APP_TIMEZONE = "app"
UTC = "UTC"


class SchemaError(Exception):
    """The mapping does not match the database, or cannot be loaded. The message names what is wrong."""


@dataclass(frozen=True)
class RolesAssociation:
    """A many-to-many from users to named roles; holding one of ``admin_names`` makes a user an admin."""

    table: str = "user_roles"
    user_id: str = "user_id"
    role_id: str = "role_id"
    roles_table: str = "roles"
    roles_id: str = "id"
    roles_name: str = "name"
    admin_names: tuple[str, ...] = ("admin", "super_admin")


@dataclass(frozen=True)
class UsersTable:
    table: str = "users"
    id: str = "id"
    created_at: str | None = "created_at"
    last_login: str | None = "last_login"
    role: str | None = "role"
    admin_role_values: tuple[str, ...] = ("admin",)  # values of ``role`` that make a user an admin
    auth_method: str | None = "auth_provider"
    roles: RolesAssociation | None = RolesAssociation()
    key: str | None = None  # grows on insert (an auto-increment id): finds new users at once
    timezone: str = UTC  # of the naive date columns; ``column_timezones`` overrides per column
    column_timezones: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ActivityTable:
    """Tracked activity, one row per entry. ``timestamp`` decides the 24 h / 7 d / 30 d windows.

    ``source`` with ``timer_values`` / ``manual_values`` splits timer from
    manual entries; values in neither set count in neither. ``key`` (grows on
    insert) and ``updated_at`` (moves on every edit), when mapped, let the
    incremental refresh find new and edited entries.
    """

    table: str = "time_entries"
    user_id: str = "user_id"
    timestamp: str = "created_at"
    source: str | None = "source"
    timer_values: tuple[str, ...] = ("timer", "auto")
    manual_values: tuple[str, ...] = ("manual",)
    duration_seconds: str | None = "duration_seconds"
    project_id: str | None = "project_id"
    updated_at: str | None = None
    key: str | None = None
    timezone: str = UTC
    column_timezones: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ProjectsTable:
    table: str = "projects"
    id: str = "id"
    status: str = "status"
    active_values: tuple[str, ...] = ("active",)
    updated_at: str | None = None
    key: str | None = None
    timezone: str = UTC
    column_timezones: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TasksTable:
    """Assigned tasks are open ones (status in neither ``done_values`` nor ``closed_values``)."""

    table: str = "tasks"
    assignee: str = "assigned_to"
    status: str = "status"
    done_values: tuple[str, ...] = ("done",)
    closed_values: tuple[str, ...] = ("cancelled",)
    updated_at: str | None = None
    key: str | None = None
    timezone: str = UTC
    column_timezones: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SchemaMapping:
    name: str
    users: UsersTable = UsersTable()
    activity: ActivityTable = ActivityTable()
    projects: ProjectsTable | None = ProjectsTable()
    tasks: TasksTable | None = TasksTable()


# TimeTracker writes users and projects with utcnow(), time entries and tasks in its configured local zone;
# entries, tasks and projects have an updated_at that moves on every change, users has none.
TIMETRACKER = SchemaMapping(
    name="timetracker",
    users=UsersTable(key="id"),
    activity=ActivityTable(key="id", updated_at="updated_at", timezone=APP_TIMEZONE),
    projects=ProjectsTable(key="id", updated_at="updated_at"),
    tasks=TasksTable(key="id", updated_at="updated_at", timezone=APP_TIMEZONE),
)
BUILTIN: dict[str, SchemaMapping] = {"timetracker": TIMETRACKER}


def load_schema(name: str) -> SchemaMapping:
    """A built-in mapping by name, or ``module:object`` naming a :class:`SchemaMapping`."""
    name = name.strip()
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise SchemaError(f"unknown schema {name!r}: use one of {', '.join(sorted(BUILTIN))} or module:object")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SchemaError(f"schema {name!r}: cannot import module {module_name!r} ({exc})") from None
    obj: object = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise SchemaError(f"schema {name!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, SchemaMapping):
        obj = obj()
    if not isinstance(obj, SchemaMapping):
        raise SchemaError(f"schema {name!r} is a {type(obj).__name__}, not a SchemaMapping")
    return obj


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
    users = table(u.table, [u.id, u.created_at, u.last_login, u.role, u.auth_method])
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
        changes[reflected.name] = tuple(_present(reflected, name) for name in (spec.key, getattr(spec, "updated_at", None)))  # type: ignore[assignment]
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


def _app_zone(given: tzinfo | str | None) -> tzinfo:
    if isinstance(given, tzinfo):
        return given
    if given is None:
        from ..config import database_timezone

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
