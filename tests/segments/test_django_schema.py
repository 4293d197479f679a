"""The built-in ``django`` mapping on Django's own auth tables, on SQLite and PostgreSQL: one variable names the activity.

The tables are declared as Django's migrations create them (``auth_user`` with a
boolean ``is_superuser``, ``auth_group``, ``auth_user_groups``) plus an app table
of activity. ``is_admin`` must be what the spans say for the same user: the flag
``OTEL_SEGMENTS_DJANGO_ADMIN`` names (``is_superuser`` by default, or
``is_staff``), which the Django integration reads too; a group named ``admin``
makes nobody an admin. The role is what the user's groups name, by the rule the
spans follow (``group_role``): the first group by id, or ``OTEL_SEGMENTS_DJANGO_ROLES``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Uuid, insert, text
from sqlalchemy.engine import Engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import SchemaError, load_schema
from otel_segments.segments.state import RefreshState
from otel_segments.settings.django_variables import (
    OTEL_SEGMENTS_ACTIVITY_TABLE,
    OTEL_SEGMENTS_DJANGO_ADMIN,
    OTEL_SEGMENTS_DJANGO_ROLES,
    OTEL_SEGMENTS_DJANGO_USER_TABLE,
    django_group_roles,
    group_role,
)

from .data import NOW

GROUPS = {1: "admin", 2: "editors", 3: "Admins"}  # "Admins" sorts first by name, comes last by id
MEMBERSHIP = [(4, 1), (3, 3), (3, 2)]


def _django_tables(engine: Engine) -> None:
    md = MetaData()
    users = Table(
        "auth_user",
        md,
        Column("id", Integer, primary_key=True),
        Column("password", String(128), nullable=False),
        Column("last_login", DateTime(timezone=True)),
        Column("is_superuser", Boolean, nullable=False),
        Column("username", String(150), nullable=False, unique=True),
        Column("email", String(254), nullable=False),
        Column("is_staff", Boolean, nullable=False),
        Column("is_active", Boolean, nullable=False),
        Column("date_joined", DateTime(timezone=True), nullable=False),
    )
    groups = Table("auth_group", md, Column("id", Integer, primary_key=True), Column("name", String(150), unique=True))
    membership = Table(
        "auth_user_groups",
        md,
        Column("id", Integer, primary_key=True),
        Column("user_id", ForeignKey("auth_user.id"), nullable=False),
        Column("group_id", ForeignKey("auth_group.id"), nullable=False),
    )
    orders = Table(
        "shop_order",
        md,
        Column("id", Integer, primary_key=True),
        Column("owner_id", ForeignKey("auth_user.id"), nullable=False),
        Column("placed_at", DateTime(timezone=True), nullable=False),
    )
    md.create_all(engine)
    joined = NOW - timedelta(days=90)
    people = [  # id, superuser, staff
        (1, True, True),
        (2, False, True),
        (3, False, False),
        (4, False, False),
    ]
    with engine.begin() as conn:
        for uid, superuser, staff in people:
            conn.execute(
                insert(users).values(
                    id=uid, password="!", last_login=NOW - timedelta(hours=1), is_superuser=superuser,
                    username=f"member-{uid}", email=f"m{uid}@example.com", is_staff=staff, is_active=True, date_joined=joined,
                )
            )  # fmt: skip
        conn.execute(insert(groups).values([{"id": i, "name": n} for i, n in GROUPS.items()]))
        conn.execute(insert(membership).values([{"user_id": u, "group_id": g} for u, g in MEMBERSHIP]))
        placed = [{"owner_id": uid, "placed_at": NOW - timedelta(hours=2 + n)} for uid in (1, 3) for n in range(3)]
        conn.execute(insert(orders).values(placed))


def test_django_mapping_reads_auth_tables_and_one_activity_variable(engine: Engine) -> None:
    _django_tables(engine)
    mapping = load_schema("django", {OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order:placed_at:owner_id"})
    segments = {s.distinct_id: s.set for s in compute_segments(engine, mapping, now=NOW)}
    assert {uid: props.get("is_admin") for uid, props in segments.items()} == {"1": True, "2": False, "3": False, "4": False}
    assert segments["1"]["engagement_level"] != segments["2"]["engagement_level"]  # the orders count as activity
    for props in segments.values():
        assert not any("example.com" in str(v) or "member-" in str(v) for v in props.values()), props


def test_django_mapping_takes_the_admin_flag_the_spans_take(engine: Engine) -> None:
    _django_tables(engine)
    env = {OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order:placed_at:owner_id", OTEL_SEGMENTS_DJANGO_ADMIN: "is_staff"}
    segments = {s.distinct_id: s.set for s in compute_segments(engine, load_schema("django", env), now=NOW)}
    assert {uid: props.get("is_admin") for uid, props in segments.items()} == {"1": True, "2": True, "3": False, "4": False}


def test_an_unknown_admin_flag_is_reported_once_and_means_is_superuser(caplog: pytest.LogCaptureFixture) -> None:
    env = {OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order:placed_at", OTEL_SEGMENTS_DJANGO_ADMIN: "is_boss"}
    assert load_schema("django", env).users.admin == "is_superuser"
    assert load_schema("django", env).users.admin == "is_superuser"
    assert [r.getMessage() for r in caplog.records] == [
        "otel_segments: OTEL_SEGMENTS_DJANGO_ADMIN='is_boss' is not one of is_superuser, is_staff; using is_superuser"
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "needs OTEL_SEGMENTS_ACTIVITY_TABLE"),
        ({OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order"}, "write <table>:<timestamp column>"),
        ({OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order::owner_id"}, "write <table>:<timestamp column>"),
    ],
)
def test_django_mapping_without_a_usable_activity_variable_says_how_to_write_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        load_schema("django", env)


def test_django_mapping_user_column_defaults_to_djangos_user_foreign_key() -> None:
    mapping = load_schema("django", {OTEL_SEGMENTS_ACTIVITY_TABLE: " shop_order : created_at "})
    activity = mapping.activity
    assert (activity.table, activity.timestamp, activity.user_id) == ("shop_order", "created_at", "user_id")
    assert mapping.users.admin == "is_superuser"


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (None, {"1": None, "2": None, "3": "editors", "4": "admin"}),  # unset: the first group by id
        ("Admins=boss, editors=writer", {"1": None, "2": None, "3": "boss", "4": None}),  # the first listed held
        ("none", {"1": None, "2": None, "3": None, "4": None}),
    ],
    ids=["first-group", "chosen", "none"],
)
def test_django_mapping_role_from_groups_is_the_spans_role(engine: Engine, roles: str | None, expected: dict) -> None:
    _django_tables(engine)
    env = {OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order:placed_at:owner_id"}
    if roles is not None:
        env[OTEL_SEGMENTS_DJANGO_ROLES] = roles
    segments = {s.distinct_id: s.set for s in compute_segments(engine, load_schema("django", env), now=NOW)}
    assert {uid: props.get("role") for uid, props in segments.items()} == expected
    rule = django_group_roles(env)  # what the Django integration computes for each user's spans
    spans = {
        str(u): group_role([(g, GROUPS[g]) for m, g in MEMBERSHIP if m == u], rule) if rule is not None else None
        for u in range(1, 5)
    }
    assert spans == expected


def test_an_unreadable_roles_entry_is_reported_once_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    env = {OTEL_SEGMENTS_DJANGO_ROLES: "editors=writer,oops"}
    assert django_group_roles(env) == django_group_roles(env) == (("editors", "writer"),)
    assert [r.getMessage() for r in caplog.records] == [
        "otel_segments: OTEL_SEGMENTS_DJANGO_ROLES entry 'oops' is not <group>=<role>; it is left out"
    ]


def _custom_user_tables(engine: Engine, model: str = "accounts_user", member: str = "user_id") -> list[uuid.UUID]:
    """A custom user model (``AUTH_USER_MODEL = "accounts.User"``, an ``AbstractUser`` with a ``UUIDField`` primary
    key), its groups where Django keeps them, Django's ``auth_group``, and an app table of activity."""
    md = MetaData()
    users = Table(
        model,
        md,
        Column("id", Uuid, primary_key=True),
        Column("password", String(128), nullable=False),
        Column("last_login", DateTime(timezone=True)),
        Column("is_superuser", Boolean, nullable=False),
        Column("email", String(254), nullable=False),
        Column("is_staff", Boolean, nullable=False),
        Column("date_joined", DateTime(timezone=True), nullable=False),
    )
    groups = Table("auth_group", md, Column("id", Integer, primary_key=True), Column("name", String(150), unique=True))
    membership = Table(
        f"{model}_groups",
        md,
        Column("id", Integer, primary_key=True),
        Column(member, ForeignKey(f"{model}.id"), nullable=False),
        Column("group_id", ForeignKey("auth_group.id"), nullable=False),
    )
    orders = Table(
        "shop_order",
        md,
        Column("id", Integer, primary_key=True),
        Column("user_id", ForeignKey(f"{model}.id"), nullable=False),
        Column("placed_at", DateTime(timezone=True), nullable=False),
    )
    md.create_all(engine)
    ids = [uuid.UUID(int=n * 7919) for n in range(1, 5)]
    with engine.begin() as conn:
        for n, uid in enumerate(ids):
            conn.execute(
                insert(users).values(
                    id=uid, password="!", last_login=NOW - timedelta(hours=1), is_superuser=n == 0,
                    email=f"m{n}@example.com", is_staff=n < 2, date_joined=NOW - timedelta(days=90),
                )
            )  # fmt: skip
        conn.execute(insert(groups).values([{"id": i, "name": name} for i, name in GROUPS.items()]))
        conn.execute(insert(membership).values([{member: ids[u - 1], "group_id": g} for u, g in MEMBERSHIP]))
        conn.execute(insert(orders).values([{"user_id": ids[0], "placed_at": NOW - timedelta(hours=2 + n)} for n in range(3)]))
    return ids


