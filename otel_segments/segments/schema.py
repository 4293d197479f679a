"""Which of the app's tables and columns hold users and their activity: declared, never hard-coded.

A :class:`SchemaMapping` names tables and columns; :func:`.binding.bind` checks it
against the live database by reflection and returns a :class:`~.binding.BoundSchema`
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
built-in name (``timetracker``; ``django`` with ``OTEL_SEGMENTS_ACTIVITY_TABLE``
naming the app's activity table) or ``package.module:OBJECT`` naming a
:class:`SchemaMapping`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..settings.django_variables import (
    OTEL_SEGMENTS_ACTIVITY_TABLE,
    OTEL_SEGMENTS_DJANGO_USER_TABLE,
    GroupRoles,
    django_admin_flag,
    django_group_roles,
)

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
    #: None: the roles name no user's role (the users table's ``role`` column does). ``()``: the user's role is
    #: the name of their role with the lowest id; (name, role) pairs: the role of the first listed name they hold.
    role_names: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class UsersTable:
    table: str = "users"
    id: str = "id"
    created_at: str | None = "created_at"
    last_login: str | None = "last_login"
    role: str | None = "role"
    admin_role_values: tuple[str, ...] = ("admin",)  # values of ``role`` that make a user an admin
    auth_method: str | None = "auth_provider"
    admin: str | None = None  # a boolean column that makes a user an admin when true (Django's ``is_superuser``)
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


# TimeTracker writes users and projects with utcnow() and time entries in its configured local zone; tasks it
# stamps timezone-aware, which a naive column keeps as UTC (PostgreSQL converts to the session's zone, UTC, on
# the way in). Entries, tasks and projects have an updated_at that moves on every change, users has none.
TIMETRACKER = SchemaMapping(
    name="timetracker",
    users=UsersTable(key="id"),
    activity=ActivityTable(key="id", updated_at="updated_at", timezone=APP_TIMEZONE),
    projects=ProjectsTable(key="id", updated_at="updated_at"),
    tasks=TasksTable(key="id", updated_at="updated_at"),
)
BUILTIN: dict[str, SchemaMapping] = {"timetracker": TIMETRACKER}


def django(
    activity: str, admin: str = "is_superuser", group_roles: GroupRoles | None = (), users: str = "auth_user"
) -> SchemaMapping:
    """Django's ``django.contrib.auth`` tables, with the app's activity table named as ``table:timestamp[:user_id]``.

    Users are ``auth_user``, or a custom user model's table (``users``, from
    ``OTEL_SEGMENTS_DJANGO_USER_TABLE``: ``<table>[:<groups table>:<user column>]``; its groups default to where
    Django keeps a many-to-many field's rows, ``<table>_groups`` with a ``<model>_id`` column), joined
    ``date_joined``, ``last_login`` (an ``AbstractUser`` subclass has them); an admin is
    whoever has the ``admin`` flag (``is_superuser``, or ``is_staff`` by
    ``OTEL_SEGMENTS_DJANGO_ADMIN``), the flag the spans read too, so both agree.
    The role is named by the user's groups (``auth_user_groups``, ``auth_group``)
    as ``group_roles`` says (``OTEL_SEGMENTS_DJANGO_ROLES``; None: no role), the rule the spans follow too.
    The activity's user column defaults to ``user_id``, Django's column for a
    ``ForeignKey`` named ``user``. No projects or tasks: map those by hand.
    """
    parts = [p.strip() for p in activity.split(":")]
    if len(parts) not in (2, 3) or not all(parts):
        raise SchemaError(
            f"{OTEL_SEGMENTS_ACTIVITY_TABLE}={activity!r}: write <table>:<timestamp column>[:<user id column>], "
            "e.g. shop_order:created_at"
        )
    table, timestamp, user_id = (*parts, "user_id") if len(parts) == 2 else parts
    people = [p.strip() for p in users.split(":")]
    if len(people) not in (1, 3) or not all(people):
        raise SchemaError(
            f"{OTEL_SEGMENTS_DJANGO_USER_TABLE}={users!r}: write <table> or <table>:<groups table>:<user column>, "
            "e.g. accounts_user"
        )
    model = people[0]
    groups, member = people[1:] if len(people) == 3 else (f"{model}_groups", f"{model.rsplit('_', 1)[-1]}_id")
    return SchemaMapping(
        name="django",
        users=UsersTable(
            table=model,
            created_at="date_joined",
            role=None,
            auth_method=None,
            admin=admin,
            roles=None
            if group_roles is None
            else RolesAssociation(
                table=groups,
                user_id=member,
                role_id="group_id",
                roles_table="auth_group",
                admin_names=(),
                role_names=group_roles,
            ),
            key="id",
        ),
        activity=ActivityTable(
            table=table, user_id=user_id, timestamp=timestamp, source=None, duration_seconds=None, project_id=None
        ),
        projects=None,
        tasks=None,
    )


def load_schema(name: str, env: Mapping[str, str] | None = None) -> SchemaMapping:
    """A built-in mapping by name, or ``module:object`` naming a :class:`SchemaMapping`.

    ``django`` reads its activity table from ``OTEL_SEGMENTS_ACTIVITY_TABLE``, a custom user model's table from
    ``OTEL_SEGMENTS_DJANGO_USER_TABLE``, its admin flag from
    ``OTEL_SEGMENTS_DJANGO_ADMIN`` and its group roles from ``OTEL_SEGMENTS_DJANGO_ROLES`` in ``env``
    (default: the process's).
    """
    name = name.strip()
    if name == "django":
        activity = (os.environ if env is None else env).get(OTEL_SEGMENTS_ACTIVITY_TABLE, "").strip()
        if not activity:
            raise SchemaError(f"schema 'django' needs {OTEL_SEGMENTS_ACTIVITY_TABLE}=<table>:<timestamp column>")
        users = (os.environ if env is None else env).get(OTEL_SEGMENTS_DJANGO_USER_TABLE, "").strip() or "auth_user"
        return django(activity, django_admin_flag(env), django_group_roles(env), users)
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, sep, attribute = name.partition(":")
    if not sep or not module_name or not attribute:
        raise SchemaError(f"unknown schema {name!r}: use one of {', '.join(sorted([*BUILTIN, 'django']))} or module:object")
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
