"""Exact mode's triggers: the DDL that makes the app's database record which users each write touched.

Every mapped table (users, activity, tasks, projects, the roles association and the roles) gets an
``AFTER INSERT``, ``AFTER UPDATE`` and ``AFTER DELETE`` trigger that writes, into a change table of ours
(:func:`change_table`, ``otel_segments_changes``), one row per affected owner: ``kind`` says what the
``ident`` names. Rows reach a user in one of three ways, and each is recorded where the write happens:

- directly (``users.id``, ``time_entries.user_id``, ``tasks.assigned_to``, ``user_roles.user_id``): kind
  ``user``, the owner before *and* after an update, so a row moved to another user makes both candidates;
- through the entries (a project's status counts for every user with entries in it): kind ``project``, the
  project id; the job resolves it to users when it reads, so an update of a busy project costs the app's
  write one row, not one per entry, and an entry moved out of the project since is recorded by its own trigger;
- through the roles association (a role renamed to or from an admin name): kind ``role``, resolved through
  the association when read.

On PostgreSQL the triggers are statement-level with transition tables: a bulk ``UPDATE`` of a million entries
is one ``INSERT ... SELECT DISTINCT`` of the owners it touched. A failure of ours (the change table dropped, a
mapped column renamed, a writer without the right to insert) never fails the app's write: the trigger logs a
WARNING in the server's log and does nothing (the job finds a missing table and falls back to the windows).
SQLite has row triggers only: one small insert per row written (see docs/segments.md for the measured cost).

Every identifier is quoted by the dialect's identifier preparer; the only literals are our own kind names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import DDL, BigInteger, Column, Integer, MetaData, String, Table, Text, text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateTable, DropTable, ExecutableDDLElement

from .binding import BoundSchema
from .schema import SchemaError

PREFIX = "otel_segments_"
CHANGE_TABLE = PREFIX + "changes"
#: What an ``ident`` of the change table names.
USER, PROJECT, ROLE = "user", "project", "role"
OPERATIONS = ("insert", "update", "delete")
_PG_NAME_BYTES = 63  # PostgreSQL cuts longer identifiers: a long table name gets a hashed trigger name


def change_table(metadata: MetaData | None = None) -> Table:
    """``otel_segments_changes``: (id, kind, ident) rows the triggers append and the job reads and deletes."""
    return Table(
        CHANGE_TABLE,
        metadata or MetaData(),
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("kind", String(8), nullable=False),
        Column("ident", Text, nullable=False),
    )


@dataclass(frozen=True)
class Watch:
    """A mapped table and the columns of it that name an owner, each with the kind of owner it names."""

    table: str
    owners: tuple[tuple[str, str], ...]  # (kind, column)


def watches(bound: BoundSchema) -> list[Watch]:
    """The tables exact mode puts triggers on, per the bound mapping (optional tables that are absent: none)."""
    m = bound.mapping
    found: dict[str, list[tuple[str, str]]] = {}

    def watch(table: Table | None, kind: str, column: str) -> None:
        if table is not None:
            found.setdefault(table.name, []).append((kind, column))

    watch(bound.users, USER, m.users.id)
    watch(bound.activity, USER, m.activity.user_id)
    if m.tasks is not None:
        watch(bound.tasks, USER, m.tasks.assignee)
    if m.projects is not None:
        watch(bound.projects, PROJECT, m.projects.id)
    if bound.roles is not None and m.users.roles is not None:
        association, roles = bound.roles
        watch(association, USER, m.users.roles.user_id)
        watch(roles, ROLE, m.users.roles.roles_id)
    return [Watch(table, tuple(dict.fromkeys(owners))) for table, owners in found.items()]


def trigger_name(table: str, operation: str) -> str:
    """``otel_segments_<table>_<operation>``; a hash of the table's name where that would pass 63 bytes."""
    name = f"{PREFIX}{table}_{operation}"
    if len(name.encode()) <= _PG_NAME_BYTES:
        return name
    return f"{PREFIX}{hashlib.sha256(table.encode()).hexdigest()[:16]}_{operation}"


def trigger_names(bound: BoundSchema) -> dict[str, str]:
    """Every trigger exact mode needs, by name, with the table it sits on."""
    return {trigger_name(w.table, op): w.table for w in watches(bound) for op in OPERATIONS}


def create_ddl(conn: Connection, bound: BoundSchema) -> list[ExecutableDDLElement]:
    """The statements that create the change table and (re)create every trigger, in order; idempotent."""
    _only_tables(conn, bound)
    table = change_table()
    out: list[ExecutableDDLElement] = [CreateTable(table, if_not_exists=True)]
    target = _qualified(conn, table.name)
    for watch in watches(bound):
        for operation in OPERATIONS:
            out += _create_trigger(conn, watch, operation, target)
    return out