def test_a_custom_user_model_with_uuid_ids_is_one_variable_and_its_changes_are_found(engine: Engine) -> None:
    ids = _custom_user_tables(engine)
    env = {OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order:placed_at", OTEL_SEGMENTS_DJANGO_USER_TABLE: "accounts_user"}
    mapping = load_schema("django", env)
    assert (mapping.users.table, mapping.users.roles.table, mapping.users.roles.user_id) == (
        "accounts_user",
        "accounts_user_groups",
        "user_id",
    )
    bound = bind(mapping, engine, app_timezone="UTC")
    state = RefreshState(engine)
    assert refresh(engine, state, bound, now=NOW).full
    with engine.begin() as conn:  # a sign-up: a uuid below every other, no key could find it
        conn.execute(
            text(
                "INSERT INTO accounts_user (id, password, is_superuser, email, is_staff, date_joined) "
                "VALUES (:id, '!', :no, 'new@example.com', :no, :joined)"
            ),
            {"id": uuid.UUID(int=1) if engine.dialect.name == "postgresql" else uuid.UUID(int=1).hex, "no": False, "joined": NOW},
        )
    result = refresh(engine, state, bound, now=NOW + timedelta(seconds=1))
    assert not result.full and not result.problems
    got = {s.distinct_id: s.set for s in state.segments()}
    want = {s.distinct_id: s.set for s in compute_segments(engine, bound, now=NOW + timedelta(seconds=1))}
    assert {u: p.get("role") for u, p in got.items()} == {u: p.get("role") for u, p in want.items()}
    assert len(got) == 5 and {u: p["is_admin"] for u, p in got.items()} == {u: p["is_admin"] for u, p in want.items()}
    roles = {u: p.get("role") for u, p in want.items()}
    assert [roles[str(ids[n])] if str(ids[n]) in roles else roles[ids[n].hex] for n in (2, 3)] == ["editors", "admin"]


def test_a_custom_user_model_names_its_groups_table_and_column_when_they_differ() -> None:
    env = {OTEL_SEGMENTS_ACTIVITY_TABLE: "shop_order:placed_at", OTEL_SEGMENTS_DJANGO_USER_TABLE: "people:people_teams:person_id"}
    roles = load_schema("django", env).users.roles
    assert (roles.table, roles.user_id) == ("people_teams", "person_id")
    for wrong in ("people:people_teams", "people::person_id", ":x:y"):
        with pytest.raises(SchemaError, match="OTEL_SEGMENTS_DJANGO_USER_TABLE"):
            load_schema("django", {**env, OTEL_SEGMENTS_DJANGO_USER_TABLE: wrong})