def drop_ddl(conn: Connection, bound: BoundSchema) -> list[ExecutableDDLElement]:
    """The statements that drop every trigger (first: a trigger must never outlive the table it writes) and the table."""
    q = conn.dialect.identifier_preparer.quote
    out: list[ExecutableDDLElement] = []
    for watch in watches(bound):
        for operation in OPERATIONS:
            name = trigger_name(watch.table, operation)
            if conn.dialect.name == "postgresql":
                out.append(DDL(f"DROP TRIGGER IF EXISTS {q(name)} ON {q(watch.table)}"))
                out.append(DDL(f"DROP FUNCTION IF EXISTS {_qualified(conn, name)}()"))
            else:
                out.append(DDL(f"DROP TRIGGER IF EXISTS {q(name)}"))
    out.append(DropTable(change_table(), if_exists=True))
    return out


def render(conn: Connection, statements: list[ExecutableDDLElement]) -> str:
    """The statements as a script for the app's database (what ``otel-segments triggers`` prints)."""
    return "".join(f"{str(s.compile(dialect=conn.dialect)).strip()};\n\n" for s in statements)


def _create_trigger(conn: Connection, watch: Watch, operation: str, target: str) -> list[ExecutableDDLElement]:
    q = conn.dialect.identifier_preparer.quote
    name = trigger_name(watch.table, operation)
    if conn.dialect.name == "sqlite":
        rows = {"insert": ("NEW",), "update": ("OLD", "NEW"), "delete": ("OLD",)}[operation]
        body = ""
        for kind, column in watch.owners:
            c = q(column)
            for row in rows:
                also = f" AND OLD.{c} IS NOT NEW.{c}" if row == "OLD" and len(rows) == 2 else ""  # moved: both owners
                owner = f"{row}.{c}"
                body += f"INSERT INTO {target} (kind, ident) SELECT '{kind}', CAST({owner} AS TEXT)"
                body += f" WHERE {owner} IS NOT NULL{also};\n"
        return [
            DDL(f"DROP TRIGGER IF EXISTS {q(name)}"),
            DDL(f"CREATE TRIGGER {q(name)} AFTER {operation.upper()} ON {q(watch.table)} FOR EACH ROW BEGIN\n{body}END"),
        ]
    if conn.dialect.name != "postgresql":
        raise SchemaError(f"exact mode needs SQLite or PostgreSQL, not {conn.dialect.name}")
    tables = {
        "insert": ("otel_segments_new",),
        "update": ("otel_segments_old", "otel_segments_new"),
        "delete": ("otel_segments_old",),
    }
    refs = tables[operation]
    referencing = " ".join(f"{'NEW' if r.endswith('new') else 'OLD'} TABLE AS {r}" for r in refs)
    inserts = ""
    for kind, column in watch.owners:
        c = q(column)
        rows = " UNION ".join(f"SELECT {c} AS owner FROM {r}" for r in refs)
        inserts += (
            f"  INSERT INTO {target} (kind, ident) SELECT DISTINCT '{kind}', CAST(owner AS text) FROM ({rows}) AS touched"
            " WHERE owner IS NOT NULL;\n"
        )
    function = _qualified(conn, name)
    # Nothing of ours may fail the app's write (our table dropped, a mapped column renamed, rights missing): the
    # statement goes on, with a WARNING in the server's log; the job finds a missing table and falls back to the windows.
    body = (
        f"BEGIN\n{inserts}  RETURN NULL;\nEXCEPTION WHEN OTHERS THEN\n"
        "  RAISE WARNING USING MESSAGE = 'otel_segments: a change was not recorded: ' || SQLERRM;\n  RETURN NULL;\nEND"
    )
    return [
        DDL(
            f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql"
            f" AS $otel_segments$\n{body}\n$otel_segments$"
        ),
        DDL(f"DROP TRIGGER IF EXISTS {q(name)} ON {q(watch.table)}"),
        DDL(
            f"CREATE TRIGGER {q(name)} AFTER {operation.upper()} ON {q(watch.table)} REFERENCING {referencing}"
            f" FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        ),
    ]


def _qualified(conn: Connection, name: str) -> str:
    """``name`` in the schema the job's connection creates tables in (PostgreSQL): a writer whose ``search_path``
    differs still finds the change table; on SQLite, the name alone."""
    q = conn.dialect.identifier_preparer.quote
    if conn.dialect.name != "postgresql":
        return q(name)
    schema = conn.execute(text("SELECT current_schema()")).scalar()
    return f"{q(schema)}.{q(name)}" if schema else q(name)


def _only_tables(conn: Connection, bound: BoundSchema) -> None:
    """A view takes no ``AFTER`` trigger: exact mode needs the tables themselves (map the table under the view)."""
    from sqlalchemy import inspect

    views = set(inspect(conn).get_view_names())
    for watch in watches(bound):
        if watch.table in views:
            raise SchemaError(
                f"exact mode needs tables: {watch.table} is a view (map the table it reads, or stay with the windows)"
            )
